"""Issue 22: almabridge's Kafka messages read by clients nobody here wrote, from a real topic,
in both content modes: the CloudEvents SDK for Python 1.x (from_binary / from_structured) and
2.x (the auto-detecting from_kafka_event(), in its own venv), Go
(github.com/cloudevents/sdk-go/v2 with its kafka_sarama binding, tests/sdk/go, built here with
the machine's go) and Java (io.cloudevents:cloudevents-kafka, tests/sdk/java, built here with
Maven from .cache/m2); plus kcat, confluent-kafka and kafka-python (gzip without extras).
Every event of every fixture (JSON and XML) must come out with every attribute and its data
intact: equal to the event the structured topic holds as its value."""
import datetime
import json
import os
import re
import shutil
import subprocess

import pytest

from daemon import ROOT, Daemon, go_build, samples, wait_until, with_id, xml_fixtures
from jobs import new_id
from services import KafkaBroker

MODES = ["binary", "structured"]
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EXAMPLES_PYTHON = os.path.join(ROOT, ".cache", "venv-examples", "bin", "python3")
SDK = os.path.join(ROOT, "tests", "sdk")


def xml_with_new_id(body, wid):
    return re.sub(rb"<((?:\w+:)?id)>[^<]*</\1>", b"<\\1>" + wid.encode() + b"</\\1>", body,
                  count=1)


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    """Every fixture posted (with the same ids and trace context) to a topic per mode;
    yields (broker, {id: the expected event})."""
    bodies = [(with_id(b, new_id()), "application/json") for _, b in samples()]
    bodies += [(xml_with_new_id(b, new_id()), "application/xml") for _, b in xml_fixtures()]
    with KafkaBroker() as kafka:
        for mode in MODES:
            kafka.create_topic("sdk." + mode, partitions=3)
            d = Daemon(["--sink", "kafka", "--kafka-brokers", kafka.bootstrap, "--route",
                        "sdk." + mode, "--content-mode", mode],
                       tmpdir=str(tmp_path_factory.mktemp(mode))).start()
            try:
                wait_until(lambda: d.get("/readyz").status == 200, 30, "readyz")
                for body, ctype in bodies:
                    r = d.post(body, content_type=ctype,
                               headers={"traceparent": TP, "tracestate": "k=v"})
                    assert r.status == 200, r
            finally:
                assert d.stop() == 0
        msgs = kafka.consume("sdk.structured", count=len(bodies), timeout=30)
        expected = {}
        for m in msgs:
            ev = json.loads(m["value"])
            expected[ev["id"]] = ev
        assert len(expected) == len(bodies)
        yield kafka, expected


def norm(attrs, data):
    """An event as comparable values: attributes as strings (time parsed: SDKs print it
    their own way), data as parsed JSON."""
    out = {}
    for k, v in attrs.items():
        if k == "time":
            v = datetime.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
        out[k] = v.decode() if isinstance(v, bytes) else v
    return out, data


def check_all(expected, got, who):
    """got: [(key, attributes, data)] read by a client; one per expected event, intact."""
    assert len(got) == len(expected), (who, len(got), len(expected))
    for key, attrs, data in got:
        want = expected[attrs["id"]]
        w_attrs, w_data = norm({k: v for k, v in want.items() if k != "data"}, want["data"])
        g_attrs, g_data = norm(attrs, data)
        assert g_attrs == w_attrs, (who, attrs["id"], set(g_attrs.items()) ^ set(w_attrs.items()))
        assert g_data == w_data, (who, attrs["id"])
        assert key == want["partitionkey"], (who, key)
        assert "traceparent" in g_attrs and g_attrs["traceparent"] == TP


def headers_of(m):
    return {k: v for k, v in (m.headers() or [])}


@pytest.mark.parametrize("mode", MODES)
def test_kcat(topics, mode):
    kafka, expected = topics
    msgs = kafka.consume("sdk." + mode)  # kcat -C -J
    check_all(expected, [(m["key"], {k: v for k, v in m["event"].items() if k != "data"},
                          m["event"]["data"]) for m in msgs], "kcat")
    for m in msgs:
        has_ce = any(h.startswith("ce_") for h in m["headers"])
        assert has_ce == (mode == "binary"), m["headers"]  # no hybrid


def read_confluent(bootstrap, topic):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "sdk-test",
                  "enable.auto.commit": False})
    tps, left = [], 0
    for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        left += hi - lo
        tps.append(TopicPartition(topic, p, lo))
    c.assign(tps)
    out = []
    while left > 0:
        m = c.poll(10)
        assert m is not None, "confluent-kafka: no message"
        if m.error():
            continue
        out.append(m)
        left -= 1
    c.close()
    return out


@pytest.mark.parametrize("mode", MODES)
def test_confluent_kafka_and_python_sdk_1(topics, mode):
    import cloudevents
    import cloudevents.kafka
    assert cloudevents.__version__.startswith("1."), cloudevents.__version__
    kafka, expected = topics
    got = []
    for m in read_confluent(kafka.bootstrap, "sdk." + mode):
        key = m.key().decode()
        if mode == "binary":
            ev = cloudevents.kafka.from_binary(cloudevents.kafka.KafkaMessage(
                headers=headers_of(m), key=key, value=m.value()))
        else:  # 1.x lets the content-type header replace datacontenttype: pass none
            ev = cloudevents.kafka.from_structured(cloudevents.kafka.KafkaMessage(
                headers={}, key=key, value=m.value()))
        got.append((key, ev.get_attributes(), ev.get_data()))
    check_all(expected, got, "python sdk 1.x")


@pytest.mark.parametrize("mode", MODES)
def test_python_sdk_2_auto_detection(topics, mode):
    assert os.access(EXAMPLES_PYTHON, os.X_OK), "run make setup-test (examples/requirements.txt)"
    kafka, expected = topics
    p = subprocess.run([EXAMPLES_PYTHON, os.path.join(SDK, "ce2_read.py"), kafka.bootstrap,
                        "sdk." + mode], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    v = subprocess.run([EXAMPLES_PYTHON, "-c", "import cloudevents; print(cloudevents.__version__)"],
                       capture_output=True, text=True).stdout.strip()
    assert v.startswith("2."), v
    lines = [json.loads(l) for l in p.stdout.splitlines()]
    check_all(expected, [(l["key"], l["attributes"], l["data"]) for l in lines], "python sdk 2.x")


@pytest.mark.parametrize("mode", MODES)
def test_kafka_python_reads_gzip_without_extras(topics, mode):
    import kafka as kafka_python
    from kafka import KafkaConsumer, TopicPartition
    broker, expected = topics
    topic = "sdk." + mode
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                      consumer_timeout_ms=10000)
    parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    left = sum(c.end_offsets(parts).values())
    got = []
    for m in c:
        h = {k: v.decode() for k, v in m.headers}
        if mode == "binary":
            attrs = {k[3:]: v for k, v in h.items() if k.startswith("ce_")}
            attrs["datacontenttype"] = h["content-type"]
            data = json.loads(m.value)
        else:
            ev = json.loads(m.value)
            data = ev.pop("data")
            attrs = ev
        got.append((m.key.decode(), attrs, data))
        left -= 1
        if left == 0:
            break
    c.close()
    check_all(expected, got, "kafka-python %s" % kafka_python.__version__)


def go_binary(tmp_path):
    return go_build(tmp_path, ".", "ce_read")


@pytest.mark.parametrize("mode", MODES)
def test_go_sdk(topics, tmp_path, mode):
    kafka, expected = topics
    p = subprocess.run([go_binary(tmp_path), kafka.bootstrap, "sdk." + mode],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got = []
    for l in p.stdout.splitlines():
        j = json.loads(l)
        assert j["mode"] == ("binary" if mode == "binary" else "structured"), j["mode"]
        ev = j["event"]
        # in binary mode the sarama binding adds where it read the message from: not ours
        added = {"data", "kafkatopic", "kafkapartition", "kafkaoffset"}
        assert ev.get("kafkatopic", "sdk." + mode) == "sdk." + mode
        got.append((j["key"], {k: v for k, v in ev.items() if k not in added}, ev["data"]))
    check_all(expected, got, "sdk-go")


@pytest.fixture(scope="module")
def java_classpath():
    mvn = shutil.which("mvn")
    assert mvn, "mvn missing: make setup-test installs maven"
    d = os.path.join(SDK, "java")
    p = subprocess.run([mvn, "-q", "-B", "-Dstyle.color=never",
                        "-Dmaven.repo.local=" + os.path.join(ROOT, ".cache", "m2"), "compile",
                        "dependency:build-classpath", "-Dmdep.outputFile=target/cp.txt"],
                       cwd=d, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    with open(os.path.join(d, "target", "cp.txt")) as f:
        return os.path.join(d, "target", "classes") + ":" + f.read().strip()


@pytest.mark.parametrize("mode", MODES)
def test_java_sdk(topics, java_classpath, mode):
    kafka, expected = topics
    p = subprocess.run(["java", "-cp", java_classpath, "CeRead", kafka.bootstrap, "sdk." + mode],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    got = []
    for l in p.stdout.splitlines():
        if not l.startswith("{"):
            continue
        j = json.loads(l)
        ev = j["event"]
        got.append((j["key"], {k: v for k, v in ev.items() if k != "data"}, ev["data"]))
    check_all(expected, got, "sdk-java")
