"""End-to-end tests of the HTTP sink (--sink http) against receivers nobody here wrote the
CloudEvents side of: one built on the CloudEvents Python SDK's HTTP binding
(cloudevents.http.from_http) and Benthos' http_server input (built as bench/ builds it).

Every webhook answered 200 must have reached the receiver with all its attributes and its
data intact, in binary and in structured mode, or (for a 4xx other than 408/429) be in the
dead-letter file. Target down, slow, 500, 429: 503 (or the spool). TLS against a CA made
here with openssl: verified, a wrong CA refused, a client certificate, the Authorization
header from a file that never shows in the log or --print-config."""
import datetime
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import cloudevents.http
import pytest

from daemon import (ROOT, BIN, Daemon, check_cloudevent, free_port, go_build, samples, wait_until,
                    with_id)

ACK_MS = 1500


# ---- a receiver on the CloudEvents SDK ------------------------------------------------

class CeReceiver:
    """A threaded HTTP server that reads each POST with the SDK's from_http() (binary or
    structured, as the request says) and answers `status` after `delay` seconds. Only the
    events it answered 2xx are in `received` (id -> (attributes, data, headers, path))."""

    def __init__(self, certfile=None, keyfile=None, client_ca=None):
        self.status, self.delay = 200, 0.0
        self.received, self.answers, self.conns = {}, [], set()
        self.lock = threading.Lock()
        rcv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with rcv.lock:
                    rcv.conns.add(self.request)

            def do_HEAD(self):
                self.send_response(200 if rcv.status < 500 else rcv.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                event = cloudevents.http.from_http(headers, body)
                status = rcv.status
                if rcv.delay:
                    time.sleep(rcv.delay)
                with rcv.lock:
                    rcv.answers.append((event["id"], status))
                    if 200 <= status < 300:
                        rcv.received[event["id"]] = (event.get_attributes(), event.get_data(),
                                                     headers, self.path)
                out = b'{"error":"refused by the test"}' if status >= 300 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        if certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            if client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(client_ca)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        """Down: no listener, and the kept-alive connections cut."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def receiver():
    r = CeReceiver()
    yield r
    r.stop()


def http_daemon(tmp_path, url, *extra):
    dl = os.path.join(tmp_path, "dead-letter.jsonl")
    return Daemon(["--sink", "http", "--http-url", url, "--ack-timeout", str(ACK_MS),
                   "--dead-letter-file", dl] + list(extra), tmpdir=str(tmp_path))


def dead_letters(d):
    path = os.path.join(d.tmp, "dead-letter.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [json.loads(l) for l in f.read().splitlines()]


def sample_ids():
    """[(id, body)] of every sample, each with an id of its own."""
    return [(f"http-{name}", with_id(body, f"http-{name}")) for name, body in samples()]


TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$")


def assert_same_attrs(attrs, ref, what):
    """Every attribute of the reference event, intact; the trace context is new for each
    request (no traceparent was sent), so it is only checked for its form."""
    attrs = dict(attrs)
    assert TRACEPARENT.match(attrs.pop("traceparent", "")), (what, attrs)
    want = {k: v for k, v in ref.items() if k not in ("data", "traceparent")}
    assert attrs == want, what


@pytest.fixture(scope="module")
def reference_events(tmp_path_factory):
    """id -> the structured CloudEvent (dict) of every sample, written by the file sink."""
    tmp = tmp_path_factory.mktemp("ref")
    with Daemon(["--sink", "file"], tmpdir=str(tmp)) as d:
        for i, body in sample_ids():
            assert d.post(body).status == 200
        return {e["id"]: e for e in d.events()}


# ---- the SDK receiver, both modes --------------------------------------------------------

@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_every_acknowledged_event_arrives_intact(tmp_path, receiver, reference_events, mode):
    url = f"http://127.0.0.1:{receiver.port}/alma/{{institution}}/{{action}}"
    with http_daemon(tmp_path, url, "--content-mode", mode) as d:
        wait_until(lambda: d.get("/readyz").status == 200, 10, "ready")
        for i, body in sample_ids():
            assert d.post(body).status == 200, i
        for i, ref in reference_events.items():
            attrs, data, headers, path = receiver.received[i]
            assert_same_attrs(attrs, ref, (mode, i))
            assert data == ref["data"], (mode, i)
            assert path == f"/alma/{ref['almainstitution'].lower()}/{ref['almaaction'].lower()}"
            if mode == "binary":
                assert headers["content-type"] == "application/json"
                assert headers["ce-id"] == i and "ce-datacontenttype" not in headers
            else:
                assert headers["content-type"].startswith("application/cloudevents+json")
                assert not any(h.startswith("ce-") for h in headers), headers
        m = d.metrics()
        assert f'almabridge_http_requests_total{{outcome="ok"}} {len(reference_events)}' in m


def test_attributes_that_need_percent_encoding(tmp_path, receiver):
    """An institution code with a space, a quote, a percent sign and non-ASCII letters: the
    binary mode's ce- headers are percent-encoded as the binding (1.0.2, 3.1.3.2) says, and
    one round of percent-decoding gives the attributes back. The Python SDK (1.11) hands the
    header values over undecoded, so the test decodes them as the binding tells receivers."""
    inst = 'Bibliothèque "X" 50% €'
    body = json.dumps({"id": "pct-1", "action": "LOAN", "event": {"value": "LOAN_CREATED"},
                       "institution": {"value": inst}, "time": "2026-01-02T03:04:05Z",
                       "item_loan": {"title": "ünïcødé"}}, ensure_ascii=False).encode()
    with http_daemon(tmp_path, f"http://127.0.0.1:{receiver.port}/") as d:
        assert d.post(body).status == 200
        attrs, data, headers, _ = receiver.received["pct-1"]
        assert attrs["almainstitution"] != inst  # sent encoded, as it must be
        assert urllib.parse.unquote(attrs["almainstitution"]) == inst
        assert urllib.parse.unquote(attrs["source"]) == "urn:alma:" + urllib.parse.quote(inst, safe="")
        assert "%20" in headers["ce-almainstitution"] and "%E2%82%AC" in headers["ce-almainstitution"]
        assert data["item_loan"]["title"] == "ünïcødé"


# ---- failures: 503, dead letter, spool, ledger -------------------------------------------

def test_down_slow_500_429_400_ledger(tmp_path, receiver):
    """Each failure answered as specified; afterwards every id Alma got 200 for is at the
    receiver or in the dead-letter file."""
    answered = {}
    url = f"http://127.0.0.1:{receiver.port}/"
    with http_daemon(tmp_path, url) as d:
        wait_until(lambda: d.get("/readyz").status == 200, 10, "ready")
        body = samples()[0][1]

        def post(i):
            t0 = time.time()
            st = d.post(with_id(body, i)).status
            answered[i] = st
            return st, time.time() - t0

        assert post("ok-1")[0] == 200
        for code in (500, 503, 429, 408):
            receiver.status = code
            assert post(f"t-{code}")[0] == 503, code
        # each worker publishes its health about every half second
        wait_until(lambda: d.get("/readyz").status == 503, 5, "not ready while failing")
        receiver.status = 400
        assert post("dead-1")[0] == 200
        receiver.status = 404
        assert post("dead-2")[0] == 200
        # the target answers: each worker healthy again by a request or its probe
        wait_until(lambda: d.get("/readyz").status == 200, 10, "ready again")
        receiver.status, receiver.delay = 200, ACK_MS / 1000 + 1
        st, took = post("slow-1")
        assert st == 503 and took < ACK_MS / 1000 + 0.9, took
        receiver.delay = 0
        assert post("ok-2")[0] == 200
        receiver.stop()
        st, took = post("down-1")
        assert st == 503 and took < 1, took
        wait_until(lambda: d.get("/readyz").status == 503, 5, "not ready while down")
        m = d.metrics()
        assert 'almabridge_http_requests_total{outcome="dead_letter"} 2' in m
        assert 'almabridge_http_requests_total{outcome="timeout"} 1' in m
        log = d.stderr()
    dl = {e["id"]: e for e in dead_letters(d)}
    assert set(dl) == {"dead-1", "dead-2"}
    assert dl["dead-1"]["status"] == 400 and dl["dead-1"]["event"]["id"] == "dead-1"
    assert dl["dead-2"]["event"]["data"] == json.loads(with_id(body, "dead-2"))
    acked = {i for i, st in answered.items() if st == 200}
    missing = acked - set(receiver.received) - set(dl)
    assert not missing, missing
    assert acked == {"ok-1", "ok-2", "dead-1", "dead-2"}
    assert "dead-letter file" in log and "dead-1" in log
    assert "refused by the test" not in log  # no bodies in the log


def test_spool_takes_over_while_the_target_fails(tmp_path, receiver):
    """With --spool: a 500 or a dead target is answered 200 from the spool, and every such
    event reaches the receiver once it is back."""
    url = f"http://127.0.0.1:{receiver.port}/"
    spool = os.path.join(tmp_path, "spool")
    with http_daemon(tmp_path, url, "--spool", spool, "--spool-after", "500") as d:
        body = samples()[0][1]
        receiver.status = 500
        ids = [f"sp-{n}" for n in range(5)]
        for i in ids:
            assert d.post(with_id(body, i)).status == 200
        receiver.status = 200
        wait_until(lambda: set(ids) <= set(receiver.received), 20,
                   lambda: f"forwarded {sorted(receiver.received)}: {d.stderr()[-2000:]}")
        assert all(receiver.received[i][0]["id"] == i for i in ids)


# ---- TLS ------------------------------------------------------------------------------------

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(dirpath, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=dirpath)


def make_cert(dirpath, ca, name, san):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr", cwd=dirpath)
    with open(os.path.join(dirpath, f"{name}.ext"), "w") as f:
        f.write(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            cwd=dirpath)


def test_tls_verified_client_cert_and_authorization(tmp_path):
    t = str(tmp_path)
    make_ca(t, "ca")
    make_ca(t, "otherca")
    make_cert(t, "ca", "server", "DNS:localhost,IP:127.0.0.1")
    make_cert(t, "ca", "client", "DNS:almabridge")
    p = lambda n: os.path.join(t, n)
    secret = "Bearer s3cr3t-t0ken-never-logged"
    with open(p("auth"), "w") as f:
        f.write(secret + "\n")
    rcv = CeReceiver(p("server.pem"), p("server.key"), client_ca=p("ca.pem"))
    try:
        url = f"https://localhost:{rcv.port}/in"
        common = ["--http-cert", p("client.pem"), "--http-key", p("client.key"),
                  "--http-auth-file", p("auth"), "--http-header", "X-Api-Key: k3y-value"]
        body = samples()[0][1]
        with http_daemon(tmp_path, url, "--http-ca-file", p("ca.pem"), *common) as d:
            assert d.post(with_id(body, "tls-1")).status == 200
            headers = rcv.received["tls-1"][2]
            assert headers["authorization"] == secret
            assert headers["x-api-key"] == "k3y-value"
        wrong = os.path.join(t, "wrong")
        os.mkdir(wrong)
        with http_daemon(wrong, url, "--http-ca-file", p("otherca.pem"), *common) as d:
            assert d.post(with_id(body, "tls-2")).status == 503
            assert "tls-2" not in rcv.received
            wait_until(lambda: "certificate" in d.get("/readyz").body.decode(), 5,
                       lambda: d.get("/readyz").body)
            log = d.stderr()
        # no client certificate: the receiver refuses the handshake
        nocert = os.path.join(t, "nocert")
        os.mkdir(nocert)
        with http_daemon(nocert, url, "--http-ca-file", p("ca.pem")) as d:
            assert d.post(with_id(body, "tls-3")).status == 503
        cfg = subprocess.run([BIN, "--sink", "http", "--http-url", url, *common,
                              "--print-config"], capture_output=True, text=True,
                             env=dict(os.environ, ALMABRIDGE_SECRET="x"))
        assert cfg.returncode == 0, cfg.stderr
        out = cfg.stdout + cfg.stderr + log
        assert "s3cr3t" not in out and "k3y-value" not in out
        assert "X-Api-Key: ****" in cfg.stdout
    finally:
        rcv.stop()


# ---- no read side; replay into it ---------------------------------------------------------

def test_wait_and_replay_refuse_reading_it_replay_writes_to_it(tmp_path, receiver):
    env = dict(os.environ, ALMABRIDGE_SECRET="x")
    url = f"http://127.0.0.1:{receiver.port}/"
    w = subprocess.run([BIN, "wait", "--job-id", "M1", "--sink", "http", "--http-url", url,
                        "--timeout", "1s"], capture_output=True, text=True, env=env, timeout=20)
    assert w.returncode == 2 and "no read side" in w.stderr, w.stderr
    lines = os.path.join(tmp_path, "events.jsonl")
    with Daemon(["--sink", "file"], tmpdir=str(tmp_path), file_path=lines) as d:
        for i in ("rp-1", "rp-2"):
            assert d.post(with_id(samples()[0][1], i)).status == 200
    r = subprocess.run([BIN, "replay", "--from", lines, "--sink", "http", "--http-url", url],
                       capture_output=True, text=True, env=env, timeout=20)
    assert r.returncode == 2 and "--no-dedup" in r.stderr, r.stderr
    r = subprocess.run([BIN, "replay", "--from", lines, "--no-dedup", "--sink", "http",
                        "--http-url", url, "--dead-letter-file",
                        os.path.join(tmp_path, "dl.jsonl")],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert {"rp-1", "rp-2"} <= set(receiver.received)


# ---- Benthos' http_server as the receiver -------------------------------------------------

BENTHOS_CONF = """
http:
  enabled: false
logger:
  level: WARN
input:
  http_server:
    address: 127.0.0.1:${PORT}
    path: /events
    allowed_verbs: [POST]
pipeline:
  processors:
    - mapping: |
        root.headers = @
        root.body = content().string()
output:
  file:
    path: ${OUT}
    codec: lines
"""


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def benthos_binary():
    """The Benthos binary bench/ builds (bench/peers.py), or None with the reason."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import importlib.util
        spec = importlib.util.spec_from_file_location("peers", os.path.join(ROOT, "bench", "peers.py"))
        peers = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(peers)
        if not os.path.exists(peers.BENTHOS_BIN) and shutil.which("go") is None:
            return None, "no Go toolchain to build Benthos (bench/peers.py)"
        return peers.ensure_benthos(), None
    except Exception as e:  # a failed build or module download
        return None, f"Benthos could not be built: {e}"
    finally:
        sys.path.pop(0)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_benthos_http_server_receives_intact(tmp_path, reference_events, mode):
    binary, why = benthos_binary()
    if binary is None:
        pytest.skip(why)
    port, out = free_port(), os.path.join(tmp_path, "benthos.jsonl")
    conf = os.path.join(tmp_path, "benthos.yaml")
    with open(conf, "w") as f:
        f.write(BENTHOS_CONF)
    proc = subprocess.Popen([binary, "-c", conf], env=dict(os.environ, PORT=str(port), OUT=out),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/events"
        wait_until(lambda: port_open(port), 15, "Benthos listening")
        with http_daemon(tmp_path, url, "--content-mode", mode) as d:
            for i, body in sample_ids():
                assert d.post(body).status == 200, i
        got = {}
        with open(out) as f:
            for line in f:
                rec = json.loads(line)
                h = {k.lower(): v for k, v in rec["headers"].items()}
                ev = cloudevents.http.from_http(h, rec["body"].encode())
                got[ev["id"]] = (ev.get_attributes(), ev.get_data(), h, rec["body"])
        for i, ref in reference_events.items():
            attrs, data, h, raw = got[i]
            assert_same_attrs(attrs, ref, (mode, i))
            assert data == ref["data"]
            if mode == "structured":
                assert h["content-type"].startswith("application/cloudevents+json")
                check_cloudevent(raw)
            else:
                assert h["ce-id"] == i
    finally:
        proc.terminate()
        proc.wait(10)


# ---- batched mode, read by the CloudEvents Go SDK ---------------------------------------

def same_event(got, ref, what):
    """got (the Go SDK's event as JSON) equal to ref: every attribute (time parsed: the SDK
    prints it its own way; the trace context is each request's own) and the data."""
    assert TRACEPARENT.match(got.get("traceparent", "")), what

    def norm(e):
        e = {k: v for k, v in e.items() if k not in ("data", "traceparent")}
        e["time"] = datetime.datetime.fromisoformat(e["time"].replace("Z", "+00:00"))
        return e
    assert norm(got) == norm(ref), what
    assert got["data"] == ref["data"], what


def test_batched_mode_read_by_the_go_sdk(tmp_path, reference_events):
    """--content-mode batched: the events the worker has in one loop iteration go in one POST
    (application/cloudevents-batch+json), which the Go SDK's NewEventsFromHTTPRequest reads
    as a batch; every event answered 200 arrives once with every attribute intact, and POSTs
    carry several events when webhooks come together. Kafka refuses the mode at start."""
    binary = go_build(tmp_path, "./ce_http", "ce_http")
    port, out = free_port(), os.path.join(tmp_path, "ce_http.jsonl")
    with open(out, "w") as f:
        proc = subprocess.Popen([binary, str(port)], stdout=f, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: port_open(port), 15, "the Go SDK receiver listening")
        url = f"http://127.0.0.1:{port}/alma"
        sent = {}
        with http_daemon(tmp_path, url, "--content-mode", "batched", "--threads", "1") as d:
            wait_until(lambda: d.get("/readyz").status == 200, 10, "ready")
            # round 0 as the reference events, then copies under ids of their own
            bodies = [(w, i, with_id(b, w)) for k in range(6) for i, b in sample_ids()
                      for w in [i if k == 0 else f"{i}-r{k}"]]
            with ThreadPoolExecutor(24) as ex:
                statuses = list(ex.map(lambda b: d.post(b[2]).status, bodies))
            assert statuses == [200] * len(bodies)
            sent = {wid: base for wid, base, _ in bodies}
            m = d.metrics()
            assert 'almabridge_http_requests_total{outcome="ok"} %d' % len(bodies) in m
            posts = int(re.search(r"^almabridge_http_posts_total (\d+)$", m, re.M).group(1))
            assert 0 < posts < len(bodies)

        def received():
            with open(out) as f:
                return [json.loads(l) for l in f if l.strip()]
        wait_until(lambda: sum(len(r.get("events", [])) for r in received()) >= len(sent), 10,
                   "every event printed by the receiver")
        posts = received()
        assert all("error" not in p for p in posts), [p["error"] for p in posts if "error" in p]
        assert all(p["content_type"].startswith("application/cloudevents-batch+json")
                   for p in posts)
        got = [e for p in posts for e in p["events"]]
        assert sorted(e["id"] for e in got) == sorted(sent)  # each once
        for e in got:
            if e["id"] in reference_events:
                same_event(e, reference_events[e["id"]], e["id"])
        assert max(len(p["events"]) for p in posts) > 1, "no POST carried more than one event"
        assert len(posts) < len(got)
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run([BIN, "--check-config", "--sink", "kafka", "--content-mode", "batched"],
                         env=dict(os.environ, ALMABRIDGE_SECRET="x"), capture_output=True,
                         text=True, timeout=20)
    assert bad.returncode == 2 and "--content-mode batched" in bad.stderr, bad.stderr
