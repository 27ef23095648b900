"""Deduplication across replicas under faults (issue 19): three almabridge replicas behind a
real HAProxy (docker/haproxy.cfg, as test_lb.py), the Kafka sink on a real broker, the spool
on, one Redis store shared by all. Each webhook id is sent 1 to 4 times to the load balancer
(so to random replicas), some copies together, some after the first was answered, at random
spacing; meanwhile one replica is SIGKILLed (and started again on its spool) and the broker
is killed for a while. Afterwards every id answered 200 is in the topic exactly once."""
import collections
import heapq
import http.client
import os
import random
import re
import signal
import subprocess
import threading
import time

import pytest

from daemon import Daemon, free_port, samples, sign, with_id
from services import RedisServer
from test_dedupe import stream_ids
from test_lb import kafka, lb_config, server_states, wait_until  # noqa: F401 (kafka: a fixture)

TOPIC = "alma.dedupe"
LOAN = dict(samples())["loan_created"]
# the e2e size; bench/dedupe_scale.py runs the same test with 100,000 ids through these
IDS = int(os.environ.get("ALMABRIDGE_DEDUPE_LB_IDS", "1500"))
LOAD_S = float(os.environ.get("ALMABRIDGE_DEDUPE_LB_SECONDS", "18"))
CLIENTS = int(os.environ.get("ALMABRIDGE_DEDUPE_LB_CLIENTS", "12"))


class Copies:
    """The plan: IDS ids over LOAD_S seconds, each sent 1-4 times: a copy goes out together
    with the first (within 5 ms) or after the first was answered (0.1-3 s later). CLIENTS
    threads send what is due over keep-alive connections to the load balancer."""

    def __init__(self, port, secret, seed=19):
        self.port, self.secret = port, secret
        self.rnd = random.Random(seed)
        self.heap, self.after = [], collections.defaultdict(int)
        self.cv = threading.Condition()
        self.answers = collections.defaultdict(list)
        base = int(time.time() * 1000) % 10**9
        t0 = time.monotonic() + 0.5
        for i in range(IDS):
            wid = "%d%05d" % (base, i)
            first = t0 + i * LOAD_S / IDS
            heapq.heappush(self.heap, (first, wid))
            for _ in range(self.rnd.randint(1, 4) - 1):
                if self.rnd.random() < 0.4:
                    heapq.heappush(self.heap, (first + self.rnd.random() * 0.005, wid))
                else:
                    self.after[wid] += 1
        self.outstanding = len(self.heap) + sum(self.after.values())
        self.threads = [threading.Thread(target=self.client) for _ in range(CLIENTS)]

    def next_due(self):
        with self.cv:
            while True:
                if self.outstanding == 0:
                    return None
                if self.heap and self.heap[0][0] <= time.monotonic():
                    return heapq.heappop(self.heap)[1]
                wait = self.heap[0][0] - time.monotonic() if self.heap else 0.5
                self.cv.wait(min(max(wait, 0.001), 0.5))

    def answered(self, wid, status):
        with self.cv:
            first = not self.answers[wid]
            self.answers[wid].append(status)
            self.outstanding -= 1
            if first:
                for _ in range(self.after.pop(wid, 0)):
                    heapq.heappush(self.heap, (time.monotonic() + 0.1 + self.rnd.random() * 2.9,
                                               wid))
            self.cv.notify_all()

    def client(self):
        conn = None
        deadline = time.monotonic() + LOAD_S + 60
        while time.monotonic() < deadline:
            wid = self.next_due()
            if wid is None:
                break
            body = with_id(LOAN, wid)
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request("POST", "/webhook", body=body, headers={
                    "Content-Type": "application/json", "X-Exl-Signature": sign(body, self.secret)})
                r = conn.getresponse()
                r.read()
                status = r.status
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                status = -1
                if conn:
                    conn.close()
                conn = None
            self.answered(wid, status)
        if conn:
            conn.close()

    def run(self):
        for t in self.threads:
            t.start()
        return self

    def join(self):
        for t in self.threads:
            t.join(LOAD_S + 90)
        return dict(self.answers)


def stop_all(haproxy, replicas):
    """Stop HAProxy and the replicas (SIGTERM, so that sanitizer builds report at exit)."""
    if haproxy:
        haproxy.terminate()
        haproxy.wait(10)
    for d in replicas:
        if d.proc and d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
            try:
                d.proc.wait(20)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()


def assert_sanitizers_quiet(replicas):
    for d in replicas:  # sanitizer builds report here
        err = d.stderr()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            assert marker not in err, err[-4000:]


def metric(d, name):
    m = re.search(r"^%s (\S+)$" % re.escape(name), d.metrics(), re.M)
    return float(m.group(1)) if m else 0


def spool_events(d):
    return metric(d, "almabridge_spool_events")


@pytest.mark.parametrize("sink", ["kafka", "redis"])
def test_each_id_answered_200_is_stored_once(kafka, tmp_path, sink):
    """kafka: the Redis store beside the broker. redis: the Redis sink and store on one
    server (claim and XADD in one script), and it is that server that is killed."""
    replicas, haproxy = [], None
    with RedisServer(appendonly=True, appendfsync="always") as redis:
        if sink == "kafka":
            kafka.create_topic(TOPIC, partitions=3)
            broker, where = kafka, ["--sink", "kafka", "--kafka-brokers", kafka.bootstrap]
        else:
            broker, where = redis, ["--sink", "redis", "--redis", redis.url]
        try:
            for i in range(3):
                (tmp_path / f"r{i}").mkdir()
                d = Daemon(where + ["--route", TOPIC, "--trusted-proxy", "127.0.0.1",
                                    "--dedupe-store", redis.url,
                                    "--spool", str(tmp_path / f"r{i}/spool"),
                                    "--spool-after", "1000", "--ack-timeout", "4000"],
                           tmpdir=str(tmp_path / f"r{i}"), threads=1)
                replicas.append(d.start())
            for d in replicas:
                wait_until(lambda d=d: d.get("/readyz", timeout=2).status == 200, 30,
                           "a replica's /readyz")
            front, stats = free_port(), free_port()
            cfg = tmp_path / "haproxy.cfg"
            cfg.write_text(lb_config(front, stats, replicas))
            haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)],
                                       stdout=open(tmp_path / "haproxy.log", "wb"),
                                       stderr=subprocess.STDOUT)
            wait_until(lambda: list(server_states(stats).values()) == ["UP"] * 3, 30,
                       "HAProxy to see the three replicas UP")

            load = Copies(front, replicas[0].secret).run()
            time.sleep(LOAD_S * 0.25)
            replicas[1].proc.send_signal(signal.SIGKILL)
            replicas[1].proc.wait()
            time.sleep(LOAD_S * 0.15)
            replicas[1].start()  # on its spool: what it answered 200 and spooled goes on
            time.sleep(LOAD_S * 0.1)
            broker.kill()
            time.sleep(LOAD_S * 0.3)
            broker.start()
            answers = load.join()

            ok = {w for w, st in answers.items() if 200 in st}
            sent = sum(len(st) for st in answers.values())
            for d in replicas:
                wait_until(lambda d=d: spool_events(d) == 0, 60, "the spools forwarded")
            deadline = time.monotonic() + 30
            while True:
                got = (collections.Counter(m["id"] for m in kafka.consume(TOPIC))
                       if sink == "kafka" else stream_ids(redis.port, TOPIC))
                if all(got[w] for w in ok) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            missing = [w for w in ok if got[w] == 0]
            twice = {w: got[w] for w in ok if got[w] > 1}
            dups = sum(float(v) for d in replicas for v in re.findall(
                r"^almabridge_dedupe_duplicates_total\{[^}]*\} (\S+)$", d.metrics(), re.M))
            spooled = sum(metric(d, "almabridge_spooled_total") for d in replicas)
            fwd = sum(metric(d, 'almabridge_dedupe_duplicates_total{cause="forwarder"}')
                      for d in replicas)
            print(f"\n{len(answers)} ids, {sent} requests, {len(ok)} ids answered 200, "
                  f"{sum(got.values())} messages, {dups:.0f} copies not written "
                  f"({fwd:.0f} by the forwarders), {spooled:.0f} spooled (counters: since "
                  f"each replica's last start)")
            assert spooled > 0  # the broker's outage was felt
            assert not missing, f"{len(missing)} ids answered 200 are not in Kafka: {missing[:5]}"
            assert not twice, f"{len(twice)} ids answered 200 are in Kafka more than once: " \
                              f"{list(twice.items())[:5]}"
            assert len(ok) >= 0.9 * IDS, collections.Counter(s for st in answers.values() for s in st)
        finally:
            stop_all(haproxy, replicas)
    assert_sanitizers_quiet(replicas)
