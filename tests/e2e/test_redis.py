"""End-to-end tests of the Redis Streams sink against real redis-servers started by the
tests (tests/redis/server.py) on free ports in temporary directories.

A webhook answered 200 must be an entry of its stream (alma:<action>) with the fields
id, type and event; while Redis is away the daemon answers 503 at once and never hangs;
it reconnects by itself."""
import concurrent.futures
import json
import os
import signal
import socket
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from daemon import KeepAlive, check_cloudevent, redacted, redis_event, samples, wait_until, with_id, xml_fixtures
from services import RedisServer

ACK_MS = 2000


# ---- a small RESP2 client (no redis-py on the test machines) ----------------------------

class Resp:
    """One connection to Redis speaking RESP2; call(*args) returns the decoded reply
    (bytes, int, list, None) or raises RedisError for an error reply."""

    class Error(Exception):
        pass

    def __init__(self, port, password=None, user=None, db=0, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""
        if password is not None:
            self.call("AUTH", *([user] if user else []), password)
        if db:
            self.call("SELECT", db)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise Resp.Error(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ValueError(f"bad RESP line {line!r}")


def entries(reply):
    """XRANGE/XREADGROUP entries -> [(entry id, {field: value})] with str fields/values.
    Each entry's event is checked by check_cloudevent() and agrees with its id and type."""
    out = []
    for eid, kv in reply or []:
        fields = {kv[i].decode(): kv[i + 1].decode() for i in range(0, len(kv), 2)}
        if "event" in fields or "specversion" in fields:
            check_cloudevent(json.dumps(redis_event(fields)))
        out.append((eid.decode(), fields))
    return out


def stream(r, key):
    return entries(r.call("XRANGE", key, "-", "+"))


# ---- helpers -----------------------------------------------------------------------------

def start_bridge(daemon_factory, url, *extra, ack_ms=ACK_MS, wait_ready=True, **kw):
    d = daemon_factory(["--sink", "redis", "--redis", url, "--ack-timeout", str(ack_ms)]
                       + [str(a) for a in extra], **kw)
    if wait_ready:
        wait_until(lambda: d.get("/readyz").status == 200, 10,
                   lambda: f"not ready: {d.get('/readyz')} {d.stderr()[-2000:]}")
    return d


def local(tag):
    return tag.rsplit("}", 1)[-1].split(":")[-1]


def expected_from_xml(body):
    """(id, action, type, source) of an XML webhook, namespaces ignored."""
    root = ET.fromstring(body)
    kids = {local(c.tag): (c.text or "").strip() for c in root}
    t = "com.exlibrisgroup.alma." + kids["action"].lower()
    if kids.get("event"):
        t += "." + kids["event"].lower()
    return kids["id"], kids["action"], t, "urn:alma:" + (kids.get("institution") or "unknown")


def expected_from_json(body):
    src = json.loads(body)
    t = "com.exlibrisgroup.alma." + src["action"].lower()
    ev = src.get("event")
    if isinstance(ev, dict) and ev.get("value"):
        t += "." + ev["value"].lower()
    inst = src.get("institution")
    inst = inst.get("value") if isinstance(inst, dict) else inst
    return str(src["id"]), src["action"], t, "urn:alma:" + (inst or "unknown")


def stream_name(action):
    return "alma:" + "".join(c if c.isalnum() or c in "._:-" else "_" for c in action.lower())


# ---- every sample, JSON and XML, and consuming with a consumer group -----------------------

def test_every_sample_json_and_xml_lands_in_its_stream(daemon_factory):
    with RedisServer() as redis, Resp(redis.port) as r:
        d = start_bridge(daemon_factory, redis.url)
        posted = []  # (id, action, type, source, json body or None)
        for name, body in samples():
            resp = d.post(body)
            assert resp.status == 200, (name, resp)
            posted.append(expected_from_json(body) + (json.loads(body),))
        xmls = xml_fixtures()
        assert xmls, "no XML fixtures in tests/fixtures/xml"
        for name, body in xmls:
            resp = d.post(body, content_type="application/xml")
            assert resp.status == 200, (name, resp)
            posted.append(expected_from_xml(body) + (None,))

        by_stream = {}
        for p in posted:
            by_stream.setdefault(stream_name(p[1]), []).append(p)
        for key, ps in by_stream.items():
            got = stream(r, key)
            assert len(got) == len(ps), (key, got)
            for (eid, fields), (wid, action, ctype, source, src) in zip(got, ps):
                # binary mode (the default): one field per attribute, then data
                assert list(fields)[:4] == ["specversion", "id", "source", "type"], fields
                assert list(fields)[-1] == "data" and "event" not in fields, fields
                assert fields["id"] == wid and fields["type"] == ctype
                ev = check_cloudevent(json.dumps(redis_event(fields)))
                assert ev["specversion"] == "1.0"
                assert (ev["id"], ev["type"], ev["source"]) == (wid, ctype, source)
                assert ev["almaaction"] == action
                assert str(ev["data"]["id"]) == wid
                if src is not None:
                    assert ev["data"] == redacted(src)  # a JSON body is the data, all kept but redacted
        assert sorted(k.decode() for k in r.call("KEYS", "*")) == sorted(by_stream)

        # How a downstream worker consumes: a consumer group from the beginning, read the
        # new entries, handle them, XACK them; nothing stays pending.
        key = stream_name("LOAN")
        assert r.call("XGROUP", "CREATE", key, "workers", "0") == b"OK"
        got = entries(r.call("XREADGROUP", "GROUP", "workers", "worker-1", "COUNT", 100,
                             "STREAMS", key, ">")[0][1])
        assert [f["id"] for _, f in got] == [f["id"] for _, f in stream(r, key)]
        assert r.call("XPENDING", key, "workers")[0] == len(got)
        assert r.call("XACK", key, "workers", *[eid for eid, _ in got]) == len(got)
        assert r.call("XPENDING", key, "workers")[0] == 0
        # a second read finds nothing new
        assert r.call("XREADGROUP", "GROUP", "workers", "worker-1", "COUNT", 100,
                      "STREAMS", key, ">") is None


def test_route_template_and_db_selection(daemon_factory):
    with RedisServer() as redis, Resp(redis.port, db=2) as r2, Resp(redis.port) as r0:
        d = start_bridge(daemon_factory, redis.url + "/2", "--route", "lib:{institution}:{action}")
        body = dict(samples())["loan_created"]
        assert d.post(body).status == 200
        wid, action, ctype, source = expected_from_json(body)
        inst = source.split(":")[-1].lower()
        got = stream(r2, f"lib:{inst}:loan")
        assert [f["id"] for _, f in got] == [wid]
        assert r0.call("DBSIZE") == 0  # nothing in db 0
        assert "db 2: connected" in d.get("/readyz").json()["sink"]


# ---- trimming and WAIT ------------------------------------------------------------------

@pytest.mark.parametrize("dedupe", [False, True], ids=["plain", "dedupe-script"])
def test_maxlen_trims_approximately(daemon_factory, dedupe):
    """dedupe-script: the store on the sink's server, so each event is written by the
    claim-and-XADD script, whose MAXLEN branch this is; a copy is still written once."""
    with RedisServer(extra_conf=["stream-node-max-entries 10"]) as redis, Resp(redis.port) as r:
        store = ["--dedupe-store", redis.url] if dedupe else []
        d = start_bridge(daemon_factory, redis.url, "--redis-maxlen", 20, *store)
        body = dict(samples())["loan_created"]
        c = d.conn()
        ids = [f"trim-{i}" for i in range(200)]
        for i in ids:
            assert d.post(with_id(body, i), conn=c).status == 200
        if dedupe:  # a copy of the last one: 200, not written again
            assert d.post(with_id(body, ids[-1]), conn=c).status == 200
        c.close()
        n = r.call("XLEN", "alma:loan")
        # MAXLEN ~ 20 trims whole macro nodes (10 entries here): at least 20 stay, and
        # never much more than one node beyond
        assert 20 <= n <= 30, n
        kept = stream(r, "alma:loan")
        got = [f["id"] for _, f in kept]
        assert got == ids[-n:]  # the newest are kept, in order
        for _, fields in kept:  # what the script wrote, judged by the CloudEvents SDK
            check_cloudevent(json.dumps(redis_event(fields)))


def test_wait_without_replica_is_503_within_ack_timeout(daemon_factory):
    with RedisServer() as redis, Resp(redis.port) as r:
        d = start_bridge(daemon_factory, redis.url, "--redis-wait", 1, ack_ms=1000)
        body = dict(samples())["loan_created"]
        t0 = time.time()
        resp = d.post(with_id(body, "wait-1"))
        took = time.time() - t0
        assert resp.status == 503, resp
        assert resp.headers.get("retry-after")
        assert "only 0 of 1 replicas" in resp.json()["error"], resp
        assert took < 1.0 + 0.5, took  # WAIT gives up at 3/4 of the ack timeout
        # the primary has the entry: a 503 does not mean "not written" (Alma retries, the
        # consumer drops the duplicate by id)
        assert [f["id"] for _, f in stream(r, "alma:loan")] == ["wait-1"]


def test_wait_with_a_replica_is_200(daemon_factory):
    with RedisServer() as primary:
        with RedisServer(extra_conf=[f"replicaof 127.0.0.1 {primary.port}"]) as replica, \
                Resp(primary.port) as p, Resp(replica.port) as rep:
            wait_until(lambda: b"state=online" in p.call("INFO", "replication"), 15,
                       lambda: p.call("INFO", "replication").decode())
            d = start_bridge(daemon_factory, primary.url, "--redis-wait", 1)
            body = dict(samples())["loan_created"]
            for i in range(20):
                resp = d.post(with_id(body, f"replicated-{i}"))
                assert resp.status == 200, resp
            # WAIT returned 1: the replica has every entry already
            assert [f["id"] for _, f in stream(rep, "alma:loan")] == \
                [f"replicated-{i}" for i in range(20)]


# ---- load ----------------------------------------------------------------------------------

def post_many(d, body, ids, workers):
    """POST each id once over `workers` keep-alive connections; {id: (status, seconds)}."""
    results = {}
    lock = threading.Lock()
    chunks = [ids[i::workers] for i in range(workers)]

    def run(chunk):
        ka = KeepAlive(d)
        for i in chunk:
            t0 = time.time()
            st = ka.post(with_id(body, i))
            with lock:
                results[i] = (st, time.time() - t0)
        ka.close()

    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        list(ex.map(run, chunks))
    return results


def test_1000_webhooks_over_50_connections_each_once(daemon_factory):
    with RedisServer(appendonly=True) as redis, Resp(redis.port) as r:
        d = start_bridge(daemon_factory, redis.url)
        body = dict(samples())["loan_created"]
        ids = [f"load-{i}" for i in range(1000)]
        res = post_many(d, body, ids, 50)
        assert sorted(s for s, _ in res.values()) == [200] * 1000, \
            {s for s, _ in res.values()}
        got = [f["id"] for _, f in stream(r, "alma:loan")]
        assert sorted(got) == sorted(ids)  # each exactly once


# ---- faults --------------------------------------------------------------------------------

def test_redis_killed_and_restarted_under_load(daemon_factory):
    """appendonly + appendfsync always, SIGKILL while load runs, restart on the same port:
    fast 503s during the outage, no request hangs, recovery without restarting the daemon,
    and every id answered 200 is in the stream (the ledger)."""
    with RedisServer(appendonly=True, appendfsync="always") as redis:
        d = start_bridge(daemon_factory, redis.url)
        body = dict(samples())["loan_created"]
        ledger = []  # (id, status, start, seconds)
        lock = threading.Lock()
        stop = threading.Event()

        def load(worker):
            ka, n = KeepAlive(d), 0
            while not stop.is_set():
                i = f"crash-{worker}-{n}"
                n += 1
                t0 = time.time()
                st = ka.post(with_id(body, i))
                with lock:
                    ledger.append((i, st, t0, time.time() - t0))
                if st != 200:
                    time.sleep(0.02)  # as a client would, do not spin on 503s
            ka.close()

        threads = [threading.Thread(target=load, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        killed_at = time.time()
        redis.kill()
        time.sleep(2.0)
        restarted_at = time.time()
        redis.start()
        # the daemon reconnects by itself (backoff at most 5 s)
        wait_until(lambda: any(st == 200 and t0 > restarted_at for _, st, t0, _ in list(ledger)),
                   10, lambda: d.stderr()[-2000:])
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a client is stuck"

        print(f"{len(ledger)} requests: {sum(st == 200 for _, st, _, _ in ledger)} x 200, "
              f"{sum(st == 503 for _, st, _, _ in ledger)} x 503")
        assert {st for _, st, _, _ in ledger} <= {200, 503}, {st for _, st, _, _ in ledger}
        # no hang: each request was answered within the ack timeout + 1 s
        slowest = max(s for _, _, _, s in ledger)
        assert slowest < ACK_MS / 1000 + 1.0, slowest
        # during the outage the answer is an immediate 503, not a wait for the timeout
        outage = [s for _, st, t0, s in ledger
                  if st == 503 and killed_at + 0.2 < t0 < restarted_at - 0.1]
        print(f"outage: {len(outage)} x 503, slowest {max(outage):.3f} s; slowest of all "
              f"{slowest:.3f} s")
        assert len(outage) > 20, len(outage)
        assert max(outage) < 0.5, max(outage)
        before = [st for _, st, t0, _ in ledger if t0 < killed_at]
        assert before.count(200) > 20
        assert "redis: connection lost" in d.stderr()
        assert "redis: reconnected to" in d.stderr()
        assert d.get("/readyz").status == 200

        # the ledger: every 200 is in the stream (AOF fsync'd before the XADD reply)
        with Resp(redis.port) as r:
            in_stream = [f["id"] for _, f in stream(r, "alma:loan")]
        acked = [i for i, st, _, _ in ledger if st == 200]
        assert len(in_stream) == len(set(in_stream))
        missing = set(acked) - set(in_stream)
        assert not missing, f"{len(missing)} acknowledged ids lost: {sorted(missing)[:5]}"


def test_stuck_redis_times_out_then_fast_503_and_recovers(daemon_factory):
    """A Redis that accepts but does not answer (SIGSTOP): the request times out at the
    ack timeout, the connection is dropped, later requests get 503 at once, and after
    SIGCONT the daemon reconnects."""
    with RedisServer() as redis:
        d = start_bridge(daemon_factory, redis.url, ack_ms=1000, threads=1)
        body = dict(samples())["loan_created"]
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            t0 = time.time()
            resp = d.post(with_id(body, "stuck-1"))
            took = time.time() - t0
            assert resp.status == 503 and 0.9 < took < 2.0, (resp, took)
            t0 = time.time()
            resp = d.post(with_id(body, "stuck-2"))
            assert resp.status == 503 and time.time() - t0 < 0.5, resp
            r = d.get("/readyz")
            assert r.status == 503, r
            assert "redis: a command got no reply within 1000 ms" in d.stderr()
        finally:
            os.kill(redis.pid, signal.SIGCONT)
        wait_until(lambda: d.get("/readyz").status == 200, 10, lambda: d.stderr()[-2000:])
        assert d.post(with_id(body, "stuck-3")).status == 200


def test_daemon_starts_before_redis_and_sigterm_with_requests_in_flight(daemon_factory):
    # Redis is not there (nothing listens on port 1): the daemon starts anyway, is not
    # ready, and answers 503 at once
    d = daemon_factory(["--sink", "redis", "--redis", "redis://127.0.0.1:1",
                        "--ack-timeout", "3000"])
    r = d.get("/readyz")
    assert r.status == 503 and "disconnected (cannot connect" in r.json()["sink"], r
    t0 = time.time()
    resp = d.post(dict(samples())["loan_created"])
    assert resp.status == 503 and time.time() - t0 < 0.5
    assert "cannot take writes now" in resp.json()["error"]
    assert d.stop() == 0

    with RedisServer() as redis:
        d = start_bridge(daemon_factory, redis.url, "--shutdown-timeout", 1, ack_ms=3000)
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            body = dict(samples())["loan_created"]
            with concurrent.futures.ThreadPoolExecutor(4) as ex:
                futs = [ex.submit(d.post, with_id(body, f"inflight-{i}")) for i in range(4)]
                time.sleep(0.3)
                t0 = time.time()
                d.proc.send_signal(signal.SIGTERM)
                statuses = [f.result().status for f in futs]
            assert statuses == [503] * 4
            assert d.proc.wait(10) == 0
            assert time.time() - t0 < 3.0  # bounded by --shutdown-timeout, not stuck
        finally:
            os.kill(redis.pid, signal.SIGCONT)


# ---- authentication and URLs ------------------------------------------------------------------

PW = "Sup3r-s3cret-pw"


def test_password_right_wrong_and_missing(daemon_factory):
    with RedisServer(password=PW) as redis, Resp(redis.port, password=PW) as r:
        body = dict(samples())["loan_created"]
        d = start_bridge(daemon_factory, f"redis://:{PW}@127.0.0.1:{redis.port}")
        assert d.post(with_id(body, "auth-ok")).status == 200
        assert [f["id"] for _, f in stream(r, "alma:loan")] == ["auth-ok"]
        assert PW not in d.stderr()

        wrong = "Wr0ng-pass-word"
        d2 = start_bridge(daemon_factory, f"redis://:{wrong}@127.0.0.1:{redis.port}",
                          wait_ready=False)
        wait_until(lambda: "authentication failed" in d2.stderr(), 5, d2.stderr)
        r2 = d2.get("/readyz")
        assert r2.status == 503, r2
        assert "authentication failed: WRONGPASS" in r2.json()["sink"]
        assert "redis: authentication failed: WRONGPASS" in d2.stderr()
        resp = d2.post(with_id(body, "auth-wrong"))
        assert resp.status == 503 and "WRONGPASS" in resp.json()["error"], resp
        assert wrong not in d2.stderr()
        # logged once per cause, not on every retry
        time.sleep(1.0)
        logged = [l for l in d2.stderr().splitlines() if "redis: authentication failed" in l]
        assert len(logged) <= 2, logged  # one per worker thread

        d3 = start_bridge(daemon_factory, f"redis://127.0.0.1:{redis.port}", wait_ready=False)
        wait_until(lambda: "NOAUTH" in d3.stderr(), 5, d3.stderr)
        assert "authentication required" in d3.get("/readyz").json()["sink"]
        assert [f["id"] for _, f in stream(r, "alma:loan")] == ["auth-ok"]


def test_acl_user_and_percent_encoded_password(daemon_factory):
    odd = "p@ss:w/rd%x"
    with RedisServer(extra_conf=["user alice on >alicepw ~* +@all",
                                 f"user bob on >{odd} ~alma:* +@all",
                                 "user default off"]) as redis:
        body = dict(samples())["loan_created"]
        d = start_bridge(daemon_factory, f"redis://alice:alicepw@127.0.0.1:{redis.port}")
        assert d.post(with_id(body, "acl-alice")).status == 200
        enc = "p%40ss%3Aw%2Frd%25x"
        d2 = start_bridge(daemon_factory, f"redis://bob:{enc}@127.0.0.1:{redis.port}")
        assert d2.post(with_id(body, "acl-bob")).status == 200
        with Resp(redis.port, user="alice", password="alicepw") as r:
            assert [f["id"] for _, f in stream(r, "alma:loan")] == ["acl-alice", "acl-bob"]
        d3 = start_bridge(daemon_factory, f"redis://alice:nope-nope@127.0.0.1:{redis.port}",
                          wait_ready=False)
        wait_until(lambda: "WRONGPASS" in d3.stderr(), 5, d3.stderr)
        assert d3.get("/readyz").status == 503
        for dd in (d, d2, d3):
            assert "alicepw" not in dd.stderr() and "nope-nope" not in dd.stderr()


@pytest.mark.parametrize("url, message", [
    ("rediss://127.0.0.1:6379", "rediss:// (TLS) is not supported"),
    ("http://127.0.0.1:6379", "expected a URL of the form redis://"),
    ("redis://127.0.0.1:99999", "port must be a number from 1 to 65535"),
    ("redis://127.0.0.1:6379/x", "database after '/' must be a number"),
    ("redis://:pw%zz@127.0.0.1", "bad percent-escape in the password"),
    ("redis://127.0.0.1:6379?timeout=1", "query parameters are not supported"),
    ("redis://:Hunter2-secret@:6379", "no host"),
])
def test_bad_redis_urls_are_start_up_errors(daemon_factory, url, message):
    d = daemon_factory(["--sink", "redis", "--redis", url], start=False)
    d.expect_failure = True
    d.start(wait=False)
    assert d.proc.wait(10) == 2
    err = d.stderr()
    assert message in err, err
    assert "Hunter2" not in err and "pw%zz" not in err


def test_readiness_follows_write_outcomes_oom_and_readonly(daemon_factory):
    """Issue 8 item 10: a Redis that answers every write with an error (OOM under a tiny
    maxmemory, READONLY as a replica) makes /readyz 503 and the log says why; it turns 200
    again by itself (a probe) once writes work, without any webhook."""
    with RedisServer() as redis, Resp(redis.port) as r:
        d = start_bridge(daemon_factory, redis.url, threads=1)
        body = dict(samples())["loan_created"]
        assert d.post(with_id(body, "w-ok-1")).status == 200
        r.call("CONFIG", "SET", "maxmemory-policy", "noeviction")
        r.call("CONFIG", "SET", "maxmemory", "1")
        resp = d.post(with_id(body, "w-oom-1"))
        assert resp.status == 503, resp
        wait_until(lambda: d.get("/readyz").status == 503, 5, lambda: d.stderr()[-2000:])
        assert "writes fail (OOM" in d.get("/readyz").json()["sink"]
        assert "refuses writes (OOM" in d.stderr()
        r.call("CONFIG", "SET", "maxmemory", "0")
        wait_until(lambda: d.get("/readyz").status == 200, 5, lambda: d.stderr()[-2000:])
        assert "takes writes again" in d.stderr()
        assert d.post(with_id(body, "w-ok-2")).status == 200

        # a replica (of a primary that is not there) refuses writes with READONLY
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            nobody = s.getsockname()[1]
        r.call("REPLICAOF", "127.0.0.1", nobody)
        try:
            assert d.post(with_id(body, "w-ro-1")).status == 503
            wait_until(lambda: d.get("/readyz").status == 503, 5, lambda: d.stderr()[-2000:])
            assert "READONLY" in d.get("/readyz").json()["sink"]
        finally:
            r.call("REPLICAOF", "NO", "ONE")
        wait_until(lambda: d.get("/readyz").status == 200, 5, lambda: d.stderr()[-2000:])
        assert d.post(with_id(body, "w-ok-3")).status == 200
        ids = [f["id"] for _, f in stream(r, "alma:loan")]
        assert ids == ["w-ok-1", "w-ok-2", "w-ok-3"], ids
