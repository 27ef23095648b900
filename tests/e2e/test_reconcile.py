"""`almabridge reconcile` and `wait --fallback-after` against a stand-in for Alma's Jobs API
(tests/alma/api_stub.py), with the file sink and a real Redis: JOB_END webhooks dropped,
duplicated and delayed, gaps filled by the first reconcile, API calls within the budget,
and API failures (down, 429, bad key, malformed JSON) reported with nothing written."""
import copy
import json
import os
import subprocess
import threading
import time

import pytest

from daemon import Daemon, KeepAlive, redis_event, wait_until
from test_redis import Resp
from jobs import JOB_END, almabridge, bridge, finish, redis, run  # noqa: F401 (fixture)
from services import AlmaApiStub, alma_instance

KEY = "k3y-never-printed-0123456789"
INST = "01TEST_INST"
ORIGIN = "api"


@pytest.fixture(scope="module")
def api():
    stub = AlmaApiStub(key=KEY).start()
    yield stub
    stub.close()


def key_file(tmp_path):
    p = tmp_path / "alma.key"
    p.write_text("# the Alma API key\n%s\n" % KEY)
    return str(p)


def api_args(api, tmp_path, *more):
    return ["--alma-api", api.url, "--alma-api-key-file", key_file(tmp_path),
            "--state-dir", str(tmp_path)] + list(more)


def webhook(inst):
    """The JOB_END webhook Alma sends for an instance (API JSON): its id is the instance's."""
    d = copy.deepcopy(JOB_END)
    d["id"] = inst["id"]
    d["institution"] = {"value": INST, "desc": "Test"}
    d["time"] = inst["end_time"]
    d["job_instance"] = inst
    return json.dumps(d).encode()


def post_all(d, bodies, threads=8):
    """POST every body (over `threads` keep-alive connections); all must get 200."""
    bad, it, lock = [], iter(bodies), threading.Lock()

    def worker():
        k = KeepAlive(d)
        while True:
            with lock:
                body = next(it, None)
            if body is None:
                break
            status = k.post(body)
            if status != 200:
                bad.append(status)
        k.close()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad, bad[:10]


def job_ends(events):
    """{instance id: [origin of each JOB_END]} from parsed CloudEvents."""
    out = {}
    for e in events:
        if e.get("type") == "com.exlibrisgroup.alma.job_end":
            out.setdefault(str(e["data"]["job_instance"]["id"]), []).append(
                e.get("almaorigin", "webhook"))
    return out


def file_events(path):
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [json.loads(l) for l in f.read().splitlines() if l.strip()]


def redis_events(server, stream):
    """The stream's CloudEvents, in either content mode (daemon.redis_event)."""
    with Resp(server.port) as r:
        return [redis_event(kv) for _, kv in (
            (eid, {kv[i]: kv[i + 1] for i in range(0, len(kv), 2)})
            for eid, kv in r.call("XRANGE", stream, "-", "+") or [])]


def scenario(api, job, n):
    """n ended instances of job (a share failed) and 3 still running; returns the ended
    ones split into (sent, dropped, duplicated, delayed) webhooks."""
    now = time.time()
    base = int(now * 1000) * 10000 + hash(job) % 1000 * 10
    ended = [alma_instance(str(base + i), job=job, submit=now - 3600 + i,
                           status="COMPLETED_FAILED" if i % 7 == 0 else "COMPLETED_SUCCESS")
             for i in range(n)]
    running = [alma_instance(str(base + n + i), job=job, status="RUNNING") for i in range(3)]
    api.add(job, *(ended + running))
    # 30 % dropped, 10 % duplicated, 10 % delayed past the reconcile, the rest sent once
    dropped = [e for i, e in enumerate(ended) if i % 10 in (0, 1, 2)]
    dup = [e for i, e in enumerate(ended) if i % 10 == 3]
    delayed = [e for i, e in enumerate(ended) if i % 10 == 4]
    sent = [e for i, e in enumerate(ended) if i % 10 not in (0, 1, 2, 4)]
    return ended, sent, dropped, dup, delayed


def summary(out):
    line = [l for l in out.splitlines() if l.startswith("reconcile:")][-1]
    calls = [l for l in out.splitlines() if l.startswith("API calls:")][-1]
    return line, calls


def check_after(ends, ended, filled):
    """Every ended instance has a JOB_END; reconcile wrote exactly one, and only, for those
    the sink lacked when it ran."""
    assert set(ends) >= {e["id"] for e in ended}
    for e in ended:
        origins = ends[e["id"]]
        if e["id"] in filled:
            assert origins.count(ORIGIN) == 1, (e["id"], origins)
        else:
            assert ORIGIN not in origins, (e["id"], origins)


def test_file_sink_gaps_filled_within_budget(api, tmp_path):
    ended, sent, dropped, dup, delayed = scenario(api, "M53", 1000)
    log = tmp_path / "events.jsonl"
    args = ["reconcile", "--job", "M53", "--institution", INST, "--file", str(log),
            "--api-budget", "2000"] + api_args(api, tmp_path)
    with bridge(tmp_path, "--file", log) as d:
        post_all(d, [webhook(e) for e in sent + dup])
        # the file sink's log has one writer: refused while the daemon holds it
        before = log.read_bytes()
        calls = api.calls()
        rc, out, err = run(*args)
        assert rc == 2, err
        assert "a running almabridge (pid %d) holds it" % d.proc.pid in err
        assert log.read_bytes() == before and api.calls() == calls
    t0 = time.monotonic()
    rc, out, err = run(*args, timeout=120)
    took = time.monotonic() - t0
    assert rc == 0, err
    line, calls_line = summary(out)
    missing = {e["id"] for e in dropped + delayed}
    assert line.startswith("reconcile: 1003 instance(s) in the window, 1000 ended, "
                           "%d already had a JOB_END, %d written" % (1000 - len(missing),
                                                                      len(missing))), line
    # 10 list pages (1,003 instances, 100 a page) and one detail call per missing instance
    assert api.calls() - calls == 11 + len(missing)
    assert calls_line.startswith("API calls: %d this run, " % (11 + len(missing))), calls_line
    assert "of --api-budget 2000 today" in calls_line
    assert KEY not in out + err
    ends = job_ends(file_events(log))
    check_after(ends, ended, missing)
    print("reconcile of 1,000 instances (%d missing): %.1f s" % (len(missing), took))
    # the late webhooks arrive (answered 200: post_all asserts it); the deduplication store
    # (the file sink's default, "<file>.dedupe", which reconcile wrote through) knows the
    # events reconcile wrote: nothing is stored twice, and a second reconcile finds nothing
    size = log.stat().st_size
    with bridge(tmp_path, "--file", log) as d:
        post_all(d, [webhook(e) for e in delayed + dup])
        assert 'almabridge_dedupe_duplicates_total{cause="after_ack"} %d' % (
            len(delayed) + len(dup)) in d.metrics()
    assert log.stat().st_size == size
    rc, out, err = run(*args)
    assert rc == 0, err
    assert " 0 written" in summary(out)[0]
    ends = job_ends(file_events(log))
    check_after(ends, ended, missing)
    # exactly one JOB_END per job instance
    assert sorted(ends) == sorted(e["id"] for e in ended)
    assert all(len(v) == 1 for v in ends.values()), [v for v in ends.values() if len(v) > 1]


def test_redis_sink_alongside_the_daemon(api, redis, tmp_path):
    ended, sent, dropped, dup, delayed = scenario(api, "M54", 1000)
    stream = "alma.jobs"
    # the store in the same Redis: the claim and the XADD are one atomic script
    common = ["--sink", "redis", "--redis", redis.url, "--route", stream,
              "--dedupe-store", redis.url]
    args = ["reconcile", "--job", "M54", "--institution", INST, "--since", "24h"] + common + \
        api_args(api, tmp_path, "--api-budget", "5000")
    with bridge(tmp_path, *common) as d:
        post_all(d, [webhook(e) for e in sent + dup + dup])
        calls = api.calls()
        rc, out, err = run(*args, timeout=120)
        assert rc == 0, err
        missing = {e["id"] for e in dropped + delayed}
        assert " %d written" % len(missing) in summary(out)[0]
        assert api.calls() - calls == 11 + len(missing)
        check_after(job_ends(redis_events(redis, stream)), ended, missing)
        post_all(d, [webhook(e) for e in delayed])  # late: after the reconcile
        # new gaps: the next run fills them, and only them
        ended2, sent2, dropped2, dup2, delayed2 = scenario(api, "M54", 100)
        post_all(d, [webhook(e) for e in sent2 + dup2 + delayed2])
        rc, out, err = run(*args)
        assert rc == 0 and " %d written" % len(dropped2) in summary(out)[0], out + err
        missing |= {e["id"] for e in dropped2}
    rc, out, err = run(*args)
    assert rc == 0 and " 0 written" in summary(out)[0], err
    events = redis_events(redis, stream)
    check_after(job_ends(events), ended + ended2, missing)
    made = [e for e in events if e.get("almaorigin") == ORIGIN]
    assert len(made) == len(missing)
    # exactly one JOB_END per job instance: the repeated and the late webhooks found the
    # webhook's or reconcile's copy in the store
    ends = job_ends(events)
    assert sorted(ends) == sorted(e["id"] for e in ended + ended2)
    assert all(len(v) == 1 for v in ends.values()), [v for v in ends.values() if len(v) > 1]
    # the same event a webhook gives: id = instance id, source and routing of the institution
    assert all(e["id"] == e["data"]["job_instance"]["id"] == e["data"]["id"] for e in made)
    assert {e["source"] for e in made} == {"urn:alma:" + INST}


def reconcile_fails(api, tmp_path, *more, budget="1000"):
    log = tmp_path / "events.jsonl"
    rc, out, err = run("reconcile", "--job", "M55", "--institution", INST, "--file", str(log),
                       *(api_args(api, tmp_path, "--api-budget", budget) + list(more)))
    assert KEY not in out + err
    assert not log.exists() or log.read_bytes() == b""
    return rc, out, err


@pytest.mark.parametrize("mode,words", [
    ("bad-key", ["HTTP 400", "UNAUTHORIZED", "API key refused"]),
    ("429-daily", ["HTTP 429", "DAILY_THRESHOLD", "API threshold"]),
    ("500", ["HTTP 500", "API unreachable", "3 tries"]),
    ("malformed", ["the answer is not JSON"]),
])
def test_api_failures_write_nothing(api, tmp_path, mode, words):
    api.add("M55", alma_instance("55000001", job="M55"))
    api.fail(mode)
    try:
        rc, out, err = reconcile_fails(api, tmp_path)
    finally:
        api.fail(None)
    assert rc == 1, err
    for w in words:
        assert w in err, err


def test_per_second_threshold_is_backed_off(api, tmp_path):
    api.add("M56", alma_instance("56000001", job="M56"))
    api.fail("429-second", count=2)
    log = tmp_path / "events.jsonl"
    rc, out, err = run("reconcile", "--job", "M56", "--institution", INST, "--file", str(log),
                       *api_args(api, tmp_path))
    assert rc == 0, err
    assert err.count("PER_SECOND_THRESHOLD") == 2 and "trying again in" in err
    assert list(job_ends(file_events(log))) == ["56000001"]


def test_api_down_budget_and_usage(api, tmp_path):
    from harness import free_port
    down = "http://127.0.0.1:%d" % free_port()
    rc, out, err = reconcile_fails(api, tmp_path, "--alma-api", down)
    assert rc == 1 and "API unreachable" in err and "127.0.0.1" in err, err
    (tmp_path / "alma-api-calls").write_text(time.strftime("%Y-%m-%d", time.gmtime()) + " 5\n")
    calls = api.calls()
    rc, out, err = reconcile_fails(api, tmp_path, budget="5")
    assert rc == 1 and "--api-budget of 5 Alma API calls" in err, err
    assert api.calls() == calls  # nothing sent over the budget
    for args in (["--institution", INST], ["--job", "M53"]):
        rc, out, err = run("reconcile", *(args + api_args(api, tmp_path)))
        assert rc == 2 and "give --job ID" in err, err
    rc, out, err = run("reconcile", "--job", "M53", "--institution", INST)
    assert rc == 2 and "--alma-api" in err, err
    calls = api.calls()
    rc, out, err = run("reconcile", "--job", "M53", "--institution", INST, "--sink", "http",
                       "--http-url", "http://127.0.0.1:9/", *api_args(api, tmp_path))
    assert rc == 2 and "has no read side" in err and api.calls() == calls
    rc, out, err = run("reconcile", "--job", "M53", "--institution", INST, "--alma-api", "mars",
                       "--alma-api-key-file", key_file(tmp_path))
    assert rc == 2 and "na, eu, ap, aps, ca, cn" in err, err


def test_print_config_shows_the_key_file_never_the_key(tmp_path):
    rc, out, err = run("--print-config", "--alma-api", "eu", "--alma-api-key-file",
                       key_file(tmp_path), "--api-budget", "300")
    assert rc == 0, err
    assert "alma-api = eu" in out and key_file(tmp_path) in out and "api-budget = 300" in out
    assert KEY not in out


def test_tls_verified_with_the_ca_given(tmp_path):
    with AlmaApiStub(key=KEY, tls=True) as tls:
        tls.add("M57", alma_instance("57000001", job="M57"))
        log = tmp_path / "events.jsonl"
        base = ["reconcile", "--job", "M57", "--institution", INST, "--file", str(log),
                "--alma-api", tls.url, "--alma-api-key-file", key_file(tmp_path),
                "--state-dir", str(tmp_path)]
        rc, out, err = run(*base)
        assert rc == 1 and "certificate" in err.lower() and "1 try)" in err, err
        assert not log.exists() or log.read_bytes() == b""
        rc, out, err = run(*(base + ["--alma-api-ca", tls.ca]))
        assert rc == 0, err
        assert list(job_ends(file_events(log))) == ["57000001"]


# ---- wait --fallback-after ----

def wait_args(api, tmp_path, inst, job, *more):
    return ["wait", "--job-instance", inst, "--job-id", job, "--file",
            str(tmp_path / "events.jsonl"), "--fallback-after", "1s", "--fallback-every", "1s",
            "--institution", INST] + api_args(api, tmp_path) + list(more)


@pytest.mark.parametrize("status,code", [("COMPLETED_SUCCESS", 0), ("COMPLETED_FAILED", 1)])
def test_wait_fallback_when_the_webhook_never_comes(api, tmp_path, status, code):
    inst = str(int(time.time() * 1000) * 100 + code)
    api.add("M60", alma_instance(inst, job="M60", status=status))
    rc, out, err = run(*wait_args(api, tmp_path, inst, "M60", "--timeout", "60s"))
    assert rc == code, err
    assert "answered by the Alma API" in err
    ev = json.loads(out)
    assert ev["id"] == inst and ev["almaorigin"] == ORIGIN
    assert ev["data"]["job_instance"]["status"]["value"] == status


def test_wait_answered_by_the_webhook_when_it_comes(api, tmp_path):
    inst = str(int(time.time() * 1000) * 100 + 7)
    running = alma_instance(inst, job="M61", status="RUNNING")
    api.add("M61", running)
    log = tmp_path / "events.jsonl"
    with bridge(tmp_path, "--file", log) as d:
        calls = api.calls()
        p = almabridge(*wait_args(api, tmp_path, inst, "M61", "--timeout", "60s"))
        # the API is asked (still running) before the webhook comes
        wait_until(lambda: api.calls() > calls, 30, "a fallback call")
        post_all(d, [webhook(alma_instance(inst, job="M61"))], threads=1)
        rc, out, err = finish(p)
    assert rc == 0, err
    assert "answered by the JOB_END webhook" in err
    assert "almaorigin" not in json.loads(out)


def test_wait_fallback_times_out_while_running(api, tmp_path):
    inst = str(int(time.time() * 1000) * 100 + 8)
    api.add("M62", alma_instance(inst, job="M62", status="RUNNING"))
    t0 = time.monotonic()
    rc, out, err = run(*wait_args(api, tmp_path, inst, "M62", "--timeout", "4s"))
    assert rc == 3 and "before --timeout" in err, err
    assert time.monotonic() - t0 < 30
    rc, out, err = run("wait", "--job-instance", inst, "--fallback-after", "1s",
                       *api_args(api, tmp_path))
    assert rc == 2 and "--job-id" in err, err


def test_reconcile_every_inside_the_daemon_file_sink(api, tmp_path):
    """The file sink's one writer: the daemon itself fills the gaps, on its own thread."""
    ended, sent, dropped, dup, delayed = scenario(api, "M70", 40)
    log = tmp_path / "events.jsonl"
    missing = {e["id"] for e in dropped + delayed}
    with bridge(tmp_path, "--file", log, "--reconcile-every", "3s", "--reconcile-job", "M70",
                "--reconcile-institution", INST, *api_args(api, tmp_path)) as d:
        post_all(d, [webhook(e) for e in sent + dup])
        wait_until(lambda: set(job_ends(file_events(log))) >= {e["id"] for e in ended}, 60,
                   lambda: d.stderr()[-2000:])
        wait_until(lambda: "reconcile: 43 instance(s), 40 ended, 40 had a JOB_END, 0 written"
                   in d.stderr(), 30, lambda: d.stderr()[-2000:])
    ends = job_ends(file_events(log))
    # a webhook still on its way when a run read the sink meets reconcile's copy in the
    # daemon's deduplication store (the file sink's default): one JOB_END per instance
    assert all(len(v) == 1 for v in ends.values()), [v for v in ends.values() if len(v) > 1]
    assert {i for i, v in ends.items() if ORIGIN in v} >= missing
    assert KEY not in d.stderr()


def test_systemd_timer_and_unit_verify(tmp_path):
    from daemon import BIN, ROOT
    names = []
    for name in ("almabridge-reconcile.service", "almabridge-reconcile.timer"):
        text = open(os.path.join(ROOT, "deploy", "systemd", name)).read()
        (tmp_path / name).write_text(text.replace("/usr/local/bin/almabridge", BIN))
        names.append(str(tmp_path / name))
    p = subprocess.run(["systemd-analyze", "verify"] + names, capture_output=True, text=True,
                       cwd=tmp_path)
    out = [l for l in (p.stdout + p.stderr).splitlines() if "almabridge-reconcile" in l]
    assert p.returncode == 0 and not out, p.stdout + p.stderr


def test_daemon_stops_promptly_during_a_reconcile_call(api, tmp_path):
    """An API that accepts and never answers: SIGTERM does not wait for its 30 s timeout."""
    import socket
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)  # never accepted: the request sits in the backlog, unanswered
        url = "http://127.0.0.1:%d" % hole.getsockname()[1]
        d = Daemon(["--reconcile-every", "1s", "--reconcile-job", "M71",
                    "--reconcile-institution", INST, "--alma-api", url,
                    "--alma-api-key-file", key_file(tmp_path), "--state-dir", str(tmp_path)],
                   tmpdir=str(tmp_path), threads=1).start()
        wait_until(lambda: (tmp_path / "alma-api-calls").exists(), 20, "a call under way")
        t0 = time.monotonic()
        assert d.stop(timeout=30) == 0, d.stderr()[-2000:]
        assert time.monotonic() - t0 < 5, d.stderr()[-2000:]
    rc, out, err = run("--check-config", "--reconcile-every", "30m", "--insecure-skip-signature",
                       "--file", str(tmp_path / "c.jsonl"))
    assert rc == 2 and "--reconcile-every DURATION (1s or more) needs" in err, err
