"""Issue 23's last two parts, end to end with the daemon and real Redis.

1. The follower reader (`wait`, `replay`, the file sink's and the spool's read side) checks
   each record against the checksum index: a flipped byte in a logged event is never
   handed out. `wait` does not return the damaged JOB_END; `replay` from the file reports
   the damage, skips it, delivers the rest and exits 1 (as `verify` does).
2. `replay --dead-letters` processes the dead letter again after a fix. The fix here is a
   front end that mangled the Content-Type of Alma's webhooks (`text/html`: 415, stored in
   the dead letter) and was repaired: `--content-type application/json` takes the stored
   bodies as what they are. Each is checked against its stored signature, normalised as the
   webhook path does and written once; a second replay writes nothing new; what still
   fails (a body of an unknown shape) stays, counted, exit 1; under another secret nothing
   verifies and nothing is written. In consortium mode (--institutions) each record is
   bound to the institution whose URL and secrets stored it (almainstitution): checked
   under that institution's secrets only and routed as its events are; a record whose
   institution was altered, or names none or an unknown one, is reported, never written."""
import json
import os
import subprocess

from daemon import BIN, SECRET, samples, sign, wait_until, with_id
from jobs import job_end_json, new_id
from jobs import run as run_cmd
from services import RedisServer

LOAN = dict(samples())["loan_created"]
UNKNOWN_SHAPE = b'{"format": "changed on Alma\'s side", "items": [1, 2, 3]}'


def run(*args, **kw):
    """`almabridge <args>`: (exit code, stdout, stderr), with no sanitizer report (an exit 1
    expected here must not hide one: ASan's exit code is 1 too)."""
    rc, out, err = run_cmd(*args, **kw)
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert marker not in err, err[-4000:]
    return rc, out, err


def redis_ids(url):
    import redis as redis_py
    r = redis_py.Redis.from_url(url)
    out = []
    for key in r.scan_iter("alma:*"):
        for _, fields in r.xrange(key):
            out.append(json.loads(fields[b"event"])["id"] if b"event" in fields
                       else fields[b"id"].decode())
    return out


def flip_in_line(path, event_id, marker=b'"traceparent":"00-'):
    """Flip one hex digit of the traceparent of the line holding event_id, in place (the
    line stays valid JSON and the same event: only the checksum can tell)."""
    data = open(path, "rb").read()
    start = data.index(b'"id":"%s"' % event_id.encode())
    start = data.rindex(b"\n", 0, start) + 1 if b"\n" in data[:start] else 0
    at = data.index(marker, start) + len(marker)
    assert at < data.index(b"\n", start)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"a" if data[at:at + 1] != b"a" else b"b")
    return start


def test_flipped_byte_not_returned_by_wait_nor_replayed(daemon_factory):
    d = daemon_factory(["--dedupe-store", "none"], threads=1)
    inst = new_id()
    job = job_end_json(inst)
    job_id = json.loads(job)["id"]
    loans = [with_id(LOAN, new_id()) for _ in range(3)]
    assert d.post(loans[0]).status == 200
    assert d.post(job).status == 200
    for body in loans[1:]:
        assert d.post(body).status == 200
    d.stop()
    off = flip_in_line(d.file, job_id)
    # wait: the damaged JOB_END is not returned (it would match); the damage is logged
    rc, _, err = run("wait", "--job-instance", inst, "--sink", "file", "--file", d.file,
                     "--timeout", "2s", timeout=30)
    assert rc == 3, err
    assert "%s: damaged record(s) at offset %d: checksum mismatch" % (d.file, off) in err, err
    # verify agrees
    v = subprocess.run([BIN, "verify", d.file], capture_output=True, text=True, timeout=20)
    assert v.returncode == 1 and "offset %d: checksum mismatch" % off in v.stdout
    # replay: the rest delivered, the damage reported and counted, exit 1
    with RedisServer() as redis:
        rc, _, err = run("replay", "--from", d.file, "--sink", "redis", "--redis", redis.url,
                         "--rate", "0", "--dedupe-store", "none", timeout=60)
        assert rc == 1, err
        assert "1 damaged record(s) of the input skipped" in err, err
        assert "checksum mismatch" in err
        assert "resume with" not in err  # nothing to resume: everything else was delivered
        got = redis_ids(redis.url)
        assert sorted(got) == sorted(json.loads(b)["id"] for b in loans), got
        # again: nothing new, still exit 1 (the input is still damaged)
        rc, _, err = run("replay", "--from", d.file, "--sink", "redis", "--redis", redis.url,
                         "--rate", "0", "--dedupe-store", "none", timeout=60)
        assert rc == 1 and "3 already there" in err, err
        assert len(redis_ids(redis.url)) == 3


def replay(*args, secret=SECRET):
    """`almabridge replay` with the daemon's secret (what the stored signatures are checked
    against)."""
    return run("replay", *args, env={"ALMABRIDGE_SECRET": secret}, timeout=60)


def post_dead_letters(d):
    """A loan webhook behind a front end that says text/html (415) and a body of an unknown
    shape (422): both signed, both dead-lettered. Returns the loan's webhook id."""
    loan = with_id(LOAN, new_id())
    for body, ctype in ((loan, "text/html"), (UNKNOWN_SHAPE, "application/json")):
        r = d.post(body, content_type=ctype)
        assert r.status == 200 and r.json()["status"] == "dead-lettered", r
    return json.loads(loan)["id"]


def test_dead_letters_replayed_after_a_fix_file_sink(daemon_factory):
    d = daemon_factory(["--dedupe-store", "none"], threads=1)
    loan_id = post_dead_letters(d)
    other = with_id(LOAN, new_id())
    assert d.post(other).status == 200
    dl = d.file + ".deadletter"
    wait_until(lambda: os.path.exists(dl) and len(open(dl, "rb").read().splitlines()) == 2, 10,
               "two dead letters")
    sink = ["--sink", "file", "--file", d.file, "--dedupe-store", "none"]
    # the daemon writes its file alone: replay says so (exit 2) while it runs
    rc, _, err = replay("--dead-letters", *sink)
    assert rc == 2 and "lock" in err, err
    d.stop()
    # before the fix: both still fail, nothing is written
    rc, _, err = replay("--dead-letters", *sink)
    assert rc == 1, err
    assert "2 dead letter(s): 0 now make events" in err and "2 still failing (kept)" in err, err
    assert [e["id"] for e in d.events()] == [json.loads(other)["id"]]
    # after the fix: the loan is an event, written once; the unknown shape stays
    fixed = ["--dead-letters", "--content-type", "application/json"] + sink
    rc, _, err = replay(*fixed)
    assert rc == 1, err
    assert "1 now make events (1 delivered, 0 already there), 1 still failing" in err, err
    events = d.events()
    assert [e["id"] for e in events] == [json.loads(other)["id"], loan_id]
    assert events[1]["type"] == "com.exlibrisgroup.alma.loan.loan_created"
    assert events[1]["data"]["id"] == loan_id  # the body as Alma sent it, normalised
    # again: nothing new
    rc, _, err = replay(*fixed)
    assert rc == 1 and "(0 delivered, 1 already there)" in err, err
    assert len(d.events()) == 2
    # the dead letter is read, never changed; the log stays checksummed
    assert len(open(dl, "rb").read().splitlines()) == 2
    v = subprocess.run([BIN, "verify", d.file], capture_output=True, text=True, timeout=20)
    assert v.returncode == 0 and "2 record(s) intact, 0 damaged" in v.stdout, v.stdout
    # a signature that no longer verifies (another secret): reported, nothing written
    rc, _, err = replay(*fixed, secret="another-secret")
    assert rc == 1, err
    assert err.count("signature does not verify under any configured secret") == 2, err
    assert len(d.events()) == 2


def test_dead_letters_replayed_after_a_fix_redis(daemon_factory):
    with RedisServer() as redis:
        store = ["--dedupe-store", redis.url]  # shared by the daemon and replay
        d = daemon_factory(["--sink", "redis", "--redis", redis.url] + store, threads=1)
        wait_until(lambda: d.get("/readyz").status == 200, 10, "ready")
        loan_id = post_dead_letters(d)
        assert redis_ids(redis.url) == []
        args = ["--dead-letters", "--sink", "redis", "--redis", redis.url, "--rate", "0"] + store
        rc, _, err = replay(*args)  # before the fix
        assert rc == 1 and "2 still failing (kept)" in err, err
        assert redis_ids(redis.url) == []
        fixed = args + ["--content-type", "application/json"]
        rc, _, err = replay(*fixed)
        assert rc == 1 and "(1 delivered, 0 already there), 1 still failing" in err, err
        wait_until(lambda: redis_ids(redis.url) == [loan_id], 10, "the event in its stream")
        # the deduplication store knows it now: another copy is a duplicate, not written
        r = d.post(with_id(LOAN, loan_id))
        assert r.status == 200 and redis_ids(redis.url) == [loan_id], r
        rc, _, err = replay(*fixed)  # again: nothing new
        assert rc == 1 and "(0 delivered, 1 already there)" in err, err
        assert redis_ids(redis.url) == [loan_id]
        # the dead letter itself is untouched
        import redis as redis_py
        assert redis_py.Redis.from_url(redis.url).xlen("alma.deadletter") == 2


def test_dead_letters_replayed_after_a_fix_kafka(daemon_factory):
    from services import KafkaBroker
    broker = KafkaBroker()
    try:
        broker.start()
        for topic in ("alma.deadletter", "alma.loan"):
            broker.create_topic(topic)
        kafka = ["--sink", "kafka", "--kafka-brokers", broker.bootstrap]
        d = daemon_factory(kafka, threads=1)
        wait_until(lambda: d.get("/readyz").status == 200, 30, "ready")
        loan_id = post_dead_letters(d)
        assert len(broker.consume("alma.deadletter", count=2, timeout=20)) == 2
        fixed = ["--dead-letters", "--content-type", "application/json", "--rate", "0"] + kafka
        rc, _, err = replay(*fixed)
        assert rc == 1 and "(1 delivered, 0 already there), 1 still failing" in err, err
        msgs = broker.consume("alma.loan", count=1, timeout=20)
        assert [m["headers"].get("ce_id") or json.loads(m["value"])["id"] for m in msgs] == \
            [loan_id]
        rc, _, err = replay(*fixed)  # again: the id is in the topic, nothing new
        assert rc == 1 and "(0 delivered, 1 already there)" in err, err
        assert len(broker.consume("alma.loan", timeout=5)) == 1
    finally:
        broker.close()


def test_dead_letters_replayed_in_consortium_mode(daemon_factory, tmp_path):
    """Two institutions, each with its own secret and route; a loan of each behind the
    mangling front end, sent to its own URL: both dead-lettered, each bound to its
    institution. Replayed with the same profiles, each event is written once into its own
    institution's stream with its own source; a second replay writes nothing new; records
    bound to another institution than the one that signed them, to none or to an unknown
    one are reported and never written."""
    from test_consortium import Client, code, json_body, secret, start_consortium, \
        wait_all_ready
    from daemon import redis_event
    from test_redis import Resp, stream
    import redis as redis_py
    with RedisServer() as redis:
        sink = ["--sink", "redis", "--redis", redis.url]
        d, prof = start_consortium(daemon_factory, tmp_path, sink, insts=[(0, 0), (1, 0)])
        wait_all_ready(d)
        cl = Client(d.port)
        src = dict(samples())["loan_created"]
        for i in (0, 1):
            body = json_body(src, code(i), new_id=f"dl-{i}")
            status, _, data = cl.post(body, sign(body, secret(i)), f"/webhook/{code(i)}",
                                      "text/html")
            assert status == 200 and json.loads(data)["status"] == "dead-lettered", data
        r = redis_py.Redis.from_url(redis.url)
        dead = [json.loads(f[b"event"]) for _, f in r.xrange("alma.deadletter")]
        assert sorted(x["almainstitution"] for x in dead) == [code(0), code(1)], dead
        d.stop()  # replay on its own: the daemon's profiles, no ALMABRIDGE_SECRET

        def streams():
            with Resp(redis.port) as c:
                return {k.decode(): [(f["id"], redis_event(f)["source"])
                                     for _, f in stream(c, k.decode())]
                        for k in c.call("KEYS", "*") if k != b"alma.deadletter"}

        want = {f"cons{i:02d}:loan": [(f"dl-{i}", f"urn:alma:{code(i)}")] for i in (0, 1)}
        args = ["--dead-letters", "--institutions", prof, "--content-type", "application/json",
                "--rate", "0", "--dedupe-store", "none"] + sink
        rc, _, err = run("replay", *args, env={"ALMABRIDGE_SECRET": ""}, timeout=60)
        assert rc == 0, err
        assert "2 dead letter(s): 2 now make events (2 delivered, 0 already there)" in err, err
        assert "0 not bound to their institution (skipped)" in err, err
        assert streams() == want
        rc, _, err = run("replay", *args, env={"ALMABRIDGE_SECRET": ""}, timeout=60)  # again: nothing new
        assert rc == 0 and "(0 delivered, 2 already there)" in err, err
        assert streams() == want
        # institution 0's record rebound to institution 1 (whose stream would take it), to
        # none, to one without a profile: each reported, nothing written
        rebound = dict(dead[0] if dead[0]["almainstitution"] == code(0) else dead[1])
        rebound["almainstitution"] = code(1)
        unbound = {k: v for k, v in rebound.items() if k != "almainstitution"}
        unknown = dict(rebound, almainstitution="01GONE_INST")
        for rec in (rebound, unbound, unknown):
            r.xadd("alma.deadletter", {"event": json.dumps(rec)})
        rc, _, err = run("replay", *args, env={"ALMABRIDGE_SECRET": ""}, timeout=60)
        assert rc == 1, err
        assert ("bound to institution %s but signed with the secret of institution %s: "
                "skipped, not written" % (code(1), code(0))) in err, err
        assert "names no institution (almainstitution" in err, err
        assert "bound to institution 01GONE_INST, which has no profile" in err, err
        assert "5 dead letter(s): 2 now make events (0 delivered, 2 already there)" in err, err
        assert "1 whose signature does not verify (skipped)" in err, err
        assert "2 not bound to their institution (skipped)" in err, err
        assert streams() == want
