"""The dead letter (issue 23): a request whose signature is valid but whose body cannot
become an event is stored raw and answered 200, so Alma does not drop it; unsigned requests
are never stored; --dead-letter off refuses as before. With the file sink (FILE.deadletter),
with real Redis (the alma.deadletter stream) and real Kafka (the alma.deadletter topic)."""
import base64
import json
import os
import subprocess

from daemon import BIN, samples, sign, wait_until
from services import KafkaBroker, RedisServer
from test_redis import Resp
from test_spool import metric

LOAN = dict(samples())["loan_created"]
NOT_JSON = b"hello, this is no webhook \x00\xff"
DOCTYPE = (b'<?xml version="1.0"?><!DOCTYPE w [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b"<webhook><id>1</id><action>LOAN</action><x>&x;</x></webhook>")
UNKNOWN_SHAPE = b'{"format": "changed on Alma\'s side", "items": [1, 2, 3]}'
CASES = [(NOT_JSON, "text/plain", 415), (DOCTYPE, "application/xml", 400),
         (UNKNOWN_SHAPE, "application/json", 422)]


def check_record(rec, body, ctype, status):
    assert rec["specversion"] == "1.0" and rec["type"] == "com.exlibrisgroup.alma.deadletter"
    assert base64.b64decode(rec["data_base64"]) == body
    assert rec["almacontenttype"] == ctype and rec["almasignature"] == sign(body)
    assert rec["deadletterstatus"] == str(status) and rec["deadletterreason"]
    assert rec["id"].startswith("deadletter-")


def xrange(r, key):
    """Entries of a stream as field dicts (str), without the event checks of test_redis:
    a dead-letter record is a CloudEvent of its own kind (data_base64, not JSON data)."""
    out = []
    for _, kv in r.call("XRANGE", key, "-", "+") or []:
        out.append({kv[i].decode(): kv[i + 1].decode() for i in range(0, len(kv), 2)})
    return out


def post_cases(d):
    out = []
    for body, ctype, _ in CASES:
        r = d.post(body, content_type=ctype)
        assert r.status == 200, (body, r)
        assert r.json()["status"] == "dead-lettered"
        out.append(r.json()["id"])
    return out


def test_file_sink_dead_letter(daemon_factory):
    d = daemon_factory()
    ids = post_cases(d)
    assert len(set(ids)) == 3
    # unsigned (or wrongly signed) requests are never stored
    assert d.post(NOT_JSON, content_type="text/plain", signature=False).status == 401
    assert d.post(UNKNOWN_SHAPE, signature="bad").status == 401
    assert d.post(LOAN).status == 200  # a real event still goes to the main file
    dl = d.file + ".deadletter"
    wait_until(lambda: os.path.exists(dl), 5, "the dead-letter file")
    recs = [json.loads(l) for l in open(dl, "rb").read().splitlines()]
    assert [r["id"] for r in recs] == ids
    for rec, (body, ctype, status) in zip(recs, CASES):
        check_record(rec, body, ctype, status)
    assert [e["id"] for e in d.events()] == [json.loads(LOAN)["id"]]  # nothing else
    assert metric(d, "almabridge_dead_letters_total") == 3
    err = d.stderr()
    assert err.count("dead letter: a signed request") == 3
    for body, _, _ in CASES:  # logged without the body
        assert "hello, this is no webhook" not in err and "changed on Alma" not in err
    d.stop()
    v = subprocess.run([BIN, "verify", dl], capture_output=True, text=True, timeout=10)
    assert v.returncode == 0 and "3 record(s) intact" in v.stdout


def test_dead_letter_off_refuses_as_before(daemon_factory):
    d = daemon_factory(["--dead-letter", "off"])
    for body, ctype, status in CASES:
        assert d.post(body, content_type=ctype).status == status
    assert not os.path.exists(d.file + ".deadletter")
    assert metric(d, "almabridge_dead_letters_total") == 0


def test_insecure_skip_signature_never_dead_letters(daemon_factory):
    d = daemon_factory(["--insecure-skip-signature"], secret=None)
    assert d.post(NOT_JSON, content_type="text/plain", signature=False).status == 415
    assert d.post(UNKNOWN_SHAPE, signature=False).status == 422


def test_redis_dead_letter_stream(daemon_factory):
    with RedisServer() as redis, Resp(redis.port) as r:
        d = daemon_factory(["--sink", "redis", "--redis", redis.url])
        wait_until(lambda: d.get("/readyz").status == 200, 10, "ready")
        ids = post_cases(d)
        entries = xrange(r, "alma.deadletter")
        assert [e["id"] for e in entries] == ids
        for e, (body, ctype, status) in zip(entries, CASES):
            check_record(json.loads(e["event"]), body, ctype, status)
        # nothing in any event stream
        keys = r.call("KEYS", "*")
        keys = [k.decode() if isinstance(k, bytes) else k for k in keys]
        assert keys == ["alma.deadletter"], keys
        # the broker gone: 503, and Alma retries
        redis.stop()
        wait_until(lambda: d.get("/readyz").status == 503, 10, "not ready")
        assert d.post(UNKNOWN_SHAPE + b" ").status == 503
        assert metric(d, "almabridge_dead_letter_failures_total") >= 1


def test_kafka_dead_letter_topic(daemon_factory):
    broker = KafkaBroker()
    try:
        broker.start()
        broker.create_topic("alma.deadletter")
        d = daemon_factory(["--sink", "kafka", "--kafka-brokers", broker.bootstrap])
        wait_until(lambda: d.get("/readyz").status == 200, 30, "ready")
        ids = post_cases(d)
        msgs = broker.consume("alma.deadletter", count=3, timeout=20)
        assert [m["key"] for m in msgs] == ids
        for m, (body, ctype, status) in zip(msgs, CASES):
            check_record(json.loads(m["value"]), body, ctype, status)
            assert m["headers"].get("ce_type") in (None, "com.exlibrisgroup.alma.deadletter")
        # nothing in any event topic
        assert [t for t in broker.topics() if t.startswith("alma.")] == ["alma.deadletter"]
    finally:
        broker.close()
