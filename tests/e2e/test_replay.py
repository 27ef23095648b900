"""`almabridge replay`: a 10,000-event file-sink log into the real Kafka broker and Redis,
interrupted with SIGINT and resumed with the printed --start-line, then checked against
the ledger of ids in the file: every event exactly once, in the stream/topic the daemon
would have used, with its key and fields; replaying again adds nothing (dedup by id).

The log is made of real lines: every JSON and XML fixture goes through the daemon's file
sink once, then those lines are repeated with fresh ids up to 10,000."""
import json
import os
import pty
import signal
import subprocess
import time

import pytest

from daemon import BIN, Daemon, redis_event, samples, xml_fixtures
from jobs import almabridge, finish, kafka, new_id, redis, run  # noqa: F401
from services import RedisServer

N = 10000


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    """(path, [event dicts]) of a 10,000-line file-sink log."""
    tmp = tmp_path_factory.mktemp("replay-log")
    d = Daemon(["--dedupe-store", "none"], tmpdir=str(tmp), threads=1).start()  # every sample
    try:
        for _, body in samples():
            assert d.post(body).status == 200
        for _, body in xml_fixtures():
            if b"<webhook" in body:
                d.post(body, content_type="application/xml")
        real = d.events()
    finally:
        d.stop()
    assert len(real) >= 10
    events = []
    for i in range(N):
        ev = dict(real[i % len(real)])
        ev["id"] = new_id()
        events.append(ev)
    path = tmp / "replay.jsonl"  # a new file: the daemon's checksum index is its own log's
    with open(path, "w") as f:
        for ev in events:
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")
    return path, events


def interrupt_and_resume(args, count_acked, rate=1000):
    """Replay at a bounded rate, SIGINT it part-way, resume from the printed line. A slow
    count_acked (reading a Kafka topic) needs a lower rate, or the replay ends first."""
    p = almabridge("replay", *args, "--rate", str(rate))  # N / rate s for the whole file
    deadline = time.time() + 60
    while count_acked() < 500 and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    rc, _, err = finish(p)
    assert rc == 130, err
    line = int(err.rsplit("--start-line", 1)[1].split()[0])
    assert 500 < line < N, err
    assert count_acked() >= line - 1  # everything before the resume line is there
    rc, _, err = run("replay", *args, "--rate", "0", "--start-line", line, timeout=180)
    assert rc == 0, err
    return line


# ---- Redis ------------------------------------------------------------------------------

def redis_entries(redis):
    import redis as redis_py
    r = redis_py.Redis.from_url(redis.url)
    out = {}
    for key in r.scan_iter("alma:*"):
        for _, fields in r.xrange(key):
            out.setdefault(key.decode(), []).append(fields)
    return out


def test_replay_into_redis_interrupted_resumed_and_again(log, redis):
    path, events = log
    args = ["--from", path, "--sink", "redis", "--redis", redis.url]
    interrupt_and_resume(args, lambda: sum(len(v) for v in redis_entries(redis).values()))
    got = redis_entries(redis)
    ids = {}
    for stream, entries in got.items():
        for f in entries:
            ev = redis_event(f)
            assert stream == "alma:" + ev["almaaction"].lower()
            ids[ev["id"]] = ids.get(ev["id"], 0) + 1
    assert ids == {ev["id"]: 1 for ev in events}  # the ledger: each exactly once
    rc, _, err = run("replay", *args, "--rate", "0", timeout=120)
    assert rc == 0 and "%d already there" % N in err, err
    assert sum(len(v) for v in redis_entries(redis).values()) == N


def test_replay_progress_line_on_a_terminal(log, redis, tmp_path):
    path, events = log
    small = tmp_path / "small.jsonl"
    with open(path) as f, open(small, "w") as out:
        for _ in range(300):
            out.write(f.readline())
        out.write("not json\n")
    master, slave = pty.openpty()
    p = subprocess.Popen([BIN, "replay", "--from", str(small),
                          "--sink", "redis", "--redis", redis.url, "--route", "tty:{action}",
                          "--rate", "200"], stderr=slave, stdout=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert p.wait(30) == 0
    text = b"".join(chunks).decode()
    assert "\r" in text and "\x1b[K" in text  # one line rewritten in place
    assert "line 301 is not a CloudEvent" in text and "1 skipped" in text


def test_replay_usage_errors(log, tmp_path):
    path, _ = log
    assert run("replay", "--sink", "redis")[0] == 2
    assert run("replay", "--from", path, "--sink", "file")[0] == 2
    assert run("replay", "--from", tmp_path / "missing", "--sink", "redis")[0] == 2
    rc, _, err = run("replay", "--from", path, "--sink", "redis", "--redis",
                     "redis://127.0.0.1:1", timeout=60)
    assert rc == 2 and "resume with --start-line 1" in err, err


def test_replay_a_directory_of_segments(log, redis, tmp_path):
    path, events = log
    d = tmp_path / "spool"
    d.mkdir()
    lines = open(path).read().splitlines(True)[:30]
    for i in range(3):
        (d / ("%020d.seg" % (i + 1))).write_text("".join(lines[i * 10:(i + 1) * 10]))
    (d / "lock").write_text("123\n")
    rc, _, err = run("replay", "--from", d, "--sink", "redis", "--redis", redis.url,
                     "--route", "seg:{action}", "--rate", "0")
    assert rc == 0, err
    import redis as redis_py
    r = redis_py.Redis.from_url(redis.url)
    got = [redis_event(f)["id"] for k in r.scan_iter("seg:*") for _, f in r.xrange(k)]
    assert sorted(got) == sorted(ev["id"] for ev in events[:30])


# ---- Kafka ------------------------------------------------------------------------------

def kafka_messages(kafka, topics):
    out = []
    for t in topics:
        out += kafka.consume(t)
    return out


def test_replay_into_kafka_interrupted_resumed_and_again(log, kafka):
    path, events = log
    topics = sorted({"alma." + ev["almaaction"].lower() for ev in events})
    for t in topics:  # several partitions: keys spread, order per key
        kafka.create_topic(t, partitions=3)
    args = ["--from", path, "--sink", "kafka", "--kafka-brokers", kafka.bootstrap]

    def acked():
        return len(kafka_messages(kafka, topics))

    interrupt_and_resume(args, acked, rate=200)  # each count reads the topics: seconds
    msgs = kafka_messages(kafka, topics)
    ids = {}
    for m in msgs:
        ev = m["event"]
        assert m["key"] == ev["partitionkey"] and m["headers"]["ce_id"] == ev["id"]
        assert m["headers"]["ce_type"] == ev["type"]
        assert m["topic"] == "alma." + ev["almaaction"].lower()
        ids[ev["id"]] = ids.get(ev["id"], 0) + 1
    assert ids == {ev["id"]: 1 for ev in events}  # the ledger: each exactly once
    rc, _, err = run("replay", *args, "--rate", "0", timeout=180)
    assert rc == 0 and "%d already there" % N in err, err
    assert acked() == N


def test_replay_a_spool_continues_where_its_forwarder_stopped(log, redis, tmp_path):
    path, events = log
    d = tmp_path / "spool"
    d.mkdir()
    lines = open(path).read().splitlines(True)[:30]
    for i in range(3):  # segment 1 fully forwarded and removed: 2 and 3 remain
        if i:
            (d / ("%020d.seg" % (i + 1))).write_text("".join(lines[i * 10:(i + 1) * 10]))
    offset = len("".join(lines[10:13]))  # three events of segment 2 already forwarded
    (d / "forwarded").write_text("%020d %020d\n" % (2, offset))
    (d / "lock").write_text("")
    import redis as redis_py
    r = redis_py.Redis.from_url(redis.url)

    def ids(prefix):
        return sorted(redis_event(f)["id"]
                      for k in r.scan_iter(prefix + ":*") for _, f in r.xrange(k))

    rc, _, err = run("replay", "--from", d, "--sink", "redis", "--redis", redis.url,
                     "--route", "spool:{action}", "--rate", "0")
    assert rc == 0 and "forwarder stopped" in err, err
    assert ids("spool") == sorted(ev["id"] for ev in events[13:30])
    rc, _, err = run("replay", "--from", d, "--sink", "redis", "--redis", redis.url,
                     "--route", "all:{action}", "--rate", "0", "--all")
    assert rc == 0, err
    assert ids("all") == sorted(ev["id"] for ev in events[10:30])


def test_replay_a_real_spool_whose_broker_is_gone(redis, tmp_path):
    """The daemon spools while its Redis is down, then stops for good; replay pushes what the
    spool holds into another Redis."""
    from daemon import with_id
    loan = dict(samples())["loan_created"]
    spool = tmp_path / "spool"
    gone = RedisServer().start()
    url = gone.url
    gone.close()  # the daemon's broker is gone
    d = Daemon(["--sink", "redis", "--redis", url, "--spool", str(spool), "--spool-after",
                "500"], tmpdir=str(tmp_path), threads=1).start()
    try:
        ids = [new_id() for _ in range(25)]
        for i in ids:
            r = d.post(with_id(loan, i))
            assert r.status == 200, (r, d.stderr()[-2000:])
    finally:
        assert d.stop() == 0, d.stderr()[-2000:]
    assert any(n.endswith(".seg") for n in os.listdir(spool))
    rc, _, err = run("replay", "--from", spool, "--sink", "redis", "--redis", redis.url,
                     "--route", "rescued:{action}", "--rate", "0")
    assert rc == 0, err
    import redis as redis_py
    r = redis_py.Redis.from_url(redis.url)
    got = [redis_event(f)["id"] for _, f in r.xrange("rescued:loan")]
    assert sorted(got) == sorted(ids)


# ---- through the deduplication store (--dedupe-store, docs/DEDUPLICATION.md) -------------

@pytest.mark.parametrize("store", ["file", "redis"])
def test_replay_of_a_spool_through_the_store_is_not_forwarded_again(redis, tmp_path, store):
    """A daemon spools while its Redis is gone; replay pushes the spool into Redis through the
    daemon's store (a local one, or a Redis store on another server: the forwarder's
    "fwd:<key>" keys) and records what it delivered: `spool inspect` with the daemon's options
    says so (none delivered before the replay, all after), and the daemon restarted on that
    spool forwards none of it again (without the record: every event twice)."""
    from daemon import wait_until, with_id
    from test_dedupe import metric
    loan = dict(samples())["loan_created"]
    spool = tmp_path / "spool"
    store_srv = RedisServer().start() if store == "redis" else None
    try:
        store_url = store_srv.url if store_srv else "file:%s" % (tmp_path / "store")
        common = ["--sink", "redis", "--route", "stored:{action}", "--spool", str(spool),
                  "--spool-after", "500", "--dedupe-store", store_url]
        gone = RedisServer().start()
        url = gone.url
        gone.close()
        d = Daemon(common + ["--redis", url], tmpdir=str(tmp_path), threads=1).start()
        ids = [new_id() for _ in range(25)]
        try:
            for i in ids:
                assert d.post(with_id(loan, i)).status == 200, d.stderr()[-2000:]
        finally:
            assert d.stop() == 0, d.stderr()[-2000:]
        inspect = ["spool", "inspect", spool, "--redis", redis.url, *common]
        rc, out, err = run(*inspect)
        assert rc == 0 and "events    25 not yet forwarded" in out, out + err
        assert "delivered 0 of 25 already delivered" in out, out
        rc, _, err = run("replay", "--from", spool, "--redis", redis.url, "--rate", "0", *common)
        assert rc == 0 and " 25 acknowledged" in err, err
        rc, out, err = run(*inspect, "--list")
        assert rc == 0 and "delivered 25 of 25 already delivered" in out, out + err
        listed = [ln.split() for ln in out.splitlines() if ln.startswith("event ")]
        assert sorted(f[1] for f in listed) == sorted(ids) and {f[-1] for f in listed} == {
            "delivered"}, out
        assert "To deliver these events" not in out
        import redis as redis_py
        r = redis_py.Redis.from_url(redis.url)

        def stream():
            return sorted(redis_event(f)["id"] for _, f in r.xrange("stored:loan"))

        assert stream() == sorted(ids)
        d = Daemon(common + ["--redis", redis.url], tmpdir=str(tmp_path), threads=1).start()
        try:
            wait_until(lambda: metric(d, "almabridge_spool_events") == 0, 30, "an empty spool")
            assert metric(
                d, 'almabridge_dedupe_duplicates_total{cause="forwarder"}') == len(ids)
        finally:
            assert d.stop() == 0, d.stderr()[-2000:]
        assert stream() == sorted(ids)
        r.delete("stored:loan")
    finally:
        if store_srv:
            store_srv.close()


def test_spool_inspect_says_when_the_store_does_not_answer(tmp_path):
    """`spool inspect` with a Redis store that is down: the summary all the same, "delivered
    unknown" with the reason, exit 2 (a script must not read it as "none delivered")."""
    from daemon import with_id
    loan = dict(samples())["loan_created"]
    spool = tmp_path / "spool"
    gone = RedisServer().start()
    url = gone.url
    gone.close()
    common = ["--sink", "redis", "--redis", url, "--spool", str(spool), "--spool-after", "300",
              "--dedupe-store", url]
    d = Daemon(common, tmpdir=str(tmp_path), threads=1).start()
    try:
        assert d.post(with_id(loan, new_id())).status == 200, d.stderr()[-2000:]
    finally:
        assert d.stop() == 0, d.stderr()[-2000:]
    rc, out, err = run("spool", "inspect", spool, *common, "--ack-timeout", "1000")
    assert rc == 2, out + err
    assert "events    1 not yet forwarded" in out and "delivered unknown:" in out, out
    assert "does not answer" in err and "redis 127.0.0.1:%d" % int(url.rsplit(":", 1)[1]) in err


def test_replay_into_redis_with_the_daemons_store_marks_what_it_delivered(tmp_path):
    """Replay into Redis with the store on the same server (the atomic claim and XADD): the
    keys of what it delivered are the webhooks' keys, so a daemon on that Redis and store
    answers the same webhooks 200 and writes none of them again; a second replay through the
    store skips every event (stored already)."""
    from daemon import with_id
    from test_dedupe import metric
    loan = dict(samples())["loan_created"]
    ids = [new_id() for _ in range(20)]
    (tmp_path / "src").mkdir()
    (tmp_path / "d").mkdir()
    src = Daemon([], tmpdir=str(tmp_path / "src"), threads=1).start()
    try:
        for i in ids:
            assert src.post(with_id(loan, i)).status == 200
        path = src.file
    finally:
        assert src.stop() == 0
    with RedisServer() as srv:
        common = ["--sink", "redis", "--redis", srv.url, "--route", "alma:{action}",
                  "--dedupe-store", srv.url]
        rc, _, err = run("replay", "--from", path, "--rate", "0", *common)
        assert rc == 0 and " 20 acknowledged" in err, err
        import redis as redis_py
        r = redis_py.Redis.from_url(srv.url)
        assert r.xlen("alma:loan") == 20
        assert len(list(r.scan_iter("almabridge:dedupe:*"))) >= 20
        d = Daemon(common, tmpdir=str(tmp_path / "d"), threads=1).start()
        try:
            for i in ids:
                assert d.post(with_id(loan, i)).status == 200
            assert metric(
                d, 'almabridge_dedupe_duplicates_total{cause="after_ack"}') == len(ids)
        finally:
            assert d.stop() == 0, d.stderr()[-2000:]
        assert r.xlen("alma:loan") == 20
        # the target's own ids not read (--no-dedup is not given): still skipped, by the store
        r.delete("alma:loan")
        rc, _, err = run("replay", "--from", path, "--rate", "0", *common)
        assert rc == 0 and " 0 acknowledged" in err and " 20 already there" in err, err
        assert r.xlen("alma:loan") == 0
