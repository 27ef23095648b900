"""Deduplication (issue 19, docs/DEDUPLICATION.md) against the real daemon, real Redis and
the real disk: every webhook id answered 200 is stored exactly once, whether its copies come
together, after the first was acknowledged, to another replica or after a SIGKILL; a copy of
an event whose first write failed is stored; a late success is remembered; an unreachable
store stores unchecked (accept) or answers 503 (refuse) and never loses an event."""
import collections
import json
import os
import random
import re
import signal
import socket
import threading
import time

import pytest

from daemon import KeepAlive, free_port, samples, wait_until, with_id
from services import RedisServer
from test_lb import admin_get
from test_redis import Resp

LOAN = dict(samples())["loan_created"]


def metric(d, name):
    m = re.search(r"^%s (\S+)$" % re.escape(name), d.metrics(), re.M)
    return float(m.group(1)) if m else None


def dup_count(d):
    return sum(float(v) for v in re.findall(r"^almabridge_dedupe_duplicates_total\{[^}]*\} (\S+)$",
                                            d.metrics(), re.M))


def file_ids(d):
    return collections.Counter(e["id"] for e in d.events())


def stream_ids(port, stream):
    with Resp(port) as r:
        entries = r.call("XRANGE", stream, "-", "+")
    out = collections.Counter()
    for _, fields in entries:
        f = dict(zip(fields[::2], fields[1::2]))
        out[f[b"id"].decode()] += 1
    return out


def send_copies(targets, ids, copies=(1, 4), seed=19, spacing=0.05):
    """Each id sent 1-4 times, each copy to a random target (a daemon), some at once (threads
    started together), some after the earlier ones were answered. Returns {id: [status]}."""
    rnd = random.Random(seed)
    plan = [(wid, rnd.randint(*copies)) for wid in ids]
    answers = collections.defaultdict(list)
    lock = threading.Lock()

    def one(d, wid):
        st = KeepAlive(d).post(with_id(LOAN, wid))
        with lock:
            answers[wid].append(st)

    for i in range(0, len(plan), 25):
        threads = []
        for wid, n in plan[i:i + 25]:
            together = rnd.randint(1, n)  # these now, the rest after they were answered
            for _ in range(together):
                threads.append(threading.Thread(target=one, args=(rnd.choice(targets), wid)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        time.sleep(rnd.random() * spacing)
        for wid, n in plan[i:i + 25]:
            for _ in range(n - len(answers[wid])):
                one(rnd.choice(targets), wid)
    return answers


# ---- the file sink: a local store by default --------------------------------------------

def test_file_sink_stores_each_id_once_across_sigkill(daemon_factory):
    """The embedded default: copies together and after the 200 are one line; after SIGKILL
    and a restart the local store still knows every id answered 200."""
    d = daemon_factory(threads=2)
    ids = ["4%05d" % i for i in range(150)]
    answers = send_copies([d], ids)
    ok = [w for w, st in answers.items() if 200 in st]
    assert len(ok) == len(ids), {w: st for w, st in answers.items() if 200 not in st}
    got = file_ids(d)
    assert all(got[w] == 1 for w in ok), [w for w in ok if got[w] != 1]
    sent = sum(len(v) for v in answers.values())
    assert dup_count(d) == sent - len(ids)
    assert metric(d, "almabridge_dedupe_ids_held") == len(ids)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.start()
    for w in ids[:40]:
        assert d.post(with_id(LOAN, w)).status == 200
    assert d.post(with_id(LOAN, "499999")).status == 200
    got = file_ids(d)
    assert all(got[w] == 1 for w in ids) and got["499999"] == 1
    assert "remembered from" in d.stderr()


def test_dedupe_store_none_writes_every_copy(daemon_factory):
    d = daemon_factory(["--dedupe-store", "none"])
    for _ in range(2):
        assert d.post(with_id(LOAN, "51")).status == 200
    assert file_ids(d)["51"] == 2
    assert "almabridge_dedupe" not in d.metrics()


def test_copy_of_a_failed_write_is_stored(daemon_factory, tmp_path):
    """The first write fails (fsync EIO): 503 and the claim released; the retry is stored."""
    d = daemon_factory(preload_shim=True, threads=1)
    fail = d.env["SLOWSYNC_FAIL"]
    open(fail, "w").close()
    assert d.post(with_id(LOAN, "61")).status == 503
    assert file_ids(d)["61"] == 0  # the failed batch was rolled back
    os.unlink(fail)
    assert d.post(with_id(LOAN, "61")).status == 200
    assert file_ids(d)["61"] == 1


def test_copies_in_flight_join_and_late_success_is_remembered(daemon_factory):
    """fsync stalls: copies of an id sent while the first waits get the first's outcome
    (one write); a first that times out (503) and is acknowledged late is marked stored, so
    the retry gets 200 without a second line."""
    d = daemon_factory(["--ack-timeout", "1500"], preload_shim=True, threads=2)
    gate = d.env["SLOWSYNC_GATE"]
    open(gate, "w").close()
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        KeepAlive(d).post(with_id(LOAN, "71")))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    os.unlink(gate)
    for t in threads:
        t.join(20)
    assert results == [200] * 4
    assert file_ids(d)["71"] == 1
    # a late success
    open(gate, "w").close()
    assert d.post(with_id(LOAN, "72")).status == 503  # no fsync within --ack-timeout
    os.unlink(gate)
    wait_until(lambda: file_ids(d)["72"] == 1, 10, "the late write")
    wait_until(lambda: metric(d, "almabridge_dedupe_ids_held") == 2, 10, "the key stored")
    assert d.post(with_id(LOAN, "72")).status == 200
    assert file_ids(d)["72"] == 1


# ---- Redis: shared by replicas ----------------------------------------------------------

def test_redis_sink_two_replicas_atomic_claim_and_xadd(daemon_factory):
    """Two replicas, Redis sink and store on one server (the claim and the XADD in one
    script): copies to random replicas, together and apart, one replica SIGKILLed and
    restarted halfway: every id answered 200 is in the stream once."""
    with RedisServer() as redis:
        args = ["--sink", "redis", "--redis", redis.url, "--dedupe-store", redis.url,
                "--route", "alma:dd"]
        a, b = daemon_factory(args), daemon_factory(args)
        answers = send_copies([a, b], ["8%05d" % i for i in range(200)])
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait()
        b.start()
        answers.update(send_copies([a, b], ["8%05d" % i for i in range(100, 300)], seed=7))
        ok = [w for w, st in answers.items() if 200 in st]
        assert len(ok) == 300
        got = stream_ids(redis.port, "alma:dd")
        assert all(got[w] == 1 for w in ok), [w for w in ok if got[w] != 1]
        assert sum(got.values()) == 300
        assert dup_count(a) + dup_count(b) > 0


def test_redis_store_with_file_sink_shared_by_two_replicas(daemon_factory, tmp_path):
    with RedisServer() as redis:
        args = ["--dedupe-store", redis.url]
        a = daemon_factory(args, file_path=str(tmp_path / "a.jsonl"))
        b = daemon_factory(args, file_path=str(tmp_path / "b.jsonl"))
        answers = send_copies([a, b], ["9%05d" % i for i in range(150)])
        assert all(200 in st for st in answers.values())
        got = file_ids(a) + file_ids(b)
        assert all(got[w] == 1 for w in answers), [w for w in answers if got[w] != 1]


def readyz(d):
    """(status, its "status" word, the details) of /readyz: on the admin listener when the
    daemon has one (d.admin: --admin-listen, the only /readyz then), else the main one."""
    if getattr(d, "admin", None):
        st, body = admin_get(d, "/readyz")
    else:
        r = d.get("/readyz")
        st, body = r.status, r.body
    body = json.loads(body)
    return st, body["status"], body.get("sink", "") + " " + body.get("dedupe", "")


@pytest.mark.parametrize("mode,admin", [("accept", False), ("refuse", False),
                                        ("accept", True), ("refuse", True)])
def test_store_down(daemon_factory, tmp_path, mode, admin):
    """Redis store unreachable: accept stores and counts unchecked (/readyz 200 with the
    detail), refuse answers 503 (/readyz 503); once it is back, deduplication resumes and a
    refused event is stored on its retry: nothing is lost either way. The admin listener's
    /readyz (--admin-listen: what Kubernetes and HAProxy probe) says what the main one says."""
    with RedisServer(appendonly=True) as redis:
        args = ["--dedupe-store", redis.url, "--dedupe-on-error", mode, "--ack-timeout", "1500"]
        if admin:
            port = free_port()
            d = daemon_factory(args + ["--admin-listen", "127.0.0.1:%d" % port], start=False)
            d.admin = port
            d.metrics = lambda: admin_get(d, "/metrics")[1]
            d.start(wait=False)
            wait_until(lambda: d.proc.poll() is not None or admin_get(d, "/healthz")[0] == 200,
                       15, "the admin listener")
            assert d.proc.poll() is None, d.stderr()
        else:
            d = daemon_factory(args)
        # the store connected (the admin listener sees what the workers published within
        # half a second; healthz answers before the store is up)
        wait_until(lambda: readyz(d)[:2] == (200, "ready"), 10, "readyz ready")
        assert d.post(with_id(LOAN, "101")).status == 200
        redis.stop()
        want = (503, "deduplication store unreachable") if mode == "refuse" else (
            200, "ready, deduplication unchecked")
        wait_until(lambda: readyz(d)[:2] == want, 10, "readyz to tell")
        detail = readyz(d)[2]
        assert "redis 127.0.0.1:%d" % redis.port in detail, detail
        assert ("webhooks refused" in detail) == (mode == "refuse"), detail
        st = d.post(with_id(LOAN, "102")).status
        if mode == "accept":
            assert st == 200 and readyz(d)[:2] == want
            # this event at least (a slow machine's first try may time out and be sent again)
            assert metric(d, "almabridge_dedupe_unchecked_total") >= 1
        else:
            assert st == 503 and readyz(d)[:2] == want
            assert metric(d, "almabridge_dedupe_refused_total") >= 1
        assert d.post(with_id(LOAN, "103")).status == st
        assert d.stderr().count("dedupe store redis:") == 1  # once per outage
        redis.start()
        wait_until(lambda: readyz(d)[:2] == (200, "ready"), 10, "the store back")
        assert "deduplication" not in readyz(d)[2]
        if not admin:
            assert d.get("/readyz").body == b'{"status":"ready","sink":"%s"}' % d.file.encode()
        assert "answers again" in d.stderr()
        assert d.post(with_id(LOAN, "101")).status == 200  # remembered through the outage
        assert d.post(with_id(LOAN, "102")).status == 200  # refuse: Alma's retry stores it
        got = file_ids(d)
        assert got["101"] == 1
        # accept: stored while unchecked, so its retry may be stored again (counted as
        # unchecked); refuse: stored once, on the retry. Lost: never.
        assert got["102"] == (1 if mode == "refuse" else 2)


def test_spool_forwarder_skips_what_the_broker_took_late(daemon_factory, tmp_path):
    """Redis sink and store on one server (the atomic script), the spool on: Redis stalls
    (SIGSTOP) past --spool-after, so the events are spooled and answered 200 while their
    XADD scripts wait on a socket the sink gave up on; after SIGCONT those land, and the
    forwarder's copies find their keys stored: each id is in the stream once (without
    deduplication: twice)."""
    with RedisServer(appendonly=True) as redis:
        d = daemon_factory(["--sink", "redis", "--redis", redis.url, "--route", "alma:fw",
                            "--spool", str(tmp_path / "spool"), "--spool-after", "300",
                            "--ack-timeout", "3000", "--dedupe-store", redis.url], threads=1)
        assert d.post(with_id(LOAN, "200")).status == 200
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            ids = ["2%02d" % i for i in range(1, 11)]
            answers = send_copies([d], ids, copies=(1, 1))
            assert all(st == [200] for st in answers.values()), answers
            # every one spooled (a slow machine may spool one twice: a copy, deduplicated below)
            spooled = metric(d, "almabridge_spooled_total")
            assert spooled >= len(ids)
        finally:
            os.kill(redis.pid, signal.SIGCONT)
        wait_until(lambda: metric(d, "almabridge_spool_events") == 0, 20, "an empty spool")
        got = stream_ids(redis.port, "alma:fw")
        assert all(got[w] == 1 for w in ["200"] + ids), got
        assert metric(d, 'almabridge_dedupe_duplicates_total{cause="forwarder"}') == spooled


def test_store_that_accepts_and_never_answers_is_dropped_and_retried(daemon_factory):
    """A Redis store address that accepts the connection and never answers (a black-holed
    proxy): the handshake has the store's deadline, so the connection is dropped and tried
    again, and webhooks are stored unchecked meanwhile (accept), not refused for good."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            accepted.append(c)  # held open, never read nor answered

    threading.Thread(target=serve, daemon=True).start()
    try:
        d = daemon_factory(["--dedupe-store", "redis://127.0.0.1:%d" % srv.getsockname()[1],
                            "--dedupe-on-error", "accept", "--ack-timeout", "1000"])
        wait_until(lambda: len(accepted) >= 3, 15, "the store's connection dropped and retried")
        body = samples()[0][1]
        assert d.post(with_id(body, "blackhole-1")).status == 200
        wait_until(lambda: metric(d, "almabridge_dedupe_unchecked_total") >= 1, 5,
                   "the webhook counted unchecked")
    finally:
        srv.close()
        for c in accepted:
            c.close()
