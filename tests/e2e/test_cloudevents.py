"""Issue 22 end to end: redaction for every sink and the log, the trace context, the record's
identity and dataschema, against the file sink, a real Kafka broker and a real Redis server,
in both content modes."""
import json
import re
import subprocess

import pytest

from daemon import BIN, Daemon, samples, wait_until, xml_fixtures
from services import RedisServer

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ALL = [(n + ".json", b, "application/json") for n, b in samples()] + \
      [(n + ".xml", b, "application/xml") for n, b in xml_fixtures()]
WITH_PIN = [n for n, b, _ in ALL if b"pin_number" in b]


@pytest.fixture(scope="module")
def kafka(kafka_broker):
    return kafka_broker


@pytest.fixture(scope="module")
def redis():
    with RedisServer() as r:
        yield r


def post_all(d):
    for name, body, ctype in ALL:
        r = d.post(body, content_type=ctype)
        assert r.status == 200, (name, r)


def daemon(tmp_path, *args):
    tmp_path.mkdir(parents=True, exist_ok=True)
    d = Daemon(["--log-level", "debug", "--log-bodies", *args], tmpdir=str(tmp_path)).start()
    wait_until(lambda: d.get("/readyz").status == 200, 30, "readyz")
    return d


def stop(d):
    assert d.stop() == 0, d.stderr()[-3000:]
    return d.stderr()


def test_fixtures_carry_pins():
    assert len(WITH_PIN) >= 4, WITH_PIN  # user and notification, JSON and XML: a real test


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_no_pin_reaches_any_sink_or_the_log(tmp_path, kafka, redis, mode):
    """Every fixture (JSON and XML) through the file, Kafka and Redis sinks with the default
    --redact, --log-bodies at debug level: no pin_number and no password member anywhere."""
    outputs = []
    d = daemon(tmp_path / "file", "--sink", "file")
    post_all(d)
    outputs.append(open(d.file, "rb").read())
    log = stop(d)
    topic = "redact.%s.{action}" % mode
    d = daemon(tmp_path / "kafka", "--sink", "kafka", "--kafka-brokers", kafka.bootstrap,
               "--route", topic, "--content-mode", mode)
    post_all(d)
    log += stop(d)
    actions = {json.loads(b)["action"].lower() for n, b, _ in ALL if n.endswith(".json")}
    for a in actions:
        for m in kafka.consume(topic.replace("{action}", a)):
            outputs.append(m["value"] + json.dumps(m["headers"]).encode())
    d = daemon(tmp_path / "redis", "--sink", "redis", "--redis", redis.url,
               "--route", "redact:%s:{action}" % mode, "--content-mode", mode)
    post_all(d)
    log += stop(d)
    for key in redis.cli("KEYS", "redact:%s:*" % mode).split():
        outputs.append(redis.cli("XRANGE", key, "-", "+").encode())
    assert len(outputs) > 10
    for out in outputs:
        assert b"pin_number" not in out and b'"password"' not in out
    assert "pin_number" not in log and '"password"' not in log
    assert "body from" in log  # --log-bodies did log the (redacted) bodies
    # the user's other data is still there: only the named members went
    assert any(b"Jane Q Doe" in o for o in outputs)


def test_redact_paths_and_none(tmp_path):
    user = dict(samples())["user_update"]
    d = daemon(tmp_path / "a", "--redact", "$.webhook_user.user.contact_info",
               "--redact", "$..full_name")
    assert d.post(user).status == 200
    ev = d.events()[-1]
    stop(d)
    u = ev["data"]["webhook_user"]["user"]
    assert "contact_info" not in u and "full_name" not in u
    assert u["pin_number"] == "0000"  # given paths replace the default
    d = daemon(tmp_path / "b", "--redact", "none")
    assert d.post(user).status == 200
    assert d.events()[-1]["data"] == json.loads(user)
    stop(d)
    p = subprocess.run([BIN, "--insecure-skip-signature", "--redact", "pin_number",
                        "--check-config"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--redact" in p.stderr and "JSON path" in p.stderr, p


def test_trace_context_identity_and_schema(tmp_path, kafka):
    d = daemon(tmp_path, "--sink", "kafka", "--kafka-brokers", kafka.bootstrap,
               "--route", "trace.{action}", "--dead-letter", "off")  # {} answered 422
    loan = dict(samples())["loan_created"]
    r = d.post(loan, headers={"traceparent": TP, "tracestate": "congo=t61rcWkgMzE"})
    assert r.status == 200
    r = d.post(loan.replace(b"4729646413727017106", b"4729646413727017107"))  # no header
    assert r.status == 200
    r = d.post(b"{}", headers={"traceparent": "00-bad"})  # 422, still a trace id
    assert r.status == 422
    log = stop(d)
    msgs = kafka.consume("trace.loan", count=2)
    by_id = {m["id"]: m for m in msgs}
    carried = by_id["4729646413727017106"]["headers"]
    assert carried["ce_traceparent"] == TP and carried["ce_tracestate"] == "congo=t61rcWkgMzE"
    new = by_id["4729646413727017107"]["headers"]["ce_traceparent"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", new) and new != TP
    access = [l for l in log.splitlines() if " access" in l and "status=" in l]
    assert any("trace_id=" + TP[3:35] in l and "id=4729646413727017106" in l for l in access)
    assert any("trace_id=" + new[3:35] in l and "id=4729646413727017107" in l for l in access)
    assert any("status=422" in l and re.search(r"trace_id=[0-9a-f]{32}", l) for l in access)
    for m in msgs:
        h = m["headers"]
        assert h["ce_subject"] == "6959825320004102" and m["key"] == "loan/6959825320004102"
        assert h["ce_partitionkey"] == m["key"]
        assert h["ce_dataschema"] == "urn:almabridge:schemas:1:loan.json"
