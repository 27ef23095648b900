"""almabridge --probe: the image's HEALTHCHECK (no curl in the image). It asks /readyz of
the address the daemon's own configuration names, exits 0 only for a 2xx answer, and never
hangs (a silent server or a closed port is exit 1 within a few seconds)."""
import os
import signal
import socket
import subprocess
import time

from daemon import BIN, free_port


def probe(*args, env=None, timeout=15):
    e = {k: v for k, v in os.environ.items() if not k.startswith("ALMABRIDGE_")}
    e.update(env or {})
    return subprocess.run([BIN, *args], env=e, capture_output=True, text=True, timeout=timeout)


def test_probe_follows_listen_from_argv_env_and_config_file(daemon, tmp_path):
    listen = f"127.0.0.1:{daemon.port}"
    by_argv = probe("--listen", listen, "--probe")
    assert by_argv.returncode == 0, by_argv.stderr
    assert by_argv.stdout.strip() == f"http://{listen}/readyz: 200"
    assert probe("--probe", env={"ALMABRIDGE_LISTEN": f"0.0.0.0:{daemon.port}"}).returncode == 0
    conf = tmp_path / "probe.conf"
    conf.write_text(f"listen = {listen}\nsink = file\n")
    assert probe("--config", str(conf), "--probe").returncode == 0
    assert probe("--probe", f"http://{listen}/healthz").returncode == 0
    assert probe(f"--probe=http://{listen}").returncode == 0


def test_probe_fails_on_not_ready_closed_or_silent(daemon_factory):
    d = daemon_factory(drain_grace=3)
    url = f"http://127.0.0.1:{d.port}/readyz"
    assert probe("--probe", url).returncode == 0
    d.proc.send_signal(signal.SIGTERM)  # draining: /readyz is 503 while still serving
    draining = probe("--probe", url)
    assert draining.returncode == 1 and draining.stdout.strip().endswith(": 503"), draining
    d.proc.wait(30)
    closed = probe("--probe", url)
    assert closed.returncode == 1 and "cannot connect" in closed.stderr
    assert probe("--probe", f"http://127.0.0.1:{d.port}/nope").returncode == 1
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        t0 = time.monotonic()
        hung = probe("--probe", f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert hung.returncode == 1 and time.monotonic() - t0 < 10
    bad = probe("--probe", "ftp://127.0.0.1/")
    assert bad.returncode == 1 and "not an http" in bad.stderr


def test_probe_speaks_tls_when_the_daemon_does(daemon_factory, tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
                    "-days", "2", "-subj", "/CN=probe"], cwd=tmp_path, check=True,
                   capture_output=True)
    tls = ["--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")]
    d = daemon_factory(tls, start=False)
    d.scheme = "https"
    d.start(wait=False)
    listen = f"127.0.0.1:{d.port}"
    deadline = time.monotonic() + 15
    while (r := probe("--listen", listen, *tls, "--probe")).returncode != 0:
        assert time.monotonic() < deadline, r
        time.sleep(0.1)
    assert r.stdout.strip() == f"https://{listen}/readyz: 200"
    assert probe("--probe", f"http://{listen}").returncode == 1  # plain HTTP to a TLS port
