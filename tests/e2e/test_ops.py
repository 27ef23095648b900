"""Operating conventions (docs/OPERATIONS.md): --check-config refuses malformed broker
addresses and warns about an --ack-timeout at or above Alma's 5 s; --check-connect reaches
the sink's server for real (exit 0 / 1 unreachable / 2 configuration error); one duration
syntax; --admin-listen serves the probes and metrics on a port of their own (404 on the
public one); successful probes stay out of the access log unless at debug level; --help,
the man page and `make install`."""
import http.client
import os
import signal
import subprocess
import time

from daemon import BIN, BUILD, ROOT, free_port, samples, wait_until
from services import AlmaApiStub, RedisServer


def run(*args, env=None, timeout=30):
    e = {k: v for k, v in os.environ.items() if not k.startswith("ALMABRIDGE_")}
    e.update(env or {})
    return subprocess.run([BIN, *args], env=e, capture_output=True, text=True, timeout=timeout)


def get(port, path, method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


INSECURE = ["--insecure-skip-signature"]


# ---- --check-config, --check-connect ------------------------------------------------------

def test_check_config_refuses_malformed_broker_addresses(tmp_path):
    for brokers in ("nohost:notaport", ":9092", "k1", "k1:0", "k1:70000", "k1:9092,"):
        r = run("--check-config", "--sink", "kafka", "--kafka-brokers", brokers, *INSECURE)
        assert r.returncode == 2, (brokers, r)
        assert "--kafka-brokers" in r.stderr and "HOST:PORT" in r.stderr, r.stderr
        assert "configuration OK" not in r.stdout
    ok = run("--check-config", "--sink", "kafka", "--kafka-brokers", "k1:9092,[::1]:9093",
             *INSECURE)
    assert ok.returncode == 0 and "configuration OK" in ok.stdout, ok


def test_ack_timeout_at_alma_timeout_warns_at_check_and_start(daemon_factory, tmp_path):
    r = run("--check-config", "--ack-timeout", "9000", "--file", str(tmp_path / "e"), *INSECURE)
    assert r.returncode == 0 and "configuration OK" in r.stdout
    assert "--ack-timeout 9000 ms is not below Alma's own 5000 ms" in r.stderr, r.stderr
    quiet = run("--check-config", "--ack-timeout", "4s", "--file", str(tmp_path / "e"),
                *INSECURE)
    assert quiet.returncode == 0 and "--ack-timeout" not in quiet.stderr
    d = daemon_factory(["--ack-timeout", "5s"])
    assert "--ack-timeout 5000 ms is not below Alma's own 5000 ms" in d.stderr()


def test_check_connect_file_sink_and_config_error(tmp_path):
    r = run("--check-connect", "--file", str(tmp_path / "e.jsonl"), *INSECURE)
    assert r.returncode == 0, r
    assert r.stdout.splitlines()[0] == "configuration OK"
    assert r.stdout.splitlines()[-1] == "everything reachable"
    bad = run("--check-connect", "--sink", "redis", "--redis", "http://x", *INSECURE)
    assert bad.returncode == 2 and "--redis" in bad.stderr


def test_check_connect_redis_reached_refused_and_unreachable(tmp_path):
    with RedisServer(password="s3cret-pw") as redis:
        ok = run("--check-connect", "--sink", "redis", "--redis", redis.url, *INSECURE)
        assert ok.returncode == 0, ok
        assert f"redis 127.0.0.1:{redis.port} db 0: reached, PING answered" in ok.stdout
        wrong = f"redis://:wrong-pw@127.0.0.1:{redis.port}"
        refused = run("--check-connect", "--sink", "redis", "--redis", wrong, *INSECURE)
        assert refused.returncode == 1, refused
        assert "reached, but AUTH was refused" in refused.stdout
        assert "wrong-pw" not in refused.stdout + refused.stderr
        assert "s3cret-pw" not in ok.stdout + ok.stderr
        # the spool in front changes nothing: the broker behind it is what is probed
        spooled = run("--check-connect", "--sink", "redis", "--redis", redis.url, "--spool",
                      str(tmp_path / "spool"), *INSECURE)
        assert spooled.returncode == 0 and "PING answered" in spooled.stdout, spooled
    port = free_port()
    t0 = time.monotonic()
    down = run("--check-connect", "--sink", "redis", "--redis", f"redis://127.0.0.1:{port}",
               *INSECURE)
    assert down.returncode == 1 and "NOT reached" in down.stdout, down
    assert down.stdout.splitlines()[-1] == "NOT everything reachable"
    assert time.monotonic() - t0 < 15


def test_check_connect_kafka_unreachable_is_bounded():
    port = free_port()
    t0 = time.monotonic()
    r = run("--check-connect", "--sink", "kafka", "--kafka-brokers", f"127.0.0.1:{port}",
            *INSECURE)
    assert r.returncode == 1, r
    assert f"kafka brokers 127.0.0.1:{port}: NOT reached within 5000 ms" in r.stdout
    assert time.monotonic() - t0 < 15


def test_check_connect_asks_the_alma_api_when_configured(tmp_path):
    """With --alma-api (reconcile, wait --fallback-after), the API is asked once too: the
    gateway, TLS and the key; the key never appears in the output."""
    key = "k3y-check-connect-0123456789"
    (tmp_path / "alma.key").write_text(key + "\n")
    base = ["--check-connect", "--file", str(tmp_path / "e.jsonl"), *INSECURE,
            "--alma-api-key-file", str(tmp_path / "alma.key"), "--state-dir", str(tmp_path)]
    stub = AlmaApiStub(key=key).start()
    try:
        ok = run(*base, "--alma-api", stub.url)
        assert ok.returncode == 0, ok
        assert f"alma api {stub.url}: reached, key accepted" in ok.stdout
        assert ok.stdout.splitlines()[-1] == "everything reachable"
        (tmp_path / "alma.key").write_text("wrong-" + key + "\n")
        refused = run(*base, "--alma-api", stub.url)
        assert refused.returncode == 1, refused
        assert "the API key was refused" in refused.stdout
        assert key not in refused.stdout + refused.stderr + ok.stdout + ok.stderr
    finally:
        stub.close()
    t0 = time.monotonic()
    down = run(*base, "--alma-api", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "NOT reached" in down.stdout, down
    assert time.monotonic() - t0 < 30


# ---- durations --------------------------------------------------------------------------

def test_one_duration_syntax(tmp_path):
    r = run("--print-config", "--read-timeout", "10s", "--idle-timeout", "2m",
            "--ack-timeout", "1.5s", "--drain-grace", "3", "--spool-after", "500ms",
            env={"ALMABRIDGE_SHUTDOWN_TIMEOUT": "20s"})
    assert r.returncode == 0, r
    for line in ("read-timeout = 10s", "idle-timeout = 120s", "ack-timeout = 1500ms",
                 "drain-grace = 3s", "spool-after = 500ms", "shutdown-timeout = 20s"):
        assert line in r.stdout.splitlines(), (line, r.stdout)
    bad = run("--read-timeout", "10 seconds")
    assert bad.returncode == 2 and "is not a duration" in bad.stderr
    frac = run("--drain-grace", "1500ms")
    assert frac.returncode == 2 and "not a whole number of seconds" in frac.stderr
    conf = tmp_path / "d.conf"
    conf.write_text("read-timeout = 30s\nack-timeout = 3000\n")
    f = run("--config", str(conf), "--print-config")
    assert "read-timeout = 30s" in f.stdout and "ack-timeout = 3000ms" in f.stdout


# ---- --admin-listen ---------------------------------------------------------------------

def start_with_admin(daemon_factory, *args, **kw):
    admin = free_port()
    d = daemon_factory(["--admin-listen", f"127.0.0.1:{admin}", *args], start=False, **kw)
    d.start(wait=False)

    def ready():
        assert d.proc.poll() is None, d.stderr()
        try:
            return get(admin, "/readyz")[0] == 200
        except OSError:
            return False
    wait_until(ready, timeout=20, what="admin /readyz 200")
    return d, admin


def test_admin_listener_serves_probes_and_metrics_public_port_does_not(daemon_factory):
    d, admin = start_with_admin(daemon_factory, drain_grace=3)
    for path in ("/healthz", "/readyz", "/metrics"):
        status, body = get(d.port, path)
        assert status == 404 and "--admin-listen" in body, (path, status, body)
    assert get(admin, "/healthz") == (200, '{"status":"ok"}')
    status, body = get(admin, "/readyz")
    assert status == 200 and '"sink_ready_workers":"2/2"' in body
    assert get(admin, "/webhook")[0] == 404  # webhooks only on the public port
    assert get(admin, "/readyz", method="POST")[0] == 405
    body = samples()[0][1]
    assert d.post(body).status == 200
    wait_until(lambda: 'almabridge_requests_total{status="200"' in get(admin, "/metrics")[1],
               what="the webhook counted on the admin port's /metrics")
    metrics = get(admin, "/metrics")[1]
    assert 'status="404"' in metrics  # the refused public probes were counted
    # --probe follows --admin-listen
    p = run("--listen", f"127.0.0.1:{d.port}", "--admin-listen", f"127.0.0.1:{admin}",
            "--probe")
    assert p.returncode == 0 and p.stdout.strip() == f"http://127.0.0.1:{admin}/readyz: 200"
    # draining: the admin /readyz turns 503 while the public port still serves webhooks
    d.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: get(admin, "/readyz")[0] == 503, what="admin /readyz 503 when draining")
    assert d.post(body).status == 200
    d.proc.wait(30)
    assert d.proc.returncode == 0


def test_admin_listen_busy_port_is_a_start_error(daemon_factory, tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        r = run("--admin-listen", f"127.0.0.1:{s.getsockname()[1]}", "--listen",
                f"127.0.0.1:{free_port()}", "--file", str(tmp_path / "e"), *INSECURE)
        assert r.returncode == 2 and "cannot listen on --admin-listen" in r.stderr, r


# ---- quiet probes -------------------------------------------------------------------------

def access_lines(d, path):
    return [l for l in d.stderr().splitlines() if " access " in l and f"path={path} " in l]


def test_successful_probes_stay_out_of_the_access_log(daemon_factory):
    d = daemon_factory(drain_grace=3)
    for _ in range(5):
        assert d.get("/readyz").status == 200 and d.get("/healthz").status == 200
    assert d.post(samples()[0][1]).status == 200
    wait_until(lambda: access_lines(d, "/webhook"), what="the webhook's access line")
    assert access_lines(d, "/readyz") == [] and access_lines(d, "/healthz") == []
    d.proc.send_signal(signal.SIGTERM)  # draining: a failing probe is always logged
    wait_until(lambda: d.get("/readyz").status == 503, what="readyz 503")
    wait_until(lambda: any("status=503" in l for l in access_lines(d, "/readyz")),
               what="the failing probe's access line")
    d.proc.wait(30)


def test_debug_level_logs_successful_probes_on_both_ports(daemon_factory, tmp_path):
    d = daemon_factory(["--log-level", "debug"])
    assert d.get("/readyz").status == 200
    wait_until(lambda: any("status=200" in l for l in access_lines(d, "/readyz")),
               what="a probe's access line at debug level")
    (tmp_path / "a").mkdir()
    (tmp_path / "q").mkdir()
    a, admin = start_with_admin(daemon_factory, "--log-level", "debug", tmpdir=str(tmp_path / "a"))
    assert get(admin, "/healthz")[0] == 200
    wait_until(lambda: access_lines(a, "/healthz"), what="the admin probe's line at debug")
    q, qadmin = start_with_admin(daemon_factory, tmpdir=str(tmp_path / "q"))
    for _ in range(3):
        assert get(qadmin, "/healthz")[0] == 200 and get(qadmin, "/readyz")[0] == 200
    assert get(qadmin, "/nope")[0] == 404
    wait_until(lambda: access_lines(q, "/nope"), what="the admin 404's access line")
    # successful probes are not logged at the default level (a 503 while it started may be)
    assert [l for l in access_lines(q, "/healthz") + access_lines(q, "/readyz")
            if "status=200" in l] == []


# ---- --help, man page, make install -------------------------------------------------------

def test_help_lists_subcommands_probe_and_durations():
    out = run("--help").stdout
    for word in ("--probe [URL]", "--admin-listen HOST:PORT", "--check-connect", "wait ",
                 "send ", "challenge ", "replay ", "spool ", "500ms, 10s"):
        assert word in out, word


def test_make_install_puts_binary_and_man_page(tmp_path):
    dest = tmp_path / "root"
    r = subprocess.run(["make", "-s", "install", f"DESTDIR={dest}", "PREFIX=/usr",
                        f"BUILD={os.path.relpath(BUILD, ROOT)}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    binary, man = dest / "usr/bin/almabridge", dest / "usr/share/man/man1/almabridge.1"
    assert os.access(binary, os.X_OK)
    page = man.read_text()
    assert page.startswith(".TH ALMABRIDGE 1 ")
    for section in (".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SS Kafka", ".SH SUBCOMMANDS",
                    ".SH EXIT STATUS"):
        assert section in page, section
    assert "\\-\\-admin\\-listen" in page and "ALMABRIDGE_KAFKA_BROKERS" in page
    ver = subprocess.run([binary, "--version"], capture_output=True, text=True)
    assert ver.returncode == 0 and ver.stdout.startswith("almabridge ")
