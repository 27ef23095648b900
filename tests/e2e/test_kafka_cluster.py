"""Deduplication on a real three-broker Kafka cluster (issue 19): three KRaft nodes
(tests/kafka/broker.py's KafkaCluster), the topic with replication factor 3 and
min.insync.replicas=2, two almabridge replicas behind HAProxy with the Kafka sink as it
ships (one idempotent producer per worker, acks=all: sinks/kafka.c), the spool on and one
Redis dedupe store. The load of test_dedupe_lb.py (each id sent 1 to 4 times, some copies
together, some after the first was answered); during it the broker leading every partition
is SIGKILLed, the load goes on while two brokers are in sync, and the broker is started
again and catches up. Checked: every id answered 200 is in the topic exactly once, no
answer is a 4xx, and each replica's /readyz (admin listener) answers 200 at every poll,
before, during and after the outage.

What makes it exactly once: the batches in flight when the leader dies are retried on the
new leader by the idempotent producer, which the new leader deduplicates by their sequence
numbers; an event spooled meanwhile (--spool-after) holds fwd:<key> in the store until that
answer, so the forwarder skips it. The spool gives the Kafka sink under it a deadline of its
own (AB_SINK_PATIENCE_MS, 5 min, librdkafka's message.timeout.ms), longer than --ack-timeout:
here --ack-timeout is 2 s and the failover takes longer (the nodes fence a dead broker after
2 s, broker.session.timeout.ms), so without that patience the batches in flight would fail
as "possibly persisted" and be forwarded a second time (docs/DEDUPLICATION.md)."""
import collections
import re
import threading
import time

import pytest

from daemon import wait_until
from services import KafkaCluster, RedisServer
from test_dedupe_lb import IDS, Copies, assert_sanitizers_quiet, metric, stop_all
from test_lb import admin_get, start_haproxy, start_replica

TOPIC = "alma.cluster"
REPLICAS = 2
ACK_TIMEOUT_MS = 2000
SESSION_TIMEOUT_MS = 2000


@pytest.fixture(scope="module")
def cluster():
    c = KafkaCluster(properties={"broker.session.timeout.ms": SESSION_TIMEOUT_MS})
    try:
        c.start()
    except RuntimeError as e:  # never skipped: the test fails saying why
        pytest.fail("cannot start a three-broker Kafka cluster: %s" % e)
    yield c
    c.close()


class Admin:
    """A replica's metrics as test_dedupe_lb.metric() reads them, from its admin port."""

    def __init__(self, d):
        self.d = d

    def metrics(self):
        return admin_get(self.d, "/metrics")[1]


class Watch(threading.Thread):
    """Polls each replica's /readyz every 0.1 s until stop(); samples holds (monotonic time,
    [(status, body)]). (The topic's in-sync replicas are the main thread's business: a
    metadata query can block for seconds while a broker is down, and must not leave a hole in
    the /readyz samples exactly during the outage.)"""

    def __init__(self, replicas):
        super().__init__(daemon=True)
        self.replicas = replicas
        self.samples, self.done = [], threading.Event()

    def run(self):
        while not self.done.is_set():
            self.samples.append((time.monotonic(), [admin_get(d, "/readyz")
                                                    for d in self.replicas]))
            self.done.wait(0.1)

    def stop(self):
        self.done.set()
        self.join(10)
        return self.samples


def ok_count(load):
    with load.cv:
        return sum(st.count(200) for st in load.answers.values())


def test_leader_sigkilled_under_load_each_200_once_and_ready(cluster, tmp_path):
    # Every partition led by one broker (the first of each replica list is the preferred
    # leader), so that one SIGKILL takes every leader away: one that is not the controller.
    leader = min(n.node_id for n in cluster.nodes if n.node_id != cluster.quorum_leader())
    a, b = [n.node_id for n in cluster.nodes if n.node_id != leader]
    parts = cluster.create_topic(TOPIC, assignment=[[leader, a, b], [leader, b, a], [leader, a, b]])
    assert all(len(p["isr"]) == 3 for p in parts.values()), parts
    replicas, haproxy, watch = [], None, None
    with RedisServer(appendonly=True, appendfsync="always") as redis:
        try:
            for i in range(REPLICAS):
                (tmp_path / f"r{i}").mkdir()
                replicas.append(start_replica(
                    cluster, tmp_path / f"r{i}", TOPIC, spool=True, drain_grace=0,
                    extra=["--dedupe-store", redis.url, "--ack-timeout", str(ACK_TIMEOUT_MS),
                           "--spool-after", "1000"]))
            haproxy, front, _ = start_haproxy(tmp_path, replicas)
            watch = Watch(replicas)
            watch.start()
            t0, t0_wall = time.monotonic(), time.time()
            load = Copies(front, replicas[0].secret).run()

            wait_until(lambda: ok_count(load) >= IDS // 5, 60, "a fifth of the load")
            leaders = {p["leader"] for p in cluster.partitions(TOPIC).values()}
            assert leaders == {leader}, leaders
            before = ok_count(load)
            cluster.kill(leader)
            t_kill = time.monotonic()
            wait_until(lambda: all(p["leader"] not in (-1, leader) and leader not in p["isr"]
                                   for p in cluster.partitions(TOPIC).values()), 30,
                       "new leaders, in sync without the killed broker")
            t_failover = time.monotonic()
            # the load goes on on two brokers
            wait_until(lambda: ok_count(load) >= before + IDS // 5, 60,
                       "200s while a broker is down")
            during = ok_count(load) - before
            cluster.restart(leader)
            t_back = time.monotonic()
            wait_until(lambda: all(len(p["isr"]) == 3 for p in cluster.partitions(TOPIC).values()),
                       60, "the restarted broker back in sync")
            t_sync = time.monotonic()
            answers = load.join()
            t_load = time.monotonic()
            for d in replicas:
                wait_until(lambda d=d: metric(Admin(d), "almabridge_spool_events") == 0, 60,
                           "the spools forwarded")
            samples = watch.stop()

            ok = {w for w, st in answers.items() if 200 in st}
            statuses = collections.Counter(s for st in answers.values() for s in st)
            deadline = time.monotonic() + 30
            while True:
                msgs = cluster.consume(TOPIC)
                got = collections.Counter(m["id"] for m in msgs)
                if all(got[w] for w in ok) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            missing = [w for w in ok if got[w] == 0]
            twice = [w for w in ok if got[w] > 1]
            dups = sum(float(v) for d in replicas for v in re.findall(
                r"^almabridge_dedupe_duplicates_total\{[^}]*\} (\S+)$", Admin(d).metrics(),
                re.M))
            spooled = sum(metric(Admin(d), "almabridge_spooled_total") for d in replicas)
            unconfirmed = sum(metric(Admin(d),
                                     'almabridge_spool_duplicates_total{cause="unconfirmed"}')
                              for d in replicas)
            not_ready = [(round(t - t_kill, 2), r) for t, r in samples
                         if any(st != 200 for st, _ in r)]
            outage = [s for s in samples if t_kill <= s[0] <= t_sync]
            print(f"\n{len(answers)} ids, {sum(statuses.values())} requests {dict(statuses)}, "
                  f"{len(ok)} ids answered 200, {len(msgs)} messages, {dups:.0f} copies not "
                  f"written, {spooled:.0f} spooled ({unconfirmed:.0f} unconfirmed); broker "
                  f"{leader} SIGKILLed at {t_kill - t0:.1f} s into the load, new leaders after "
                  f"{t_failover - t_kill:.1f} s, {during} 200s while it was down, restarted "
                  f"after {t_back - t_kill:.1f} s, in sync {t_sync - t_back:.1f} s later, "
                  f"load done at {t_load - t0:.1f} s; /readyz polled {len(samples)} times "
                  f"per replica ({len(outage)} during the outage), not 200: {len(not_ready)}")
            assert not [s for s in statuses if 400 <= s < 500], statuses
            assert not missing, f"{len(missing)} ids answered 200 are not in Kafka: {missing[:5]}"
            assert not twice, f"{len(twice)} ids answered 200 are in Kafka more than once: " + \
                "; ".join(f"{w} answered {answers[w]}, at " + ", ".join(
                    f"{m['partition']}/{m['offset']} (produced at "
                    f"{m['timestamp'] / 1000 - t0_wall:.2f} s)" for m in msgs if m["id"] == w)
                    for w in twice[:5])
            assert len(ok) >= 0.95 * IDS, statuses
            assert len(outage) >= 5, f"/readyz was polled {len(outage)} times during the outage"
            assert not not_ready, f"/readyz not 200 (s after the kill): {not_ready[:5]}"
        finally:
            if watch:
                watch.stop()
            stop_all(haproxy, replicas)
    assert_sanitizers_quiet(replicas)
    for d in replicas:
        assert d.proc.returncode == 0, d.stderr()[-3000:]
