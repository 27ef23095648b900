"""The front end against hostile and broken clients (issue 9): exact limits, no starvation,
no bypass behind proxies, RFC 9112 framing. Raw sockets where an HTTP library would not
send what is tested; a real HAProxy from Debian on loopback for the proxy cases."""
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from daemon import BIN, BUILD, SECRET, free_port, samples, sign, with_id

LOAN = dict(samples())["loan_created"]


# ---- helpers ----------------------------------------------------------------------------

def dial(d, source=None, timeout=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    s.connect(("127.0.0.1", d.port if hasattr(d, "port") else d))
    return s


def read_all(s, timeout=5):
    """Everything until the peer closes (or timeout)."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def answers(data):
    """Split a byte stream into (status, headers, body) answers using Content-Length."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(b":")
            headers[k.strip().lower().decode()] = v.strip().decode()
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def post_bytes(body, extra=b"", secret=SECRET):
    return (b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Exl-Signature: " + sign(body, secret).encode() + b"\r\n" + extra +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        return [int(l.split()[1]) for l in f if l.startswith(key + ":")][0]


def start_limited(d, nofile):
    """Start daemon d (made with start=False) under RLIMIT_NOFILE = nofile (soft and hard)."""
    d._err = open(d.stderr_path, "ab")
    d.proc = subprocess.Popen([BIN] + d.args, env=d.env, stdout=d._err, stderr=d._err,
                              cwd=d.tmp, preexec_fn=lambda: resource.setrlimit(
                                  resource.RLIMIT_NOFILE, (nofile, nofile)))
    return d


# ---- starvation and memory --------------------------------------------------------------

def test_trickling_clients_do_not_starve_a_webhook(daemon_factory):
    """200 clients trickling a byte every second hold every slot of --max-connections 50;
    a real webhook still gets 200 within 2 s."""
    d = daemon_factory(["--max-connections", "50", "--read-timeout", "30"])
    stop = threading.Event()
    socks = []
    for _ in range(200):
        s = dial(d)
        s.sendall(b"P")
        socks.append(s)

    def trickle():
        while not stop.is_set():
            for s in socks:
                try:
                    s.send(b"O")
                except OSError:
                    pass
            stop.wait(1)

    t = threading.Thread(target=trickle)
    t.start()
    try:
        time.sleep(1.5)
        t0 = time.time()
        r = d.post(LOAN, timeout=5)
        assert r.status == 200 and time.time() - t0 < 2
        m = d.metrics()
        assert metric(m, "almabridge_connections") <= 50
        assert metric(m, "almabridge_connections_evicted_total") >= 150
    finally:
        stop.set()
        t.join()
        for s in socks:
            s.close()


def test_read_timeout_is_a_deadline_not_an_idle_timeout(daemon_factory):
    d = daemon_factory(["--read-timeout", "2", "--idle-timeout", "30"])
    s = dial(d)
    t0 = time.time()
    closed = False
    for c in b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
        try:
            s.send(bytes([c]))
        except OSError:
            closed = True
            break
        s.settimeout(0.25)
        try:
            if s.recv(100) == b"":
                closed = True
                break
        except socket.timeout:
            pass
    assert closed and time.time() - t0 < 4
    assert metric(d.metrics(), "almabridge_request_timeouts_total") >= 1
    s.close()


def test_idle_keepalive_timeout(daemon_factory):
    d = daemon_factory(["--idle-timeout", "1", "--read-timeout", "30"])
    c = d.conn()
    assert d.request("GET", "/healthz", conn=c).status == 200
    t0 = time.time()
    c.sock.settimeout(5)
    assert c.sock.recv(10) == b""  # closed by the server after 1 s idle
    assert time.time() - t0 < 3
    c.close()


def test_memory_bounded_by_max_buffered(daemon_factory):
    """1,000 connections each announcing a 4 MiB body and sending part of it: RSS stays
    under --max-buffered plus the documented overhead, the excess gets 503 + Retry-After."""
    budget = 16 << 20
    d = daemon_factory(["--max-buffered", str(budget)])
    base_kb = proc_kb(d.proc.pid, "VmRSS")
    head = (b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Exl-Signature: x\r\nContent-Length: %d\r\n\r\n" % (4 << 20))
    chunk = b"{" + b" " * 65535
    socks = []
    for i in range(1000):
        s = dial(d)
        s.setblocking(False)
        try:
            s.send(head)
            s.send(chunk)
        except OSError:
            pass
        socks.append(s)
    time.sleep(1.0)
    statuses = []
    for s in socks:
        try:
            data = s.recv(4096)
            if data.startswith(b"HTTP/1.1 "):
                statuses.append(int(data.split(b" ")[1]))
                assert b"Retry-After: " in data or not data.startswith(b"HTTP/1.1 503")
        except OSError:
            pass
    peak_kb = proc_kb(d.proc.pid, "VmHWM")
    m = d.metrics()
    for s in socks:
        s.close()
    assert 503 in statuses
    assert metric(m, "almabridge_buffered_bytes") <= budget
    # documented overhead: 16 MiB for 1,000 connections (buffers, connection state); a
    # sanitizer build (build-address...) keeps freed memory in quarantine: not measured
    if "-" not in os.path.basename(BUILD.rstrip("/")):
        assert (peak_kb - base_kb) * 1024 < budget + (16 << 20), (peak_kb, base_kb)
    assert d.post(LOAN).status == 200  # and the daemon is fine afterwards


def test_descriptor_limit_caps_connections_without_spinning(daemon_factory):
    d = daemon_factory(["--max-connections", "10000"], start=False)
    start_limited(d, 64).wait_healthy()
    err = d.stderr()
    assert "capped at" in err and "open-file limit is 64" in err
    socks = []
    for _ in range(200):
        try:
            socks.append(dial(d, timeout=2))
        except OSError:
            pass
    cpu0 = proc_cpu(d.proc.pid)
    time.sleep(2)
    assert proc_cpu(d.proc.pid) - cpu0 < 0.5  # no accept loop spinning
    assert len(d.stderr().splitlines()) < 40  # and no flood of log lines
    for s in socks:
        s.close()
    deadline = time.time() + 10
    status = None
    while time.time() < deadline and status != 200:
        try:
            status = d.post(LOAN, timeout=3).status
        except OSError:
            time.sleep(0.2)
    assert status == 200


def test_descriptor_limit_too_low_refuses_to_start(daemon_factory):
    d = daemon_factory([], start=False)
    d.expect_failure = True
    start_limited(d, 40)
    assert d.proc.wait(10) == 2
    err = d.stderr()
    assert err.count("\n") == 1 and "open-file limit" in err, err


def test_connection_count_goes_back_down(daemon_factory):
    """Connections that end every which way (closed at once, reset, mid-head, mid-body,
    after an answer, evicted, timed out) are all counted out: the gauge returns to the
    scrape's own connection, and accepting never stops at the limit."""
    import struct
    d = daemon_factory(["--max-connections", "30", "--read-timeout", "1", "--idle-timeout", "1"])
    for i in range(300):
        s = dial(d)
        kind = i % 6
        if kind == 1:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        elif kind == 2:
            s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Le")
        elif kind == 3:
            s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        elif kind == 4:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(1000)
        if kind != 5:  # kind 5 stays open until evicted or timed out
            s.close()
    deadline = time.time() + 10
    conns = None
    while time.time() < deadline:
        conns = metric(d.metrics(), "almabridge_connections")
        if conns == 1:
            break
        time.sleep(0.2)
    assert conns == 1
    assert d.post(LOAN).status == 200


# ---- HTTP correctness (RFC 9112) -------------------------------------------------------------

def test_two_content_lengths_400_and_close(daemon):
    s = dial(daemon)
    body = b'{"id":"1"}'
    s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body +
              b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    got = answers(read_all(s))
    s.close()
    assert len(got) == 1 and got[0][0] == 400
    assert got[0][1]["connection"] == "close" and "Content-Length" in json.loads(got[0][2])["error"]


def test_chunk_extensions_ignored(daemon):
    body = with_id(LOAN, "chunked-1")
    half = len(body) // 2
    s = dial(daemon)
    s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"X-Exl-Signature: " + sign(body).encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
              + b"%x;name=value\r\n" % half + body[:half] + b"\r\n"
              + b"%x;a=\"b;c\"\r\n" % (len(body) - half) + body[half:] + b"\r\n0;last\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    got = answers(read_all(s))
    s.close()
    assert got and got[0][0] == 200
    assert daemon.events()[-1]["id"] == "chunked-1"


def test_head_has_content_length_and_no_body(daemon):
    s = dial(daemon)
    s.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n"
              b"Connection: close\r\n\r\n")
    data = read_all(s)
    s.close()
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"Content-Length: 15" in first
    assert rest.startswith(b"HTTP/1.1 200")  # no body between: keep-alive stays in step
    assert rest.endswith(b'{"status":"ok"}')


def test_half_close_answers_every_pipelined_request(daemon):
    reqs = b""
    for i in range(5):
        reqs += post_bytes(with_id(LOAN, f"half-{i}"))
        reqs += b"GET /webhook?challenge=c%d HTTP/1.1\r\nHost: x\r\n\r\n" % i
    s = dial(daemon)
    s.sendall(reqs)
    s.shutdown(socket.SHUT_WR)
    got = answers(read_all(s, timeout=10))
    s.close()
    assert [g[0] for g in got] == [200] * 10
    assert json.loads(got[-1][2]) == {"challenge": "c4"}
    assert [e["id"] for e in daemon.events()] == [f"half-{i}" for i in range(5)]


def test_malformed_requests_answered_logged_and_counted(daemon_factory):
    d = daemon_factory(["--log-format", "json"])
    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nBad Header\r\nHost: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS to the HTTP port
    ]
    for raw, want in cases:
        s = dial(d)
        s.sendall(raw)
        data = read_all(s)
        s.close()
        got = answers(data)
        assert len(got) == 1, data
        status, headers, body = got[0]
        assert status == want and data.startswith(b"HTTP/1.1 %d " % want)
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body)
        assert json.loads(body)["error"]
    # a real TLS handshake to the plain port: 400 at once, not after --read-timeout
    import ssl
    s = dial(d)
    ctx = ssl.create_default_context()
    t0 = time.time()
    with pytest.raises(ssl.SSLError):
        ctx.wrap_socket(s, server_hostname="x")
    assert time.time() - t0 < 2
    s.close()
    m = d.metrics()
    assert 'almabridge_requests_total{status="400",action="",event=""} 4' in m
    assert 'almabridge_requests_total{status="505",action="",event=""} 1' in m
    d.stop()
    access = [json.loads(l) for l in d.stderr().splitlines() if '"msg":"access"' in l]
    assert sum(1 for a in access if a["status"] == 400) == 4
    assert any(a["status"] == 505 and a["method"] == "GET" for a in access)


def test_http11_without_host_400(daemon):
    s = dial(daemon)
    s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
    got = answers(read_all(s))
    s.close()
    assert got[0][0] == 400 and "Host" in json.loads(got[0][2])["error"]
    s = dial(daemon)
    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")  # HTTP/1.0 needs none
    got = answers(read_all(s))
    s.close()
    assert got[0][0] == 200


def test_challenge_always_valid_json(daemon):
    r = daemon.get("/webhook?challenge=%ff")
    assert r.status == 400 and "UTF-8" in r.json()["error"]
    r = daemon.get("/webhook?challenge=a%00b%1f%22")
    assert r.status == 200 and r.json() == {"challenge": 'a\x00b\x1f"'}


# ---- behind proxies ------------------------------------------------------------------------

HAPROXY_CFG = """
global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{front}
    option forwardfor
    default_backend be
backend be
    server s1 127.0.0.1:{back}
"""


@pytest.fixture
def haproxy(tmp_path):
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(exe):
        pytest.fail("haproxy is not installed (make setup-test installs it)")
    procs = []

    def start(back):
        front = free_port()
        cfg = tmp_path / f"haproxy-{front}.cfg"
        cfg.write_text(HAPROXY_CFG.format(front=front, back=back))
        p = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        procs.append(p)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                return front
            except OSError:
                if p.poll() is not None:
                    pytest.fail("haproxy exited: " + p.stderr.read().decode())
                time.sleep(0.05)
        pytest.fail("haproxy did not listen")

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def post_via(port, body, source, extra=b""):
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(post_bytes(body, extra).replace(b"HTTP/1.1\r\nHost: x\r\n",
                                              b"HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"))
    got = answers(read_all(s, timeout=10))
    s.close()
    return got[0][0], json.loads(got[0][2])


def test_haproxy_forwardfor_cannot_be_spoofed(daemon_factory, haproxy):
    """HAProxy's `option forwardfor` adds its own X-Forwarded-For line after the client's:
    the lines are combined, and the right-most untrusted address is the client."""
    d = daemon_factory(["--allow", "10.1.2.3", "--allow", "127.0.0.2",
                        "--trusted-proxy", "127.0.0.1/32", "--log-format", "json"])
    front = haproxy(d.port)
    # a client at 127.0.0.3 claiming to be the allowed 10.1.2.3
    status, body = post_via(front, LOAN, "127.0.0.3", b"X-Forwarded-For: 10.1.2.3\r\n")
    assert status == 403 and "127.0.0.3" in body["error"]
    # the allowed client, with a spoofed left entry that must not matter
    status, _ = post_via(front, with_id(LOAN, "hp-1"), "127.0.0.2", b"X-Forwarded-For: 6.6.6.6\r\n")
    assert status == 200
    d.stop()
    access = [json.loads(l) for l in d.stderr().splitlines() if '"msg":"access"' in l]
    assert {a["client"] for a in access if a["method"] == "POST"} == {"127.0.0.3", "127.0.0.2"}


def test_hand_made_forwarded_headers(daemon_factory, tmp_path):
    d = daemon_factory(["--allow", "10.1.2.3", "--trusted-proxy", "127.0.0.1/32",
                        "--proxy-header", "forwarded"])
    ok = {"Forwarded": 'for=6.6.6.6, for="10.1.2.3:4711";proto=https'}
    assert d.post(LOAN, headers=ok).status == 200
    # X-Forwarded-For is not the configured header: ignored
    assert d.post(LOAN, headers={"X-Forwarded-For": "10.1.2.3"}).status == 403
    assert d.post(LOAN, headers={"Forwarded": "for=10.1.2.3, for=_hidden"}).status == 403
    d2 = daemon_factory(["--allow", "10.1.2.3", "--trusted-proxy", "127.0.0.1/32"],
                        file_path=str(tmp_path / "two.jsonl"))
    s = dial(d2)
    s.sendall(post_bytes(LOAN, b"X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-For: 8.8.8.8\r\n"))
    got = answers(read_all(s, timeout=3))
    s.close()
    assert got[0][0] == 403


def test_readyz_details_only_for_trusted_clients(daemon_factory):
    d = daemon_factory(["--trusted-proxy", "127.0.0.1/32"])
    r = d.get("/readyz")
    assert r.status == 200 and "sink" in r.json()  # loopback
    r = d.get("/readyz", headers={"X-Forwarded-For": "8.8.8.8"})
    assert r.status == 200 and r.json() == {"status": "ready"}
    assert d.file not in r.body.decode()


# ---- metrics and secrets ----------------------------------------------------------------------

def test_metrics_unknown_path_once_and_process_metrics(daemon):
    daemon.get("/nope")
    m = daemon.metrics()
    assert 'almabridge_requests_total{status="404",action="",event=""} 1\n' in m
    assert 'almabridge_build_info{version="' in m
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds", "process_max_fds"):
        assert metric(m, name) is not None, name
    assert abs(metric(m, "process_start_time_seconds") - time.time()) < 120


def test_secret_file_bom_crlf_trailing_blanks(daemon_factory, tmp_path):
    sf = tmp_path / "secrets"
    sf.write_bytes("\ufeffsecret-one  \r\n# comment\r\nsecret-two\t\r\n".encode())
    d = daemon_factory(["--secret-file", str(sf)], secret=None)
    assert d.post(LOAN, signature=sign(LOAN, "secret-one")).status == 200
    assert d.post(LOAN, signature=sign(LOAN, "secret-two")).status == 200
    err = d.stderr()
    assert "line 1: stripped a UTF-8 byte order mark, a CR line end, trailing blanks" in err
    assert "line 3: stripped a CR line end, trailing blanks" in err
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while time.time() < deadline and d.stderr().count("line 3: stripped") < 2:
        time.sleep(0.05)
    assert d.stderr().count("line 3: stripped") == 2  # warned again on reload
    assert "secret-one" not in d.stderr() and "secret-two" not in d.stderr()
