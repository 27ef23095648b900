"""`almabridge wait` against the daemon writing to each of its three sinks: the real Kafka
broker and redis-server the other suites use, and the file sink.

For every sink: an event that arrived before the waiter started and one that arrives
after are both found; exit 0 for COMPLETED_SUCCESS, 1 for another status (printed on
stderr), 3 on --timeout; two waiters for different jobs at once each get their own; the
JSON form (job_instance.id a 17-digit number) and the XML form (a string) both match;
--job-id alone waits for the next run. Plus usage and connection errors (exit 2)."""
import json
import time

import pytest

from daemon import Daemon, samples, with_id
from jobs import (almabridge, bridge, finish, iso, job_end_json, job_end_xml, kafka,  # noqa: F401
                  new_id, post_ok, redis, run, wait_ready)
from services import RedisServer

SINKS = ["file", "kafka", "redis"]


class Setup:
    """The daemon on one sink, and the options that point `wait` at the same sink."""

    def __init__(self, sink, d, args):
        self.sink, self.d, self.args = sink, d, args

    def wait(self, *args):
        return almabridge("wait", *args, *self.args)


@pytest.fixture(scope="module", params=SINKS)
def setup(request, tmp_path_factory):
    sink = request.param
    tmp = tmp_path_factory.mktemp("wait-" + sink)
    if sink == "file":
        args = ["--sink", "file"]
    elif sink == "kafka":
        args = ["--sink", "kafka", "--kafka-brokers", request.getfixturevalue("kafka").bootstrap]
    else:
        args = ["--sink", "redis", "--redis", request.getfixturevalue("redis").url]
    d = Daemon(args, tmpdir=str(tmp), threads=1).start()
    wait_ready(d)
    if sink == "file":
        args = args + ["--file", d.file]
    yield Setup(sink, d, args)
    assert d.stop() == 0, d.stderr()[-2000:]


def assert_running(p, seconds=1.5):
    """p is still waiting after a while (it did not match something it should not)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert p.poll() is None, finish(p)
        time.sleep(0.1)


def test_event_before_and_after_the_waiter_started(setup):
    before, after = new_id(), new_id()
    post_ok(setup.d, job_end_json(before))
    rc, out, err = finish(setup.wait("--job-instance", before, "--timeout", "60s"))
    assert rc == 0, err
    ev = json.loads(out)
    assert ev["type"] == "com.exlibrisgroup.alma.job_end"
    assert str(ev["data"]["job_instance"]["id"]) == before  # 17 digits, kept exactly

    p = setup.wait("--job-instance", after, "--timeout", "60s")
    assert_running(p)
    post_ok(setup.d, job_end_xml(after), xml=True)
    rc, out, err = finish(p)
    assert rc == 0, err
    assert json.loads(out)["data"]["job_instance"]["id"] == after  # XML: a string


def test_exit_codes_success_failure_timeout(setup):
    ok, failed, cancelled = new_id(), new_id(), new_id()
    post_ok(setup.d, job_end_json(ok))
    post_ok(setup.d, job_end_json(failed, status="COMPLETED_FAILED"))
    post_ok(setup.d, job_end_xml(cancelled, status="CANCELLED"), xml=True)
    assert run("wait", "--job-instance", ok, "--timeout", "60s", *setup.args)[0] == 0
    rc, out, err = run("wait", "--job-instance", failed, "--timeout", "60s", *setup.args)
    assert rc == 1 and "COMPLETED_FAILED" in err and json.loads(out)["data"], (rc, err)
    rc, _, err = run("wait", "--job-instance", cancelled, "--timeout", "60s", *setup.args)
    assert rc == 1 and "CANCELLED" in err, (rc, err)
    t0 = time.time()
    rc, out, err = run("wait", "--job-instance", new_id(), "--timeout", "2s", *setup.args)
    assert rc == 3 and out == "" and "timeout" in err, (rc, err)
    assert time.time() - t0 < 30


def test_two_waiters_for_different_jobs_at_once(setup):
    a, b = new_id(), new_id()
    pa = setup.wait("--job-instance", a, "--timeout", "60s")
    pb = setup.wait("--job-instance", b, "--timeout", "60s")
    assert_running(pa, 1.0)
    post_ok(setup.d, job_end_json(b, status="COMPLETED_FAILED"))
    rc_b, out_b, err_b = finish(pb)
    assert rc_b == 1, err_b
    assert pa.poll() is None  # the other waiter is still waiting for its own job
    post_ok(setup.d, job_end_json(a))
    rc_a, out_a, err_a = finish(pa)
    assert rc_a == 0, err_a
    assert str(json.loads(out_a)["data"]["job_instance"]["id"]) == a
    assert str(json.loads(out_b)["data"]["job_instance"]["id"]) == b


def test_job_id_alone_waits_for_the_next_run(setup):
    job = "M" + new_id()[-6:]
    post_ok(setup.d, job_end_json(new_id(), job=job, end=time.time() - 60))  # an earlier run
    p = setup.wait("--job-id", job, "--timeout", "60s")
    assert_running(p)
    nxt = new_id()
    post_ok(setup.d, job_end_json(nxt, job=job))
    rc, out, err = finish(p)
    assert rc == 0, err
    assert str(json.loads(out)["data"]["job_instance"]["id"]) == nxt


def test_since_bounds_how_far_back(setup):
    old = new_id()
    if setup.sink == "file":
        # the file has no arrival time: --since applies to the event's own time there
        post_ok(setup.d, job_end_json(old, end=time.time() - 7200))
        short, long_ = "1h", "3h"
    else:  # Kafka's message timestamp, Redis' stream id: when the daemon wrote it
        post_ok(setup.d, job_end_json(old))
        time.sleep(2.5)
        short, long_ = "1s", "1h"
    rc, _, _ = run("wait", "--job-instance", old, "--since", short, "--timeout", "3s",
                   *setup.args)
    assert rc == 3
    rc, _, err = run("wait", "--job-instance", old, "--since", long_, "--timeout", "30s",
                     *setup.args)
    assert rc == 0, err


def test_usage_and_connection_errors(tmp_path, redis):
    rc, _, err = run("wait")
    assert rc == 2 and "--job-instance" in err
    rc, _, err = run("wait", "--job-instance", "1", "--since", "soon")
    assert rc == 2
    rc, _, err = run("wait", "--job-instance", "1", "--sink", "kafka", "--route", "alma.{id}")
    assert rc == 2 and "{id}" in err
    rc, _, err = run("wait", "--job-instance", "1", "--sink", "redis", "--route",
                     "alma:{institution}:{action}")
    assert rc == 2 and "--institution" in err
    rc, _, err = run("wait", "--job-instance", "1", "--sink", "redis", "--redis",
                     "redis://127.0.0.1:1", "--timeout", "5s")
    assert rc == 2 and "cannot connect" in err, err
    rc, _, err = run("wait", "--job-instance", "1", "--sink", "kafka", "--kafka-brokers",
                     "127.0.0.1:1", "--timeout", "60s", timeout=60)
    assert rc == 2 and "kafka" in err, err
    conf = tmp_path / "almabridge.conf"
    conf.write_text("sink = redis\nredis = %s\nroute = alma:{institution}:{action}\n" % redis.url)
    rc, _, err = run("wait", "--job-instance", "1", "--config", str(conf), "--institution",
                     "01X", "--timeout", "1s")
    assert rc == 3, err  # the config file's route, with the institution given


def test_file_waiter_follows_rotation(tmp_path):
    import os
    with bridge(tmp_path) as d:
        post_ok(d, job_end_json(new_id()))
        inst = new_id()
        p = almabridge("wait", "--job-instance", inst, "--timeout", "60s", "--file", d.file)
        assert_running(p, 1.0)
        os.rename(d.file, d.file + ".1")  # logrotate: rename; the daemon reopens its path
        post_ok(d, job_end_json(new_id()))
        post_ok(d, job_end_json(inst))
        rc, out, err = finish(p)
        assert rc == 0, err
        assert os.path.exists(d.file)
        # copytruncate: the file is emptied in place
        inst2 = new_id()
        p = almabridge("wait", "--job-instance", inst2, "--timeout", "60s", "--file", d.file)
        assert_running(p, 1.0)
        os.truncate(d.file, 0)
        time.sleep(0.5)
        post_ok(d, job_end_json(inst2))
        rc, out, err = finish(p)
        assert rc == 0, err


def test_kafka_waiter_started_before_the_topic_exists(kafka, tmp_path):
    route = "fresh%s.{action}" % new_id()[-8:]
    sink = ["--sink", "kafka", "--kafka-brokers", kafka.bootstrap, "--route", route]
    with bridge(tmp_path, *sink) as d:
        inst = new_id()
        p = almabridge("wait", "--job-instance", inst, "--timeout", "60s", *sink)
        assert_running(p, 2.0)
        post_ok(d, job_end_json(inst))  # the daemon's first JOB_END creates the topic
        rc, out, err = finish(p)
        assert rc == 0, err


def test_redis_waiter_survives_a_redis_restart(tmp_path):
    with RedisServer() as redis, bridge(tmp_path, "--sink", "redis", "--redis", redis.url) as d:
        inst = new_id()
        p = almabridge("wait", "--job-instance", inst, "--timeout", "60s", "--sink", "redis",
                       "--redis", redis.url)
        assert_running(p, 1.0)
        redis.restart()
        body, deadline = job_end_json(inst), time.time() + 30
        while d.post(body).status != 200:  # 503 until the daemon has reconnected
            assert time.time() < deadline, d.stderr()[-2000:]
            time.sleep(0.2)
        rc, out, err = finish(p)
        assert rc == 0, err
        assert "reconnecting" in err


def test_kafka_waiters_read_every_partition(kafka, tmp_path):
    topic = "parts%s.job_end" % new_id()[-8:]
    kafka.create_topic(topic, partitions=3)
    sink = ["--sink", "kafka", "--kafka-brokers", kafka.bootstrap, "--route", topic]
    with bridge(tmp_path, *sink) as d:
        insts = [new_id() for _ in range(6)]
        for i in insts:  # with other events in the same topic (--route without {action})
            post_ok(d, with_id(dict(samples())["loan_created"], i))
            post_ok(d, job_end_json(i))
        parts = {m["partition"] for m in kafka.consume(topic, count=12)}
        assert len(parts) > 1  # keyed by webhook id: spread over the partitions
        waiters = [almabridge("wait", "--job-instance", i, "--timeout", "60s", *sink)
                   for i in insts]
        for i, p in zip(insts, waiters):
            rc, out, err = finish(p)
            assert rc == 0, err
            assert str(json.loads(out)["data"]["job_instance"]["id"]) == i


def test_redis_password_is_used_and_hidden_from_ps(tmp_path):
    with RedisServer(password="s3cret-pw") as redis, \
            bridge(tmp_path, "--sink", "redis", "--redis", redis.url) as d:
        inst = new_id()
        p = almabridge("wait", "--job-instance", inst, "--timeout", "60s", "--sink", "redis",
                       "--redis", redis.url)
        assert_running(p, 1.0)
        with open("/proc/%d/cmdline" % p.pid, "rb") as f:
            cmdline = f.read()
        assert b"s3cret-pw" not in cmdline and b"redis://" in cmdline, cmdline
        post_ok(d, job_end_json(inst))
        rc, out, err = finish(p)
        assert rc == 0, err
        rc, _, err = run("wait", "--job-instance", inst, "--sink", "redis", "--redis",
                         redis.url.replace("s3cret-pw", "wrong"), "--timeout", "5s")
        assert rc == 2 and "authentication" in err and "wrong" not in err, err


def test_own_options_from_the_config_file_and_environment(tmp_path):
    """wait's options are loaded by the daemon's loader: the config file and ALMABRIDGE_*
    set them as they set the daemon's (the command line still wins)."""
    inst = new_id()
    line = {"specversion": "1.0", "id": new_id(), "source": "urn:alma:X",
            "type": "com.exlibrisgroup.alma.job_end", "time": iso(),
            "data": {"job_instance": {"id": int(inst), "status": {"value": "COMPLETED_SUCCESS"}}}}
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(line) + "\n")
    conf = tmp_path / "wait.conf"
    conf.write_text("sink = file\nfile = %s\njob-instance = %s\n" % (events, inst))
    rc, out, err = run("wait", "--config", conf, env={"ALMABRIDGE_TIMEOUT": "20s"})
    assert rc == 0 and json.loads(out)["data"]["job_instance"]["id"] == int(inst), err
    rc, _, err = run("wait", "--config", conf, "--job-instance", new_id(),
                     env={"ALMABRIDGE_TIMEOUT": "1s"})
    assert rc == 3, err
    rc, out, _ = run("wait", "--help")
    assert rc == 0 and "ALMABRIDGE_JOB_INSTANCE" in out
