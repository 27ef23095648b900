"""End-to-end tests of the Kafka sink against a real Apache Kafka 4 broker (KRaft, single
node) started by the tests (tests/kafka/broker.py) on free loopback ports.

A webhook answered 200 must be a message of its topic (alma.<action>) with key = id, the
CloudEvent as value and the ce_* headers; under load every id answered 200 is there exactly
once; while the broker is dead the daemon answers 503 quickly (never hangs), /readyz says
503, and it recovers by itself when the broker is back, losing nothing it acknowledged.

The fault injection that needs precision (retriable errors, a late ack) is in the C unit
test tests/unit/kafka_sink_test.c against librdkafka's mock cluster."""
import concurrent.futures
import os
import json
import re
import threading
import time
import subprocess
import xml.etree.ElementTree as ET

import pytest

from daemon import BIN, Daemon, check_kafka_event, samples, with_id, xml_fixtures
from services import KafkaBroker

ACK_MS = 4000  # the default; a new topic's first message takes up to ~2 s (auto-create)
ANSWER_BOUND = ACK_MS / 1000 + 1.0  # every request is answered within ack timeout + 1 s
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer")

_next_id = [int(time.time() * 1000) * 1000]
_id_lock = threading.Lock()


def new_id():
    """A unique webhook id (digits, as Alma's are)."""
    with _id_lock:
        _next_id[0] += 1
        return str(_next_id[0])


# ---- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kafka():
    broker = KafkaBroker()
    try:
        broker.start()
    except RuntimeError as e:  # never skipped: the Kafka tests fail saying why
        pytest.fail("cannot start Apache Kafka for the Kafka sink tests: %s" % e)
    yield broker
    broker.close()


def start_bridge(kafka, tmpdir, *extra, threads=2):
    d = Daemon(["--sink", "kafka", "--kafka-brokers", kafka.bootstrap,
                "--ack-timeout", str(ACK_MS)] + list(extra), tmpdir=str(tmpdir), threads=threads)
    d.start()
    try:
        wait_status(d, "/readyz", 200, 15)
    except BaseException:
        d.stop()
        raise
    return d


def stop_bridge(d):
    """Stop the daemon; it must exit 0 without sanitizer reports."""
    if d.proc.poll() is not None:
        return
    rc = d.stop()
    err = d.stderr()
    for marker in SANITIZER_MARKERS:
        assert marker not in err, err[-4000:]
    assert rc == 0, "almabridge exited with %s:\n%s" % (rc, err[-3000:])


@pytest.fixture(scope="module")
def bridge(kafka, tmp_path_factory):
    d = start_bridge(kafka, tmp_path_factory.mktemp("kafka-bridge"))
    yield d
    stop_bridge(d)


# ---- helpers ------------------------------------------------------------------------------

def wait_status(d, path, status, timeout):
    """Poll path until it answers status; returns the seconds it took, fails after timeout."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            last = d.get(path, timeout=2)
            if last.status == status:
                return time.monotonic() - t0
        except OSError as e:
            last = e
        time.sleep(0.05)
    pytest.fail("%s did not answer %d within %.0f s (last: %r)\n%s"
                % (path, status, timeout, last, d.stderr()[-3000:]))


def wait_for_ids(kafka, topic, ids, timeout=20):
    """Read topic until every id in ids is there; returns all its messages, each checked
    by check_kafka_event() (a valid CloudEvent as the Kafka binding has it)."""
    deadline = time.monotonic() + timeout
    want = set(ids)
    while True:
        msgs = kafka.consume(topic)
        if want <= {m["id"] for m in msgs} or time.monotonic() > deadline:
            for m in msgs:
                check_kafka_event(m)
            return msgs
        time.sleep(0.3)


def xml_with_id(body, new):
    """An XML fixture with its envelope id (the first <id> or <prefix:id>) replaced."""
    out, n = re.subn(rb"<((?:\w+:)?id)>[^<]*</\1>", b"<\\1>" + new.encode() + b"</\\1>", body,
                     count=1)
    assert n == 1
    return out


def expected_from_json(body):
    d = json.loads(body)
    ev = d.get("event")
    inst = d.get("institution")
    return {
        "id": str(d["id"]),
        "action": d["action"],
        "event": ev.get("value") if isinstance(ev, dict) else ev,
        "institution": inst.get("value") if isinstance(inst, dict) else inst,
        "time": d.get("time"),
    }


def expected_from_xml(body):
    root = ET.fromstring(body)
    fields = {}
    for child in root:
        name = child.tag.split("}")[-1]
        if name not in fields:
            fields[name] = (child.text or "").strip() or None
    return {
        "id": fields["id"],
        "action": fields["action"],
        "event": fields.get("event"),
        "institution": fields.get("institution"),
        "time": fields.get("time"),
    }


def check_message(msg, exp):
    """msg (from KafkaBroker.consume) carries the CloudEvent of the webhook exp describes."""
    assert msg["id"] == exp["id"]
    ce = check_kafka_event(msg)
    assert msg["key"] == ce["partitionkey"] and ce["subject"]
    ce_type = "com.exlibrisgroup.alma." + exp["action"].lower()
    if exp["event"]:
        ce_type += "." + exp["event"].lower()
    assert ce["specversion"] == "1.0"
    assert ce["id"] == exp["id"]
    assert ce["type"] == ce_type
    assert ce["source"] == "urn:alma:" + (exp["institution"] or "unknown")
    assert ce["time"] == exp["time"]
    assert ce["datacontenttype"] == "application/json"
    assert ce["almaaction"] == exp["action"]
    assert ce.get("almaevent") == exp["event"]
    assert ce.get("almainstitution") == exp["institution"]
    assert str(ce["data"]["id"]) == exp["id"]
    assert ce["data"]["action"] == exp["action"]
    h = msg["headers"]
    assert h.get("content-type") == "application/json"  # binary: = datacontenttype
    assert "ce_datacontenttype" not in h
    assert h.get("ce_specversion") == "1.0"
    assert h.get("ce_id") == exp["id"]
    assert h.get("ce_type") == ce_type
    assert h.get("ce_source") == ce["source"]


class Client:
    """A keep-alive HTTP connection per thread, posting signed webhooks; records every
    answer in a shared ledger as (id, status, seconds, sent_at)."""

    def __init__(self, d, ledger, lock):
        self.d, self.ledger, self.lock = d, ledger, lock
        self.local = threading.local()

    def post(self, body, wid):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self.d.conn(timeout=ANSWER_BOUND + 10)
        t0 = time.monotonic()
        try:
            r = self.d.post(body, conn=conn, timeout=ANSWER_BOUND + 10)
            status, retry_after = r.status, r.headers.get("retry-after")
        except OSError as e:  # a reset or timeout: a fresh connection next time
            conn.close()
            self.local.conn = None
            status, retry_after = "error: %s" % e, None
        took = time.monotonic() - t0
        with self.lock:
            self.ledger.append((wid, status, took, t0, retry_after))
        return status


# ---- tests --------------------------------------------------------------------------------

def test_check_connect_reaches_the_broker(kafka):
    """--check-connect asks the real broker for the cluster's metadata with the daemon's own
    producer configuration: 0 when reached, 1 (with what failed) for a wrong protocol."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALMABRIDGE_")}
    ok = subprocess.run([BIN, "--check-connect", "--sink", "kafka", "--kafka-brokers",
                         kafka.bootstrap, "--insecure-skip-signature"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok
    assert f"kafka brokers {kafka.bootstrap}: reached, 1 broker(s) in the cluster" in ok.stdout
    tls = subprocess.run([BIN, "--check-connect", "--sink", "kafka", "--kafka-brokers",
                          kafka.bootstrap, "--kafka-conf", "security.protocol=ssl",
                          "--insecure-skip-signature"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert tls.returncode == 1 and "NOT reached" in tls.stdout, tls


def test_samples_land_on_their_topics(kafka, bridge):
    """Every JSON sample and XML fixture, signed: 200, then on alma.<action> in binary mode
    (the default): ce_ headers, the data as value, key = partitionkey (the record)."""
    posted = []  # (name, expected)
    for name, body in samples():
        wid = new_id()
        b = with_id(body, wid)
        r = bridge.post(b)
        assert r.status == 200, (name, r)
        assert r.json()["id"] == wid
        posted.append((name, expected_from_json(b)))
    xml = xml_fixtures()
    assert xml, "no XML fixtures in tests/fixtures/xml"
    for name, body in xml:
        wid = new_id()
        b = xml_with_id(body, wid)
        r = bridge.post(b, content_type="application/xml")
        assert r.status == 200, (name + ".xml", r)
        posted.append((name + ".xml", expected_from_xml(b)))

    by_topic = {}
    for name, exp in posted:
        by_topic.setdefault("alma." + exp["action"].lower(), []).append((name, exp))
    for topic, items in by_topic.items():
        msgs = wait_for_ids(kafka, topic, [e["id"] for _, e in items])
        for name, exp in items:
            mine = [m for m in msgs if m["id"] == exp["id"]]
            assert len(mine) == 1, "%s: %d messages with id %s in %s" % (
                name, len(mine), exp["id"], topic)
            check_message(mine[0], exp)


def test_load_1000_webhooks_over_50_connections(kafka, bridge):
    """1,000 webhooks, 50 concurrent keep-alive connections: all 200, each id exactly once."""
    _, loan = next(s for s in samples() if s[0] == "loan_created")
    ids = [new_id() for _ in range(1000)]
    ledger, lock = [], threading.Lock()
    client = Client(bridge, ledger, lock)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        list(pool.map(lambda i: client.post(with_id(loan, i), i), ids))
    took = time.monotonic() - t0
    statuses = {}
    for _, st, _, _, _ in ledger:
        statuses[st] = statuses.get(st, 0) + 1
    assert statuses == {200: 1000}, statuses
    latencies = sorted(x[2] for x in ledger)
    print("\n1000 webhooks in %.2f s (%.0f/s), p50 %.1f ms, p99 %.1f ms"
          % (took, 1000 / took, latencies[500] * 1e3, latencies[990] * 1e3))
    msgs = wait_for_ids(kafka, "alma.loan", ids, timeout=30)
    counts = {}
    for m in msgs:
        counts[m["id"]] = counts.get(m["id"], 0) + 1
    missing = [i for i in ids if counts.get(i, 0) == 0]
    dups = [i for i in ids if counts.get(i, 0) > 1]
    assert not missing, "%d acknowledged ids missing, e.g. %s" % (len(missing), missing[:5])
    assert not dups, "%d ids more than once, e.g. %s" % (len(dups), dups[:5])


def test_route_template_and_no_key(kafka, tmp_path):
    """--route picks the topic from a template; --kafka-key "" sends messages without a key.
    /readyz names the brokers."""
    d = start_bridge(kafka, tmp_path, "--route", "custom.{institution}.{action}",
                     "--kafka-key", "", threads=1)
    try:
        ready = d.get("/readyz").json()
        assert ready["sink"] == "brokers %s: up" % kafka.bootstrap, ready
        _, loan = next(s for s in samples() if s[0] == "loan_created")
        wid = new_id()
        r = d.post(with_id(loan, wid))
        assert r.status == 200, r
        topic = "custom.01wrlc_amu.loan"
        deadline = time.monotonic() + 20
        mine = []
        while not mine and time.monotonic() < deadline:
            mine = [m for m in kafka.consume(topic) if m["id"] == wid]
            time.sleep(0.2)
        assert len(mine) == 1
        check_kafka_event(mine[0])
        assert mine[0]["key"] is None
        assert mine[0]["headers"]["ce_id"] == wid
    finally:
        stop_bridge(d)


def test_missing_topic_without_auto_create(kafka, tmp_path):
    """A topic that does not exist, on a broker that does not create it (simulated with the
    producer's allow.auto.create.topics=false): 503 within the ack timeout and a log line
    naming the topic."""
    d = start_bridge(kafka, tmp_path, "--route", "nosuch.{action}",
                     "--kafka-conf", "allow.auto.create.topics=false", threads=1)
    try:
        _, loan = next(s for s in samples() if s[0] == "loan_created")
        t0 = time.monotonic()
        r = d.post(with_id(loan, new_id()), timeout=ANSWER_BOUND + 5)
        took = time.monotonic() - t0
        assert r.status == 503, r
        assert r.headers.get("retry-after")
        assert took <= ANSWER_BOUND, took
        deadline = time.monotonic() + 5
        while "topic nosuch.loan" not in d.stderr() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = d.stderr()
        assert "delivery to topic nosuch.loan failed" in log, log[-3000:]
        assert "does not exist" in log
        assert "nosuch.loan" not in kafka.topics()
    finally:
        stop_bridge(d)


def test_broker_killed_and_restarted_under_load(kafka, tmp_path):
    """SIGKILL the broker while webhooks keep coming, then start it again: requests during
    the outage get 503 (none hangs: each is answered within ack timeout + 1 s), /readyz is
    503 while it is down and 200 after, the daemon recovers without a restart, and every id
    answered 200 is in the topic exactly once (ledger check)."""
    d = start_bridge(kafka, tmp_path)
    try:
        _under_load_kill(kafka, d)
    finally:
        stop_bridge(d)


def _under_load_kill(kafka, d):
    _, loan = next(s for s in samples() if s[0] == "loan_created")
    ledger, lock = [], threading.Lock()
    client = Client(d, ledger, lock)
    stop = threading.Event()

    def load():
        while not stop.is_set():
            wid = new_id()
            client.post(with_id(loan, wid), wid)
            time.sleep(0.01)

    threads = [threading.Thread(target=load) for _ in range(20)]
    try:
        for t in threads:
            t.start()
        time.sleep(2)
        t_kill = time.monotonic()
        kafka.kill()
        down_after = wait_status(d, "/readyz", 503, 10)
        time.sleep(ANSWER_BOUND + 1)  # a whole ack timeout of outage under load
        t_restart = time.monotonic()
        kafka.start()
        t_started = time.monotonic()
        up_after = wait_status(d, "/readyz", 200, 30)
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join()

    # New requests are 200 again, without restarting the daemon.
    after = [new_id() for _ in range(20)]
    for wid in after:
        r = d.post(with_id(loan, wid))
        assert r.status == 200, r

    statuses = {}
    for _, st, _, _, _ in ledger:
        statuses[st] = statuses.get(st, 0) + 1
    slowest = max(x[2] for x in ledger)
    # sent after the kill was noticed and answered before the broker was started again
    outage = [x for x in ledger if x[3] >= t_kill + 0.5 and x[3] + x[2] < t_restart]
    print("\nledger %s; /readyz 503 %.2f s after the kill, 200 %.2f s after the broker was "
          "up (restart took %.1f s); slowest answer %.2f s; %d requests during the outage"
          % (statuses, down_after, up_after, t_started - t_restart, slowest, len(outage)))
    assert set(statuses) <= {200, 503}, statuses
    assert slowest <= ANSWER_BOUND, "a request took %.2f s" % slowest
    assert statuses.get(503, 0) > 0
    assert all(x[4] for x in ledger if x[1] == 503), "503 without Retry-After"
    assert outage and all(x[1] == 503 for x in outage), "requests during the outage got 200?"

    acked = [x[0] for x in ledger if x[1] == 200] + after
    msgs = wait_for_ids(kafka, "alma.loan", acked, timeout=30)
    counts = {}
    for m in msgs:
        counts[m["id"]] = counts.get(m["id"], 0) + 1
    missing = [i for i in acked if counts.get(i, 0) == 0]
    assert not missing, "%d ids answered 200 are not in the topic, e.g. %s" % (
        len(missing), missing[:5])
    dups = [i for i in acked if counts.get(i, 0) > 1]
    assert not dups, "%d ids more than once, e.g. %s" % (len(dups), dups[:5])


# ---- issue 8 items 8, 9, 13 --------------------------------------------------------------

def _loan():
    return next(s for s in samples() if s[0] == "loan_created")[1]


def _find(kafka, topic, wid, timeout=20):
    """The messages of topic whose CloudEvent id is wid (waits until there is one)."""
    deadline = time.monotonic() + timeout
    while True:
        mine = [m for m in kafka.consume(topic) if m["id"] == wid]
        if mine or time.monotonic() > deadline:
            return mine
        time.sleep(0.2)


def test_key_is_the_record_unchanged(kafka, bridge):
    """The default key is the record's identity, the partitionkey "loan/<loan id>", with the
    id as sent (upper-case letters kept), so that one record's events share a partition."""
    wid = new_id()
    loan_id = "KS1-Ab" + new_id()
    body = json.loads(_loan())
    body["id"], body["item_loan"]["loan_id"] = wid, loan_id
    r = bridge.post(json.dumps(body).encode())
    assert r.status == 200, r
    mine = _find(kafka, "alma.loan", wid)
    assert len(mine) == 1
    assert mine[0]["key"] == "loan/" + loan_id
    assert mine[0]["headers"]["ce_partitionkey"] == "loan/" + loan_id
    assert mine[0]["headers"]["ce_subject"] == loan_id
    assert mine[0]["headers"]["ce_id"] == wid


def test_routes_become_legal_topic_names(kafka, tmp_path):
    """A route whose expansion Kafka would refuse as a topic name (':' from an institution
    code, more than 249 characters from an action) becomes a legal one, so the event is
    stored (200) instead of failing forever (item 8); a --route whose own text is illegal is
    refused at start-up."""
    d = start_bridge(kafka, tmp_path, "--route", "r8.{institution}.{action}", threads=1)
    try:
        body = json.loads(_loan())
        wid = new_id()
        body["id"] = wid
        body["institution"]["value"] = "01:AB"
        r = d.post(json.dumps(body).encode())
        assert r.status == 200, (r, d.stderr()[-2000:])
        mine = _find(kafka, "r8.01_ab.loan", wid)
        assert len(mine) == 1, kafka.topics()

        wid2 = new_id()
        body["id"] = wid2
        body["institution"]["value"] = "X"
        body["action"] = "A" * 300
        r = d.post(json.dumps(body).encode())
        assert r.status == 200, (r, d.stderr()[-2000:])
        long = [t for t in kafka.topics() if t.startswith("r8.x.aaaa")]
        assert len(long) == 1 and len(long[0]) == 249, long
        assert re.fullmatch(r"[a-z0-9._-]+-[0-9a-f]{8}", long[0])
        assert len(_find(kafka, long[0], wid2)) == 1
    finally:
        stop_bridge(d)
    p = subprocess.run([BIN, "--sink", "kafka", "--kafka-brokers", kafka.bootstrap, "--route",
                        "alma/{action}", "--insecure-skip-signature", "--check-config"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p
    assert "'/' cannot be in a Kafka topic name" in p.stderr, p.stderr


def test_structured_mode_is_pure(kafka, tmp_path):
    """--content-mode structured: content-type application/cloudevents+json, the JSON event
    as value and no ce_ header at all (a hybrid is taken for binary mode by auto-detecting
    readers, issue 22); the key is still the partitionkey."""
    d = start_bridge(kafka, tmp_path, "--content-mode", "structured", "--route", "r13.{action}",
                     threads=1)
    try:
        wid = new_id()
        r = d.post(with_id(_loan(), wid))
        assert r.status == 200, r
        mine = _find(kafka, "r13.loan", wid)
        assert len(mine) == 1
        h = mine[0]["headers"]
        assert h == {"content-type": "application/cloudevents+json"}, h
        ev = check_kafka_event(mine[0])  # the SDK reads it
        assert ev["id"] == wid and mine[0]["key"] == ev["partitionkey"] == "loan/6959825320004102"
    finally:
        stop_bridge(d)


# ---- issue 8 item 7: events larger than the cluster accepts ----------------------------

def _big(wid, size, compressible):
    """The loan sample with id wid and an extra field of about size bytes, random (does not
    compress) or repetitive (compresses well)."""
    import base64
    import os as _os
    body = json.loads(_loan())
    body["id"] = wid
    blob = (base64.b64encode(_os.urandom(size * 3 // 4)).decode() if not compressible
            else ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size])
    body["note"] = blob
    return json.dumps(body).encode()


def test_events_larger_than_the_cluster_accepts(kafka, tmp_path):
    """Item 7, against the real broker with a topic whose max.message.bytes is lowered to
    100000: an event that can never fit (300 kB that does not compress) gets 413 (not 503
    for ever) and a log line naming the limit and how to raise it; one that fits once
    compressed (300 kB of text) is stored (200); small events keep working (the refusal
    does not break the idempotent producer). On a default topic, an event over 1,000,000
    bytes (the old fixed producer limit) within --max-body is stored (200)."""
    kafka.create_topic("big.loan", config={"max.message.bytes": "100000"})
    d = start_bridge(kafka, tmp_path, "--route", "big.{action}", threads=1)
    try:
        assert d.post(with_id(_loan(), new_id())).status == 200  # the limit is read now
        deadline = time.monotonic() + 10
        while "topic big.loan accepts messages up to 100000 bytes" not in d.stderr():
            assert time.monotonic() < deadline, d.stderr()[-3000:]
            time.sleep(0.1)
        wid = new_id()
        r = d.post(_big(wid, 300000, compressible=False), timeout=ANSWER_BOUND + 5)
        assert r.status == 413, (r, d.stderr()[-3000:])
        assert "max.message.bytes" in r.json()["error"], r.json()
        log = d.stderr()
        assert "can never be written to topic big.loan" in log, log[-3000:]
        assert "at most 100000 bytes" in log and "--add-config max.message.bytes=" in log
        assert "brokers accept messages up to" in log  # discovered at start-up too
        text_id = new_id()
        r = d.post(_big(text_id, 300000, compressible=True))
        assert r.status == 200, (r, d.stderr()[-3000:])
        small = new_id()
        assert d.post(with_id(_loan(), small)).status == 200, d.stderr()[-3000:]
        got = {m["id"] for m in kafka.consume("big.loan")}
        assert text_id in got and small in got and wid not in got
    finally:
        stop_bridge(d)
    d = start_bridge(kafka, tmp_path, "--route", "huge.{action}", threads=1)
    try:
        wid = new_id()
        r = d.post(_big(wid, 1500000, compressible=True), timeout=ANSWER_BOUND + 5)
        assert r.status == 200, (r, d.stderr()[-3000:])
        assert len(_find(kafka, "huge.loan", wid)) == 1
    finally:
        stop_bridge(d)
