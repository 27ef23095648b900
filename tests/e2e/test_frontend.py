"""The production front end: TLS with hot reload, limits, allowlist, logs, drain, config."""
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

from daemon import BIN, Daemon, Posters, samples, sign, wait_until, with_id

LOAN = dict(samples())["loan_created"]


# ---- TLS ---------------------------------------------------------------------------------

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    """A CA of our own and two server certificates for 127.0.0.1 signed by it."""
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=almabridge test CA",
            cwd=d)
    for name in ("one", "two"):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=server-{name}", cwd=d)
        (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "ext", cwd=d)
    return d


def tls_daemon(daemon_factory, pki, tmp_path, extra=()):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes((pki / "one.pem").read_bytes())
    key.write_bytes((pki / "one.key").read_bytes())
    d = daemon_factory(["--tls-cert", str(cert), "--tls-key", str(key), *extra], start=False)
    d.scheme = "https"
    d.cafile = str(pki / "ca.pem")
    return d.start(), cert, key


def peer_cn(port, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            subj = dict(x[0] for x in t.getpeercert()["subject"])
            return subj["commonName"], t.version()


def test_https_works_and_verifies(daemon_factory, pki, tmp_path):
    d, _, _ = tls_daemon(daemon_factory, pki, tmp_path)
    assert d.post(LOAN).status == 200
    assert d.get("/webhook?challenge=x").json() == {"challenge": "x"}
    cn, version = peer_cn(d.port, d.cafile)
    assert cn == "server-one" and version in ("TLSv1.2", "TLSv1.3")
    # TLS 1.2 is offered too
    ctx = ssl.create_default_context(cafile=d.cafile)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", d.port)), server_hostname="127.0.0.1") as t:
        assert t.version() == "TLSv1.2"


def test_tls11_and_plain_http_refused(daemon_factory, pki, tmp_path):
    d, _, _ = tls_daemon(daemon_factory, pki, tmp_path)
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{d.port}", "-tls1_1",
                        "-cipher", "DEFAULT@SECLEVEL=0"], input=b"", capture_output=True, timeout=10)
    assert p.returncode != 0
    assert b"Cipher is (NONE)" in p.stdout or b"alert" in p.stderr.lower() or b"error" in p.stderr.lower()
    with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = s.recv(100)
        except OSError:
            data = b""
    assert not data.startswith(b"HTTP/")
    time.sleep(0.2)
    m = d.get("/metrics").body.decode()
    failures = [l for l in m.splitlines() if l.startswith("almabridge_tls_handshake_failures_total ")]
    assert failures and int(failures[0].split()[1]) >= 2


def test_sighup_reloads_certificate_keeping_connections(daemon_factory, pki, tmp_path):
    d, cert, key = tls_daemon(daemon_factory, pki, tmp_path)
    old = d.conn()
    assert d.request("GET", "/healthz", conn=old).status == 200
    assert peer_cn(d.port, d.cafile)[0] == "server-one"
    cert.write_bytes((pki / "two.pem").read_bytes())
    key.write_bytes((pki / "two.key").read_bytes())
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while time.time() < deadline and peer_cn(d.port, d.cafile)[0] != "server-two":
        time.sleep(0.05)
    assert peer_cn(d.port, d.cafile)[0] == "server-two"
    # the connection opened before the reload still works
    assert d.request("GET", "/healthz", conn=old).status == 200
    old.close()
    assert "almabridge_reloads_total 1" in d.get("/metrics").body.decode()
    # a broken certificate keeps the current one
    cert.write_text("garbage")
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert peer_cn(d.port, d.cafile)[0] == "server-two"
    assert "reload failed" in d.stderr()


def test_sighup_reloads_secret_file(daemon_factory, tmp_path):
    sf = tmp_path / "secrets"
    sf.write_text("first\n")
    d = daemon_factory(["--secret-file", str(sf)], secret=None)
    assert d.post(LOAN, signature=sign(LOAN, "first")).status == 200
    sf.write_text("second\n")
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert d.post(LOAN, signature=sign(LOAN, "first")).status == 401
    assert d.post(LOAN, signature=sign(LOAN, "second")).status == 200


# ---- allowlist and proxies ------------------------------------------------------------------

def test_allowlist(daemon_factory):
    d = daemon_factory(["--allow", "10.0.0.0/8"])
    r = d.post(LOAN)
    assert r.status == 403 and "127.0.0.1" in r.json()["error"]
    assert d.get("/healthz").status == 200 and d.get("/metrics").status == 200
    # X-Forwarded-For is ignored from an untrusted peer
    assert d.post(LOAN, headers={"X-Forwarded-For": "10.1.2.3"}).status == 403


def test_allowlist_behind_trusted_proxy(daemon_factory):
    d = daemon_factory(["--allow", "10.0.0.0/8", "--allow", "2001:db8::/32",
                        "--trusted-proxy", "127.0.0.1/32", "--trusted-proxy", "192.168.0.0/16"])
    assert d.post(LOAN, headers={"X-Forwarded-For": "10.1.2.3"}).status == 200
    # right-most untrusted entry counts: a spoofed left entry does not help
    assert d.post(LOAN, headers={"X-Forwarded-For": "10.9.9.9, 8.8.8.8"}).status == 403
    assert d.post(LOAN, headers={"X-Forwarded-For": "8.8.8.8, 10.1.1.1, 192.168.1.1"}).status == 200
    assert d.post(LOAN, headers={"X-Forwarded-For": "2001:db8::1"}).status == 200


# ---- limits ----------------------------------------------------------------------------------

def test_slowloris_does_not_block_normal_requests(daemon_factory):
    d = daemon_factory(["--read-timeout", "30", "--idle-timeout", "60"], threads=2)
    idle = []
    for i in range(1000):
        s = socket.create_connection(("127.0.0.1", d.port))
        if i % 2:
            s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Len")  # half a header
        idle.append(s)
    t0 = time.time()
    r = d.post(LOAN, timeout=5)
    elapsed = time.time() - t0
    assert r.status == 200 and elapsed < 2.0, elapsed
    m = d.metrics()
    conns = int([l for l in m.splitlines() if l.startswith("almabridge_connections ")][0].split()[1])
    assert conns >= 1000
    for s in idle:
        s.close()


def test_read_timeout_closes_idle_connections(daemon_factory):
    d = daemon_factory(["--read-timeout", "1"])
    s = socket.create_connection(("127.0.0.1", d.port))
    s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
    s.settimeout(5)
    t0 = time.time()
    data = s.recv(1000)
    assert time.time() - t0 < 4
    assert data == b"" or b"408" not in data.split(b"\r\n")[0]  # never a 4xx Alma would drop on
    s.close()


def test_max_connections(daemon_factory):
    d = daemon_factory(["--max-connections", "20"], threads=1)
    held = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(40)]
    time.sleep(0.3)
    m = d.metrics  # uses a new connection: it waits in the backlog until room frees
    conns = None
    for s in held[:30]:
        s.close()
    time.sleep(0.3)
    text = m()
    conns = int([l for l in text.splitlines() if l.startswith("almabridge_connections ")][0].split()[1])
    assert conns <= 21
    for s in held[30:]:
        s.close()
    assert d.post(LOAN).status == 200


def worker_connections(text):
    """{worker index: open connections} from /metrics."""
    out = {}
    for line in text.splitlines():
        if line.startswith("almabridge_worker_connections{"):
            out[int(line.split('"')[1])] = int(line.split()[1])
    return out


def test_connections_spread_over_workers(daemon_factory):
    """Connections that arrive together are shared by the workers: they wait in the backlog
    while the daemon is stopped, then every worker wakes for them. libevent's listener
    accepted all of them on the first worker to run (the others stayed idle under load)."""
    d = daemon_factory(threads=2)
    d.proc.send_signal(signal.SIGSTOP)
    try:
        held = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(24)]
    finally:
        d.proc.send_signal(signal.SIGCONT)
    try:
        wait_until(lambda: sum(worker_connections(d.metrics()).values()) >= 25, timeout=10,
                   what="all connections accepted")
        per = worker_connections(d.metrics())  # the metrics request holds one more
        assert sorted(per) == [0, 1]
        assert min(per.values()) >= 6, per
        req = (b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"X-Exl-Signature: " + sign(LOAN).encode() + b"\r\nContent-Length: " +
               str(len(LOAN)).encode() + b"\r\n\r\n" + LOAN)
        for s in held:  # every one of them is served
            s.settimeout(10)
            s.sendall(req)
        for s in held:
            assert s.recv(64).startswith(b"HTTP/1.1 200 ")
    finally:
        for s in held:
            s.close()


def test_max_inflight_503_at_once(daemon_factory, tmp_path):
    d = daemon_factory(["--max-inflight", "3"], preload_shim=True)
    (tmp_path / "gate").write_text("")
    posters = Posters(d, LOAN, [str(500 + i) for i in range(3)])
    time.sleep(0.4)
    t0 = time.time()
    r = d.post(with_id(LOAN, "999"))
    assert r.status == 503 and r.headers["retry-after"] and time.time() - t0 < 1
    assert "max-inflight" in r.json()["error"]
    (tmp_path / "gate").unlink()
    assert posters.join() == [200, 200, 200]


def test_header_size_bound(daemon_factory):
    d = daemon_factory(["--max-headers-size", "2048"])
    with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", data
    assert "2048 bytes" in json.loads(body)["error"]
    assert d.post(LOAN).status == 200


# ---- logs --------------------------------------------------------------------------------------

def test_json_access_log(daemon_factory):
    d = daemon_factory(["--log-format", "json"])
    d.post(LOAN)
    d.post(LOAN, signature="nope")
    d.get("/webhook?challenge=abc")
    d.get("/nowhere")
    d.stop()
    lines = [json.loads(l) for l in d.stderr().splitlines() if l.strip()]
    access = [l for l in lines if l.get("msg") == "access"]
    ok = [a for a in access if a["status"] == 200 and a["method"] == "POST"][0]
    assert ok["id"] == json.loads(LOAN)["id"] and ok["action"] == "LOAN"
    assert ok["event"] == "LOAN_CREATED" and ok["sink"] == "file" and ok["client"] == "127.0.0.1"
    assert ok["latency_ms"] >= 0 and ok["bytes"] == len(LOAN)
    assert any(a["status"] == 401 for a in access)
    assert any(a["method"] == "GET" and a["path"] == "/webhook" and a["status"] == 200 for a in access)
    assert any(a["path"] == "/nowhere" and a["status"] == 404 for a in access)
    assert "abc" not in d.stderr()  # the query string (the challenge) is not logged
    assert all("time" in l and "level" in l for l in lines)
    assert "AU8675309" not in d.stderr()  # never bodies


# ---- graceful drain ------------------------------------------------------------------------------

def test_drain_under_load(daemon_factory):
    d = daemon_factory(drain_grace=1, threads=2)
    answers, stop = {}, threading.Event()
    lock = threading.Lock()

    def load(t):
        i = 0
        while not stop.is_set():
            wid = f"{t}{i:05d}"
            i += 1
            t0 = time.time()
            try:
                st = d.post(with_id(LOAN, wid), timeout=15).status
            except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
                st = "refused"
            except OSError as e:
                st = repr(e)
            with lock:
                answers[wid] = (st, time.time() - t0)
            if st == "refused":
                time.sleep(0.05)

    ts = [threading.Thread(target=load, args=(t + 1,)) for t in range(8)]
    for t in ts:
        t.start()
    time.sleep(0.5)
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert d.get("/readyz").status == 503  # readiness turns at once, serving goes on
    assert d.get("/healthz").status == 200
    assert d.proc.wait(20) == 0
    stop.set()
    for t in ts:
        t.join()
    stored = {e["id"] for e in d.events()}
    ok = {k for k, (st, _) in answers.items() if st == 200}
    assert len(ok) > 20
    assert ok <= stored
    bad = {k: v for k, v in answers.items() if v[0] not in (200, 503, "refused")}
    assert not bad, bad
    assert max(el for _, el in answers.values()) < 10  # nobody hung


# ---- configuration tools ---------------------------------------------------------------------

def test_check_config(tmp_path, pki):
    env = {"PATH": os.environ["PATH"], "ALMABRIDGE_SECRET": "s"}
    ok = subprocess.run([BIN, "--check-config", "--file", str(tmp_path / "e.jsonl"),
                         "--tls-cert", str(pki / "one.pem"), "--tls-key", str(pki / "one.key")],
                        env=env, capture_output=True, text=True, timeout=10)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([BIN, "--check-config", "--tls-cert", str(pki / "one.pem"),
                          "--tls-key", str(pki / "two.key")], env=env, capture_output=True,
                         text=True, timeout=10)
    assert bad.returncode == 2 and "does not match" in bad.stderr
    bad = subprocess.run([BIN, "--check-config", "--file", "/nonexistent/x"], env=env,
                         capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "/nonexistent/x" in bad.stderr
    bad = subprocess.run([BIN, "--check-config", "--allow", "10.0.0.0/99"], env=env,
                         capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2


def test_print_config_masks_secrets():
    env = {"PATH": os.environ["PATH"], "ALMABRIDGE_SECRET": "topsecret",
           "ALMABRIDGE_REDIS": "redis://:hunter2@127.0.0.1:6379/0"}
    p = subprocess.run([BIN, "--print-config", "--kafka-conf", "sasl.password=pw123",
                        "--listen", "127.0.0.1:9999"], env=env, capture_output=True, text=True, timeout=10)
    assert p.returncode == 0
    assert "listen = 127.0.0.1:9999" in p.stdout
    for secret in ("topsecret", "hunter2", "pw123"):
        assert secret not in p.stdout


def test_kafka_conf_masked_by_default():
    """Every --kafka-conf value is masked in --print-config, in error messages and in ps,
    except those of keys known to be harmless (issue 23)."""
    env = {"PATH": os.environ["PATH"], "ALMABRIDGE_SECRET": "s"}
    conf = ["sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
            "required username=\"u\" password=\"j4as-pw\";",
            "sasl.oauthbearer.client.secret=oauth-s3cret", "ssl.key.pem=pem-pr1vate",
            "sasl.username=api-k3y", "security.protocol=SASL_SSL", "linger.ms=7"]
    args = [a for c in conf for a in ("--kafka-conf", c)]
    p = subprocess.run([BIN, "--print-config", "--sink", "kafka"] + args, env=env,
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 0
    for secret in ("j4as-pw", "oauth-s3cret", "pem-pr1vate", "api-k3y"):
        assert secret not in p.stdout
    assert "sasl.jaas.config=****" in p.stdout and "sasl.username=****" in p.stdout
    assert "security.protocol=SASL_SSL" in p.stdout and "linger.ms=7" in p.stdout
    # librdkafka refuses sasl.jaas.config (a Java property): the error names the key only
    bad = subprocess.run([BIN, "--check-config", "--sink", "kafka"] + args, env=env,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "sasl.jaas.config" in bad.stderr
    assert "j4as-pw" not in bad.stderr + bad.stdout


def test_command_line_secrets_not_in_ps(daemon_factory):
    d = daemon_factory(["--kafka-conf", "sasl.password=hunter2-kafka",
                        "--redis=redis://:hunter2-redis@127.0.0.1:6379/0"])
    with open(f"/proc/{d.proc.pid}/cmdline", "rb") as f:
        cmdline = f.read()
    assert b"hunter2" not in cmdline
    assert b"sasl.password=" in cmdline and b"127.0.0.1:6379" in cmdline


def test_log_bodies_only_when_asked(daemon_factory):
    d = daemon_factory(["--log-level", "debug", "--log-bodies"])
    d.post(LOAN)
    d.stop()
    assert "AU8675309" in d.stderr()  # the sample's user id, from the body
