"""Horizontal scaling without containers: three almabridge replicas writing to one real
Kafka broker, behind a real HAProxy on loopback configured by the shipped
docker/haproxy.cfg (only its addresses replaced), under a steady load of signed webhooks.

During the load one replica gets SIGTERM (it drains: /readyz 503 for --drain-grace while
still serving, HAProxy takes it out, then it stops) and later another gets SIGKILL
(HAProxy's `retry-on conn-failure empty-response` + `option redispatch` send what could not
reach it to the survivor). Checked: no client sees anything but 200 before the SIGKILL (the
drain is invisible), at most one failed answer per client around the SIGKILL, and every
webhook answered 200 is a message in Kafka (the ledger).

The replicas run as the shipped deployments run them: probes and metrics on --admin-listen
(HAProxy checks that port, as docker/haproxy.cfg says), the public port answers them 404.

The rolling upgrade (docs/OPERATIONS.md, docker/upgrade.sh): each replica in turn is
stopped (SIGTERM: drain) and a new process started on the same ports and spool directory,
the next one only once HAProxy sees every replica UP again; under load, not one answer may
be anything but 200, and every 200 is in Kafka."""
import http.client
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from daemon import ROOT, Daemon, free_port, samples, sign, with_id
from services import KafkaBroker

HAPROXY_CFG = os.path.join(ROOT, "docker", "haproxy.cfg")
TOPIC = "alma.lbtest"
DRAIN_GRACE = 5  # almabridge's default; the shipped HAProxy checks must fit inside it
CLIENTS = 6
LOAN = dict(samples())["loan_created"]


@pytest.fixture(scope="module")
def kafka():
    broker = KafkaBroker()
    try:
        broker.start()
    except RuntimeError as e:  # never skipped: the test fails saying why
        pytest.fail("cannot start Apache Kafka for the load-balancer test: %s" % e)
    yield broker
    broker.close()


def lb_config(front, stats, replicas):
    """docker/haproxy.cfg with the lines marked `# test:` pointed at loopback."""
    out, marks = [], set()
    with open(HAPROXY_CFG) as f:
        for line in f.read().splitlines():
            m = re.search(r"#\s*test:\s*(\w+)", line)
            if not m:
                out.append(line)
                continue
            marks.add(m.group(1))
            if m.group(1) == "front":
                out.append(f"    bind 127.0.0.1:{front}")
            elif m.group(1) == "stats":
                out.append(f"    bind 127.0.0.1:{stats}")
            elif m.group(1) == "servers":
                # the shipped line checks the admin port (`check port 9090`): so do these
                assert "check port 9090" in line, line
                # (a replica without --admin-listen is checked on its own port)
                out += [f"    server r{i} 127.0.0.1:{d.port} check"
                        + (f" port {d.admin}" if getattr(d, "admin", None) else "")
                        for i, d in enumerate(replicas)]
    assert marks == {"front", "stats", "servers"}, marks
    return "\n".join(out) + "\n"


def server_states(stats_port):
    """{server name: status} from HAProxy's CSV stats ({} before it listens)."""
    c = http.client.HTTPConnection("127.0.0.1", stats_port, timeout=5)
    try:
        c.request("GET", "/stats;csv")
        rows = c.getresponse().read().decode().splitlines()
    except OSError:  # HAProxy not listening yet
        return {}
    finally:
        c.close()
    cols = rows[0].lstrip("# ").split(",")
    out = {}
    for row in rows[1:]:
        v = dict(zip(cols, row.split(",")))
        if v.get("pxname") == "almabridge" and v.get("svname") not in ("BACKEND", "FRONTEND"):
            out[v["svname"]] = v["status"]
    return out


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.1)


def admin_get(d, path):
    """GET path on replica d's admin port: (status, body), (0, "") while it does not listen."""
    c = http.client.HTTPConnection("127.0.0.1", d.admin, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    except OSError:
        return 0, ""
    finally:
        c.close()


def start_replica(kafka, tmpdir, topic, port=None, admin=None, spool=False, extra=(),
                  drain_grace=DRAIN_GRACE):
    """A replica as the shipped deployments run it: --admin-listen, and with spool its
    --spool in its directory. Given port and admin, on those (a replacement for a stopped
    replica). extra: more arguments."""
    admin = admin or free_port()
    args = ["--sink", "kafka", "--kafka-brokers", kafka.bootstrap, "--route", topic,
            "--trusted-proxy", "127.0.0.1", "--admin-listen", f"127.0.0.1:{admin}"]
    args += ["--spool", os.path.join(str(tmpdir), "spool")] if spool else []
    d = Daemon(args + list(extra) + (["--listen", f"127.0.0.1:{port}"] if port else []),
               tmpdir=str(tmpdir), threads=1, drain_grace=drain_grace)
    d.port = port or d.port
    d.admin = admin
    d.start(wait=False)
    wait_until(lambda: d.proc.poll() is None and admin_get(d, "/readyz")[0] == 200, 30,
               "a replica's admin /readyz")
    return d


def start_haproxy(tmp_path, replicas):
    """HAProxy with the shipped configuration in front of replicas, once it sees them all
    UP. Returns (process, front port, stats port)."""
    front, stats = free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(lb_config(front, stats, replicas))
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr
    lb_log = open(tmp_path / "haproxy.log", "wb")
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=lb_log,
                               stderr=subprocess.STDOUT)
    wait_until(lambda: list(server_states(stats).values()) == ["UP"] * len(replicas), 30,
               "HAProxy to see every replica UP")
    return haproxy, front, stats


def tear_down(load, haproxy, replicas):
    """Whatever a test leaves running: the load, HAProxy, the replicas (killed)."""
    if load:
        load.finish()
    if haproxy:
        haproxy.terminate()
        try:
            haproxy.wait(10)
        except subprocess.TimeoutExpired:
            haproxy.kill()
            haproxy.wait()
    for d in replicas:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def events_acked(d):
    return sum(int(float(n)) for n in re.findall(r"^almabridge_events_total\{[^}]*\} (\S+)$",
                                                   admin_get(d, "/metrics")[1], re.M))


def usage(d):
    """Peak resident memory and CPU time per 1000 acknowledged webhooks of a replica (the
    figures deploy/kubernetes's resource requests come from)."""
    with open(f"/proc/{d.proc.pid}/status") as f:
        status = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
    with open(f"/proc/{d.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    acked = events_acked(d)
    return (f"replica on the Kafka sink: peak RSS {status['VmHWM'].strip()}, "
            f"CPU {cpu:.2f} s for {acked} webhooks ({1000 * cpu / max(acked, 1):.2f} s/1000)")


class Load:
    """CLIENTS threads, each POSTing signed webhooks with fresh ids over one keep-alive
    connection to the load balancer (a new one after a network error). The ledger holds
    (id, status or 'error: ...', started, answered) for every request."""

    def __init__(self, port, secret):
        self.port, self.secret = port, secret
        self.ledger, self.lock, self.stop = [], threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i,)) for i in range(CLIENTS)]
        base = int(time.time() * 1000)
        self.ids = (f"{base}{i:02d}{n:05d}" for i in range(CLIENTS) for n in range(100000))
        self.ids_lock = threading.Lock()

    def client(self, i):
        conn = None
        deadline = time.monotonic() + 120  # bounded even if the test stalls
        n = 0
        while not self.stop.is_set() and time.monotonic() < deadline and n < 20000:
            n += 1
            with self.ids_lock:
                wid = next(self.ids)
            body = with_id(LOAN, wid)
            t0 = time.monotonic()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request("POST", "/webhook", body=body, headers={
                    "Content-Type": "application/json",
                    "X-Exl-Signature": sign(body, self.secret)})
                r = conn.getresponse()
                r.read()
                status = r.status
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                status = "error: %r" % e
                if conn:
                    conn.close()
                conn = None
            with self.lock:
                self.ledger.append((wid, status, t0, time.monotonic()))
            time.sleep(0.005)
        if conn:
            conn.close()

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def ok_count(self):
        with self.lock:
            return sum(1 for e in self.ledger if e[1] == 200)

    def wait_more_ok(self, n, timeout=60):
        target = self.ok_count() + n
        wait_until(lambda: self.ok_count() >= target, timeout, f"{n} more 200 answers")

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)
        return list(self.ledger)


def test_replicas_behind_haproxy_lose_nothing_when_one_drains_and_one_dies(kafka, tmp_path):
    kafka.create_topic(TOPIC, partitions=3)
    replicas = []
    haproxy = None
    load = None
    try:
        for i in range(3):
            (tmp_path / f"r{i}").mkdir()
            replicas.append(start_replica(kafka, tmp_path / f"r{i}", TOPIC))
        assert replicas[0].get("/readyz").status == 404  # only on the admin port

        haproxy, front, stats = start_haproxy(tmp_path, replicas)

        load = Load(front, replicas[0].secret).start()
        load.wait_more_ok(150)
        for d in replicas:  # round robin: every replica has taken its share
            assert events_acked(d) > 0

        # SIGTERM: /readyz 503 at once, HAProxy marks it DOWN within ~2 s, the replica
        # keeps serving until --drain-grace is over, then stops accepting and exits 0.
        replicas[0].proc.send_signal(signal.SIGTERM)
        wait_until(lambda: server_states(stats)["r0"].startswith("DOWN"), DRAIN_GRACE,
                   "HAProxy to take the draining replica out before its grace ends")
        assert replicas[0].proc.wait(DRAIN_GRACE + 30) == 0, replicas[0].stderr()[-3000:]
        load.wait_more_ok(100)

        # SIGKILL: nothing drains; connection failures are redispatched to the survivor.
        t_kill = time.monotonic()
        replicas[1].proc.kill()
        replicas[1].proc.wait()
        load.wait_more_ok(150)
        ledger = load.finish()
        load = None

        before = [e for e in ledger if e[3] < t_kill]
        bad = [e for e in before if e[1] != 200]
        assert not bad, f"{len(bad)} of {len(before)} answers before the SIGKILL were not 200: " \
                        f"{bad[:5]}\n{open(tmp_path / 'haproxy.log', errors='replace').read()[-3000:]}"
        after_bad = [e for e in ledger if e[3] >= t_kill and e[1] != 200]
        assert len(after_bad) <= CLIENTS, after_bad[:10]

        ok_ids = {e[0] for e in ledger if e[1] == 200}
        print(f"load balancer test: {len(ledger)} requests, {len(ok_ids)} answered 200, "
              f"{len(after_bad)} failed after the SIGKILL")
        deadline = time.monotonic() + 60
        while True:
            keys = {m["id"] for m in kafka.consume(TOPIC)}
            missing = ok_ids - keys
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not missing, f"{len(missing)} of {len(ok_ids)} webhooks answered 200 are not in " \
                            f"Kafka, e.g. {sorted(missing)[:5]}"
        assert len(ok_ids) >= 400
        print(usage(replicas[2]))
        assert replicas[2].stop() == 0
    finally:
        tear_down(load, haproxy, replicas)


def test_rolling_upgrade_behind_haproxy_refuses_nothing(kafka, tmp_path):
    """docker/upgrade.sh's procedure on loopback: one replica at a time is drained and
    replaced (same ports, same spool directory), the next only when HAProxy sees all UP."""
    topic = "alma.upgradetest"
    kafka.create_topic(topic, partitions=3)
    replicas, haproxy, load = [], None, None
    try:
        for i in range(3):
            (tmp_path / f"r{i}").mkdir()
            replicas.append(start_replica(kafka, tmp_path / f"r{i}", topic, spool=True))
        haproxy, front, stats = start_haproxy(tmp_path, replicas)
        all_up = lambda: list(server_states(stats).values()) == ["UP"] * 3  # noqa: E731
        load = Load(front, replicas[0].secret).start()
        load.wait_more_ok(100)
        t0 = time.monotonic()
        for i, old in enumerate(list(replicas)):
            old.proc.send_signal(signal.SIGTERM)  # what `docker compose up --force-recreate`
            assert old.proc.wait(DRAIN_GRACE + 30) == 0, old.stderr()[-3000:]  # does to one
            replicas[i] = start_replica(kafka, tmp_path / f"r{i}", topic, port=old.port,
                                        admin=old.admin, spool=True)
            wait_until(all_up, 30, f"HAProxy to see replica {i}'s successor UP")
            load.wait_more_ok(50)
        took = time.monotonic() - t0
        ledger = load.finish()
        load = None
        bad = [e for e in ledger if e[1] != 200]
        assert not bad, f"{len(bad)} of {len(ledger)} answers during the upgrade were not " \
                        f"200: {bad[:5]}\n{open(tmp_path / 'haproxy.log', errors='replace').read()[-3000:]}"
        ok_ids = {e[0] for e in ledger}
        print(f"rolling upgrade: 3 replicas replaced in {took:.1f} s under load, "
              f"{len(ledger)} requests, all 200")
        deadline = time.monotonic() + 60
        while (missing := ok_ids - {m["id"] for m in kafka.consume(topic)}) and \
                time.monotonic() < deadline:
            time.sleep(1)
        assert not missing, f"{len(missing)} of {len(ok_ids)} acknowledged webhooks not in Kafka"
        for d in replicas:
            assert d.stop() == 0, d.stderr()[-3000:]
    finally:
        tear_down(load, haproxy, replicas)
