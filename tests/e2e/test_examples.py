"""The consumer examples in examples/, run against the daemon and the real brokers:
the Kafka consumer group (dedup by id, commit after processing: a second run of the group
sees only what is new), the Redis Streams consumer group (a worker dies holding entries,
another claims them with XAUTOCLAIM; each id handled once, nothing left pending), and the
shell pipeline that starts a job through a stub of Alma's API and blocks on
`almabridge wait`."""
import http.server
import json
import os
import subprocess
import threading

import pytest

from daemon import BIN, ROOT, samples, with_id
from jobs import bridge, job_end_json, new_id
from services import KafkaBroker, RedisServer

EXAMPLES = os.path.join(ROOT, "examples")
# The examples run with their own pinned packages (examples/requirements.txt, CloudEvents
# SDK 2.x), installed by `make setup-test`.
EXAMPLES_PYTHON = os.path.join(ROOT, ".cache", "venv-examples", "bin", "python3")
LOAN = dict(samples())["loan_created"]


def example(name, *args, timeout=90, env=None):
    assert os.access(EXAMPLES_PYTHON, os.X_OK), "run make setup-test (examples/requirements.txt)"
    cmd = ([EXAMPLES_PYTHON] if name.endswith(".py") else ["sh"]) + \
        [os.path.join(EXAMPLES, name)] + [str(a) for a in args]
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    return p.returncode, p.stdout, p.stderr


def post_loans(d, n, duplicate=True):
    ids = [new_id() for _ in range(n)]
    for i in ids:
        assert d.post(with_id(LOAN, i)).status == 200
    if duplicate:  # Alma's retry of a webhook whose answer was lost: same id again
        assert d.post(with_id(LOAN, ids[0])).status == 200
    return ids


def printed_ids(out):
    return [json.loads(l)["id"] for l in out.splitlines() if l.strip()]


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_kafka_consumer_group_dedups_and_commits(tmp_path, mode):
    with KafkaBroker() as kafka, \
            bridge(tmp_path, "--sink", "kafka", "--kafka-brokers", kafka.bootstrap,
                   "--content-mode", mode) as d:
        ids = post_loans(d, 10)
        args = ["alma.loan", "--brokers", kafka.bootstrap, "--group", "loan-sync"]
        rc, out, err = example("kafka_consumer.py", *args, "--idle-exit", 4)
        assert rc == 0, err
        assert sorted(printed_ids(out)) == sorted(ids)  # the duplicate handled once
        more = post_loans(d, 2, duplicate=False)
        rc, out, err = example("kafka_consumer.py", *args, "--idle-exit", 4)
        assert rc == 0, err
        # committed offsets: the group resumes after what it processed (the duplicate
        # message was committed too, so it does not come back either)
        assert sorted(printed_ids(out)) == sorted(more)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_redis_consumer_group_claims_a_dead_workers_entries(tmp_path, mode):
    with RedisServer() as redis, bridge(tmp_path, "--sink", "redis", "--redis", redis.url,
                                        "--content-mode", mode) as d:
        ids = post_loans(d, 20)
        args = ["alma:loan", "--redis", redis.url, "--group", "loan-sync"]
        rc, out, _ = example("redis_consumer.py", *args, "--consumer", "w1",
                             "--die-after-reading", 5)
        assert rc == 1 and out == ""  # read 5, acknowledged none
        assert "5" in redis.cli("XPENDING", "alma:loan", "loan-sync").split("\n")[0]
        rc, out, err = example("redis_consumer.py", *args, "--consumer", "w2",
                               "--claim-idle-ms", 200, "--idle-exit", 3)
        assert rc == 0, err
        assert sorted(printed_ids(out)) == sorted(ids)  # 21 entries, 20 ids, each once
        assert redis.cli("XPENDING", "alma:loan", "loan-sync").split("\n")[0] == "0"


class StubAlma:
    """Alma's `POST /almaws/v1/conf/jobs/{id}?op=run`: answers with the new instance's link
    and, a moment later, sends the daemon that instance's JOB_END webhook, as Alma would
    once the job has run."""

    def __init__(self, daemon, status):
        self.requests = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                stub.requests.append((self.path, self.headers.get("Authorization")))
                job = self.path.split("/jobs/")[1].split("?")[0]
                instance = new_id()
                body = json.dumps({"id": job, "additional_info": {
                    "value": "Job no. %s triggered" % instance,
                    "link": "/almaws/v1/conf/jobs/%s/instances/%s" % (job, instance)}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                threading.Timer(1.0, lambda: daemon.post(
                    job_end_json(instance, job=job, status=status))).start()

            def log_message(self, *a):
                pass

        self.srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.srv.server_port
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.mark.parametrize("status, code", [("COMPLETED_SUCCESS", 0), ("COMPLETED_FAILED", 1)])
def test_shell_pipeline_runs_a_job_and_waits(daemon, status, code):
    alma = StubAlma(daemon, status)
    try:
        env = {"ALMA_API": alma.url, "ALMA_APIKEY": "l7xx-test-key", "ALMABRIDGE": BIN,
               "WAIT_TIMEOUT": "60s"}
        rc, out, err = example("run_job_and_wait.sh", "M53", "--sink", "file", "--file",
                               daemon.file, env=env)
        assert rc == code, (out, err)
        assert alma.requests == [("/almaws/v1/conf/jobs/M53?op=run", "apikey l7xx-test-key")]
        ev = json.loads(out)
        assert ev["data"]["job_instance"]["job_info"]["id"] == "M53"
        assert str(ev["data"]["job_instance"]["id"]) in err  # "instance N started"
    finally:
        alma.close()


def test_readme_has_the_pipeline_section_with_the_shell_example():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Waiting for a job in a pipeline")[1].split("\n## ")[0]
    assert "almabridge wait --job-instance" in section
    assert "examples/run_job_and_wait.sh" in section
    assert os.path.exists(os.path.join(ROOT, "docs", "airflow.md"))
    assert "Untested" in open(os.path.join(ROOT, "docs", "airflow.md")).read()
