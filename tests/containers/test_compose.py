"""The compose stacks as a user runs them (run by tests/containers/run.sh, `make
test-containers`, which provides the engine and the images).

Kafka (docker/compose.yaml): three almabridge replicas (almabridge-1..3, each with its own
named volume for its spool) behind HAProxy; the replicas' HEALTHCHECK (`almabridge
--probe`, on the admin port) turns healthy; /readyz and /metrics are not reachable through
the load balancer; under load, docker/upgrade.sh replaces every replica one at a time and
no client sees anything but 200; then one replica is stopped (SIGTERM: drain) and another
killed (SIGKILL); every webhook answered 200 is read back from the HOST through Kafka's
second listener (the ledger), and the `events` consumer service prints them.

Redis (docker/compose.redis.yaml): the replicas write to the stream through the Redis sink;
Redis is restarted while webhooks keep coming: every one is answered 200 (the spool takes
them) and every one ends up in the stream, which `events` prints."""
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

from daemon import free_port, samples, sign, with_id  # noqa: E402
from test_lb import CLIENTS, Load, server_states, wait_until  # noqa: E402

COMPOSE = os.environ.get("ALMABRIDGE_COMPOSE", "docker compose").split()
SECRET = "container-test-secret"
LOAN = dict(samples())["loan_created"]


class Stack:
    """One compose project, on free host ports, taken down (volumes too) at the end."""

    def __init__(self, tmp, project, compose_file):
        self.project, self.file = project, os.path.join(ROOT, "docker", compose_file)
        self.port, self.stats, self.kafka_port = free_port(), free_port(), free_port()
        secrets = tmp / "secrets.txt"
        secrets.write_text("# one secret per line\n" + SECRET + "\n")
        secrets.chmod(0o644)  # read by the image's unprivileged user
        self.env = dict(os.environ, ALMABRIDGE_PORT=str(self.port),
                        ALMABRIDGE_STATS_PORT=str(self.stats),
                        KAFKA_HOST_PORT=str(self.kafka_port),
                        ALMABRIDGE_SECRETS_FILE=str(secrets))

    def compose(self, *args, timeout=900, check=True):
        p = subprocess.run(COMPOSE + ["-p", self.project, "-f", self.file, *args], cwd=ROOT,
                           env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            pytest.fail(f"{' '.join(COMPOSE)} {' '.join(args)} failed ({p.returncode}):\n"
                        f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return p

    def up(self, replicas=3):
        self.compose("down", "-v", "--remove-orphans", check=False)
        self.compose("up", "-d", "--build")
        wait_until(lambda: self.up_count() == replicas, 240,
                   f"HAProxy to see {replicas} replicas UP\n{self.logs()}")

    def up_count(self):
        return sum(s == "UP" for s in server_states(self.stats).values())

    def replicas(self):
        """{container id: docker's status line} of the almabridge-N services."""
        out = subprocess.run(
            ["docker", "ps", "--filter", f"label=com.docker.compose.project={self.project}",
             "--format", '{{.ID}} {{.Label "com.docker.compose.service"}} {{.Status}}'],
            capture_output=True, text=True, check=True)
        rows = (line.split(" ", 2) for line in out.stdout.splitlines())
        return {cid: status for cid, svc, status in rows if svc.startswith("almabridge-")}

    def upgrade(self):
        """docker/upgrade.sh on this stack; returns (exit code, output, seconds)."""
        t0 = time.monotonic()
        p = subprocess.run([os.path.join(ROOT, "docker", "upgrade.sh"), "-f", self.file, "-p",
                            self.project], cwd=ROOT, env=dict(self.env,
                           ALMABRIDGE_COMPOSE=" ".join(COMPOSE)), capture_output=True, text=True,
                           timeout=900)
        return p.returncode, p.stdout + p.stderr, time.monotonic() - t0

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def logs(self, service=None, whole=False):
        """The service's (or every service's) log; the last lines unless whole."""
        args = ["logs", "--no-color"] + ([service] if service else [])
        p = self.compose(*args, check=False, timeout=120)
        return p.stdout + p.stderr if whole else p.stdout[-6000:] + p.stderr[-2000:]

    def down(self):
        self.compose("down", "-v", "--remove-orphans", "--timeout", "30", check=False)

    def post(self, body):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            c.request("POST", "/webhook", body=body, headers={
                "Content-Type": "application/json", "X-Exl-Signature": sign(body, SECRET)})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


def test_kafka_stack_scaled_behind_haproxy_keeps_every_acknowledged_event(tmp_path):
    st = Stack(tmp_path, "abtest-kafka", "compose.yaml")
    load = None
    try:
        st.up(3)
        # the image's HEALTHCHECK is `almabridge --probe` (GET /readyz on --admin-listen)
        wait_until(lambda: all("(healthy)" in s for s in st.replicas().values())
                   and len(st.replicas()) == 3, 120, f"healthy replicas: {st.replicas()}")
        # the admin port is not published through the load balancer
        for path in ("/readyz", "/healthz", "/metrics"):
            assert st.get(path)[0] == 404, path
        volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter",
                                  f"label=com.docker.compose.project={st.project}"],
                                 capture_output=True, text=True, check=True).stdout.split()
        for n in (1, 2, 3):  # each replica's spool on a named volume of its own
            assert f"{st.project}_almabridge-{n}-data" in volumes, volumes
        # the first event creates the topic (auto-create): 503 until it exists, retried as
        # Alma would (sooner)
        deadline = time.monotonic() + 60
        while (r := st.post(with_id(LOAN, "9000000000000000001")))[0] != 200:
            assert r[0] == 503 and time.monotonic() < deadline, r
            time.sleep(1)

        load = Load(st.port, SECRET).start()
        load.wait_more_ok(150, timeout=120)
        # the upgrade, under load: every replica replaced, one at a time, nothing refused
        old_ids = set(st.replicas())
        rc, out, took = st.upgrade()
        assert rc == 0, out[-4000:]
        assert not old_ids & set(st.replicas()), "a replica was not replaced"
        with load.lock:
            during = list(load.ledger)
        bad = [e for e in during if e[1] != 200]
        assert not bad, f"{len(bad)} of {len(during)} answers up to the end of the upgrade " \
                        f"were not 200: {bad[:5]}\n{out[-2000:]}\n{st.logs('lb')}"
        print(f"compose/Kafka: docker/upgrade.sh replaced 3 replicas in {took:.0f} s under "
              f"load, {len(during)} answers so far, all 200")
        wait_until(lambda: st.up_count() == 3, 120, "3 replicas UP after the upgrade")
        # a fresh load (the clients stop on their own after two minutes)
        upgrade_ledger = load.finish()
        load = Load(st.port, SECRET).start()
        load.wait_more_ok(100, timeout=120)
        ids = sorted(st.replicas())
        # SIGTERM (docker stop): /readyz 503, HAProxy takes it out, it drains and exits
        stopper = threading.Thread(target=subprocess.run,
                                   args=(["docker", "stop", "-t", "30", ids[0]],),
                                   kwargs={"capture_output": True})
        stopper.start()
        stopper.join(60)
        load.wait_more_ok(100, timeout=120)
        t_kill = time.monotonic()
        subprocess.run(["docker", "kill", ids[1]], check=True, capture_output=True)
        load.wait_more_ok(150, timeout=120)
        ledger = load.finish()
        load = None
        assert all(e[1] == 200 for e in upgrade_ledger)
        ledger = upgrade_ledger + ledger

        before = [e for e in ledger if e[3] < t_kill]
        bad = [e for e in before if e[1] != 200]
        assert not bad, f"{len(bad)} of {len(before)} answers before the kill were not 200: " \
                        f"{bad[:5]}\n{st.logs('lb')}"
        after_bad = [e for e in ledger if e[3] >= t_kill and e[1] != 200]
        assert len(after_bad) <= CLIENTS, after_bad[:10]

        # the ledger, read from the host through Kafka's EXTERNAL listener
        ok = {e[0] for e in ledger if e[1] == 200} | {"9000000000000000001"}
        deadline = time.monotonic() + 90
        while True:
            p = subprocess.run(["kcat", "-C", "-b", f"127.0.0.1:{st.kafka_port}", "-t", "alma.loan",
                                "-o", "beginning", "-e", "-q", "-f", "%h\n"],
                               capture_output=True, text=True, timeout=60)
            # the key is the record's identity; the webhook id is the ce_id header
            ids = set(re.findall(r"(?:^|,)ce_id=([^,\s]+)", p.stdout, re.M))
            missing = ok - ids
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert not missing, f"{len(missing)} of {len(ok)} webhooks answered 200 are not in " \
                            f"Kafka: {sorted(missing)[:5]}\n{p.stderr[-2000:]}"
        print(f"compose/Kafka: {len(ledger)} requests through HAProxy, {len(ok)} answered 200, "
              f"all in Kafka; {len(after_bad)} failed after the kill")

        # the consumer service shows them: every one, the record key first on each line,
        # then the value (binary mode: the webhook itself, with its id)
        def printed():
            return ok <= set(re.findall(r'"id":"(\d+)"', st.logs("events", whole=True)))
        wait_until(printed, 90, "the events service to print every webhook answered 200")
    finally:
        if load:
            load.finish()
        st.down()


def test_redis_variant_writes_through_the_redis_sink(tmp_path):
    st = Stack(tmp_path, "abtest-redis", "compose.redis.yaml")
    try:
        st.up(3)
        ok = set()
        for n in range(40):
            wid = f"91000000000000{n:05d}"
            status, body = st.post(with_id(LOAN, wid))
            assert status == 200, body
            ok.add(wid)
        # Redis restarts while webhooks keep coming: the replicas' spools take them (200)
        # and forward them when Redis is back
        restarter = threading.Thread(target=st.compose, args=("restart", "-t", "10", "redis"))
        restarter.start()
        n = 100
        while restarter.is_alive() or n < 140:
            wid = f"91000000000000{n:05d}"
            status, body = st.post(with_id(LOAN, wid))
            assert status == 200, (wid, body)
            ok.add(wid)
            n += 1
            time.sleep(0.05)
        restarter.join()
        # entries: id <webhook id> type <ce type> event <CloudEvent>, one value per line
        def stream_ids():
            p = st.compose("exec", "-T", "redis", "redis-cli", "--raw", "XRANGE", "alma:events",
                           "-", "+", timeout=60, check=False)
            return {line.strip() for line in p.stdout.splitlines()}
        wait_until(lambda: ok <= stream_ids(), 90,
                   f"every webhook answered 200 in the stream: {sorted(ok - stream_ids())[:5]}")
        wait_until(lambda: all(i in st.logs("events", whole=True) for i in ok), 60,
                   "the events service to print every entry")
    finally:
        st.down()


def test_healthcheck_follows_listen_given_as_container_arguments():
    """The image alone: `almabridge --probe` (the HEALTHCHECK) reads PID 1's arguments."""
    name = f"abtest-probe-{os.getpid()}"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    try:
        run = subprocess.run(
            ["docker", "run", "-d", "--name", name, "-e", "ALMABRIDGE_SECRET=x",
             "almabridge:local", "--listen", "0.0.0.0:9099",
             "--file", "/var/lib/almabridge/e.jsonl"],
            capture_output=True, text=True)
        assert run.returncode == 0, run.stderr

        def health():
            p = subprocess.run(["docker", "inspect", "-f", "{{json .State.Health}}", name],
                               capture_output=True, text=True, check=True)
            return json.loads(p.stdout)
        wait_until(lambda: health()["Status"] == "healthy", 90, "the container to be healthy")
        assert "http://127.0.0.1:9099/readyz: 200" in health()["Log"][-1]["Output"]
        # runtime libraries only (scratch + what ldd names): no shell in the image
        size = int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}",
                                   "almabridge:local"], capture_output=True, text=True,
                                  check=True).stdout)
        print(f"image almabridge:local: {size / 1e6:.1f} MB")
        assert size < 80e6, size
        sh = subprocess.run(["docker", "exec", name, "/bin/sh", "-c", "true"],
                            capture_output=True, text=True)
        assert sh.returncode != 0
        ver = subprocess.run(["docker", "exec", name, "almabridge", "--version"],
                             capture_output=True, text=True)
        assert ver.returncode == 0 and ver.stdout.startswith("almabridge "), ver
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
