"""Per-record order (issue 22): a topic of 12 partitions, many records (loans), each updated
several times in sequence the way Alma does it (the next update only after the previous
one was answered 200; a 503 is retried), the broker killed for a few seconds in the middle
of the run, with the spool off and on. Each record's events must be consumed in the order
they were answered 200: the default key (the partitionkey, `loan/<loan id>`) puts them in
one partition, and with the spool a new event queues behind what is spooled instead of
overtaking it to the broker."""
import json
import threading
import time

import pytest

from daemon import Daemon, samples, wait_until
from jobs import new_id

RECORDS = 36
UPDATES = 12
PACE_S = 0.5  # between a record's updates: records still change after the broker is back
TOPIC = "order.loan"
LOAN = json.loads(dict(samples())["loan_created"])


@pytest.fixture(scope="module")
def kafka(kafka_broker):
    return kafka_broker


def metric(d, name):
    lines = [l for l in d.metrics().splitlines() if l.startswith(name + " ")]
    return float(lines[0].split()[1]) if lines else 0.0


def update(loan_id, version):
    body = dict(LOAN, id=new_id())
    body["item_loan"] = dict(LOAN["item_loan"], loan_id=loan_id, process_status="V%d" % version)
    return body["id"], json.dumps(body).encode()


def run_record(d, loan_id, answered, deadline):
    """Post UPDATES updates of one loan, each retried until 200; records the webhook ids in
    the order they were answered 200."""
    for v in range(UPDATES):
        wid, body = update(loan_id, v)
        while True:
            assert time.monotonic() < deadline, "no 200 for %s v%d in time" % (loan_id, v)
            try:
                r = d.post(body, timeout=10)
                if r.status == 200:
                    break
                assert r.status == 503, r
            except OSError:
                pass
            time.sleep(0.1)
        answered.append(wid)
        time.sleep(PACE_S)


@pytest.mark.parametrize("spool", [False, True], ids=["no-spool", "spool"])
def test_each_records_events_in_the_order_answered(kafka, tmp_path, spool):
    topic = TOPIC + (".spool" if spool else "")
    kafka.create_topic(topic, partitions=12)
    args = ["--sink", "kafka", "--kafka-brokers", kafka.bootstrap, "--route", topic]
    if spool:
        args += ["--spool", str(tmp_path / "spool")]
    d = Daemon(args, tmpdir=str(tmp_path)).start()
    try:
        wait_until(lambda: d.get("/readyz").status == 200, 30, "readyz")
        records = {"L%s" % new_id(): [] for _ in range(RECORDS)}
        deadline = time.monotonic() + 120
        threads = [threading.Thread(target=run_record, args=(d, rid, ans, deadline))
                   for rid, ans in records.items()]
        for t in threads:
            t.start()
        wait_until(lambda: sum(map(len, records.values())) >= RECORDS * UPDATES // 4, 60,
                   "a quarter of the updates")
        kafka.kill()  # mid-run
        time.sleep(3)
        kafka.start()
        for t in threads:
            t.join(130)
        assert all(len(a) == UPDATES for a in records.values()), records
        spooled = metric(d, "almabridge_spooled_total")
        if spool:  # forwarded before the daemon stops (else the next start forwards them)
            wait_until(lambda: metric(d, "almabridge_spool_events") == 0, 60, "spool drained")
    finally:
        assert d.stop() == 0, d.stderr()[-3000:]
    if spool:
        assert spooled > 0, spooled  # the spool was used
    want = {"loan/" + rid: ans for rid, ans in records.items()}
    seen = {}
    deadline = time.monotonic() + 60
    while True:
        msgs = kafka.consume(topic)
        ids = {m["id"] for m in msgs}
        if all(set(a) <= ids for a in want.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    partitions = {}
    for m in msgs:  # sorted by (partition, offset): per key, the order consumers see
        seen.setdefault(m["key"], [])
        if m["id"] not in seen[m["key"]]:  # a duplicate (at least once) repeats an earlier id
            seen[m["key"]].append(m["id"])
        partitions.setdefault(m["key"], set()).add(m["partition"])
    for key, ans in want.items():
        assert seen.get(key) == ans, (key, seen.get(key), ans)
        assert len(partitions[key]) == 1, (key, partitions[key])
    assert len({p for ps in partitions.values() for p in ps}) > 6  # spread over partitions
