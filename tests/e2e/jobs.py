"""JOB_END webhooks for the tests of `almabridge wait`, `replay` and the examples: the
fixtures tests/fixtures/alma/job_end.json and tests/fixtures/xml/job_end.xml with the job
instance, job, status and end time of our choosing, and helpers to run the subcommands."""
import contextlib
import copy
import datetime
import itertools
import json
import os
import re
import subprocess
import threading
import time

import pytest

from daemon import BIN, ROOT, Daemon
from services import KafkaBroker, RedisServer

with open(os.path.join(ROOT, "tests", "fixtures", "alma", "job_end.json"), "rb") as _f:
    JOB_END = json.load(_f)
with open(os.path.join(ROOT, "tests", "fixtures", "xml", "job_end.xml"), "rb") as _f:
    JOB_END_XML = _f.read()

_ids = itertools.count(int(time.time() * 1000) * 1000)
_lock = threading.Lock()


def new_id():
    """A unique id of 16-17 digits, like Alma's (beyond a double's exact integers)."""
    with _lock:
        return str(next(_ids) + 30000000000000000)


def iso(t=None):
    t = time.time() if t is None else t
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def job_end_json(instance, job="M53", status="COMPLETED_SUCCESS", end=None):
    """A JSON JOB_END; job_instance.id is a JSON number, as Alma sends it."""
    d = copy.deepcopy(JOB_END)
    d["id"] = new_id()
    d["time"] = iso(end)
    ji = d["job_instance"]
    ji["id"] = int(instance)
    ji["end_time"] = iso(end)
    ji["status"] = {"value": status, "desc": status.replace("_", " ").title()}
    ji["job_info"]["id"] = job
    ji["job_info"]["link"] = "/almaws/v1/conf/jobs/" + job
    return json.dumps(d).encode()


def job_end_xml(instance, job="M53", status="COMPLETED_SUCCESS", end=None):
    """An XML JOB_END (every value a string once normalised)."""
    body = JOB_END_XML.decode()
    body = re.sub(r"<id>6959835260004102</id>", "<id>%s</id>" % new_id(), body, count=1)
    body = re.sub(r"(<job_instance>\s*<id>)[^<]*", r"\g<1>" + str(instance), body, count=1)
    body = re.sub(r"<time>[^<]*</time>", "<time>%s</time>" % iso(end), body, count=1)
    body = re.sub(r"<end_time>[^<]*</end_time>", "<end_time>%s</end_time>" % iso(end), body)
    body = re.sub(r'<status desc="[^"]*">[^<]*</status>',
                  '<status desc="%s">%s</status>' % (status.title(), status), body)
    body = re.sub(r"(<job_info>\s*<id>)[^<]*", r"\g<1>" + job, body, count=1)
    return body.encode()


def post_ok(d, body, xml=False):
    r = d.post(body, content_type="application/xml" if xml else "application/json")
    assert r.status == 200, (r, d.stderr()[-2000:])
    return r


def almabridge(*args, env=None, **kw):
    """Start `almabridge <args>` with stdout and stderr captured (text)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen([BIN] + [str(a) for a in args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e, **kw)


def finish(p, timeout=60):
    """(exit code, stdout, stderr) of a process from almabridge(), killed after timeout."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError("still running after %s s; stderr: %s" % (timeout, err[-2000:]))
    return p.returncode, out, err


def run(*args, timeout=60, env=None):
    return finish(almabridge(*args, env=env), timeout)


# ---- the brokers, one per test module (import the fixture: `from jobs import kafka`) ----

@pytest.fixture(scope="module")
def kafka():
    broker = KafkaBroker()
    try:
        broker.start()
    except RuntimeError as e:  # never skipped: fail saying why
        pytest.fail("cannot start Apache Kafka: %s" % e)
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def redis():
    server = RedisServer().start()
    yield server
    server.close()


def wait_ready(d, timeout=20):
    """Poll the daemon's /readyz until 200."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if d.get("/readyz").status == 200:
            return
        time.sleep(0.1)
    raise AssertionError("daemon not ready: " + d.stderr()[-2000:])


@contextlib.contextmanager
def bridge(tmp_path, *args):
    """The daemon with args (one worker), ready; it must stop cleanly (exit 0)."""
    d = Daemon([str(a) for a in args], tmpdir=str(tmp_path), threads=1).start()
    try:
        wait_ready(d)
        yield d
    finally:
        assert d.stop() == 0, d.stderr()[-2000:]
