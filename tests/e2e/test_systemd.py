"""deploy/systemd/almabridge.service: `systemd-analyze verify` finds nothing to say about
it, `systemd-analyze security` rates its hardening, and the daemon speaks the Type=notify
protocol (READY=1 once listening, RELOADING=1/READY=1 around a SIGHUP, STOPPING=1 when a
SIGTERM starts the drain) to a datagram socket standing in for systemd."""
import os
import re
import signal
import socket
import subprocess

from daemon import BIN, ROOT

UNIT = os.path.join(ROOT, "deploy", "systemd", "almabridge.service")


def unit_copy(tmp_path):
    """The unit with ExecStart naming the binary just built (verify checks that it exists)."""
    text = open(UNIT).read()
    assert "ExecStart=/usr/local/bin/almabridge " in text
    path = tmp_path / "almabridge.service"
    path.write_text(text.replace("/usr/local/bin/almabridge", BIN))
    return path


def test_unit_verifies_cleanly(tmp_path):
    unit = unit_copy(tmp_path)
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       cwd=tmp_path)
    # verify exits 0 on unknown keys and bad values too; they are printed: nothing may be
    out = [l for l in (p.stdout + p.stderr).splitlines() if "almabridge.service" in l]
    assert p.returncode == 0 and not out, p.stdout + p.stderr


def test_unit_is_hardened(tmp_path):
    unit = unit_copy(tmp_path)
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, cwd=tmp_path)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", p.stdout)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= 2.0, p.stdout  # 10 = unprotected; 1.4 when written
    text = open(UNIT).read()
    for setting in ("Type=notify", "DynamicUser=yes", "ProtectSystem=strict",
                    "NoNewPrivileges=yes", "StateDirectory=almabridge",
                    "ExecReload=/bin/sh -c 'kill -HUP \"$MAINPID\"'"):
        assert setting in text.splitlines(), setting
    # nothing outside the essential set (procps' /bin/kill is not on minimal systems)
    for line in text.splitlines():
        if line.startswith(("ExecReload=", "ExecStop=", "ExecStartPre=")):
            assert line.split("=", 1)[1].split()[0] in ("/bin/sh", "/usr/local/bin/almabridge"), line


def test_notify_protocol(daemon_factory, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(20)
        d = daemon_factory(env={"NOTIFY_SOCKET": path}, drain_grace=1)
        assert s.recv(256) == b"READY=1"
        d.proc.send_signal(signal.SIGHUP)
        assert s.recv(256) == b"RELOADING=1"
        assert s.recv(256) == b"READY=1"
        d.proc.send_signal(signal.SIGTERM)
        assert s.recv(256) == b"STOPPING=1"
        assert d.proc.wait(30) == 0


def test_notify_abstract_socket_and_none(daemon_factory, tmp_path):
    name = "almabridge-test-%d" % os.getpid()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(20)
        daemon_factory(env={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(256) == b"READY=1"
    # without NOTIFY_SOCKET (the usual case) nothing changes
    plain = daemon_factory(file_path=str(tmp_path / "plain.jsonl"))
    assert plain.get("/healthz").status == 200
