"""Consortium mode (--institutions, issue 20) against a real redis-server and the file sink.

50 institutions, each with its own secrets and route: every signed webhook of each (every
JSON sample and every XML fixture, with the institution code set to its own) lands in that
institution's stream, 100 %; every cross-signed forgery (the body names A, the signature is
B's) is refused and counted; a URL naming another institution than the body is refused; the
challenge works on the per-institution URLs; SIGHUP adds, removes and rotates profiles
under load without one non-200 answer to the others; bad profile files stop the start with
exit 2 and the file and line named, before anything listens."""
import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from daemon import (BIN, check_cloudevent, free_port, redis_event, samples, sign, wait_until,
                    xml_fixtures)
from services import RedisServer
from test_redis import Resp, stream

N = 50


def code(i):
    return f"01CONS{i:02d}_INST"


def secret(i, gen=0):
    return f"secret of {code(i)} #{gen} ünï"


def write_profiles(path, insts, secrets_dir, routes=True, extra=""):
    """One section per (i, gen) in insts: a secret file (odd i) or an inline secret (even i),
    a route for the broker sinks."""
    lines = ["# consortium profiles written by test_consortium.py", extra]
    for i, gen in insts:
        lines.append(f"[{code(i)}]   # institution {i}")
        if i % 2:
            sf = os.path.join(secrets_dir, f"{code(i)}.secrets")
            with open(sf, "w") as f:
                f.write(f"# rotation: the newest last\n{secret(i, gen)}\n")
            lines.append(f"secret-file = {os.path.basename(sf)}")
        else:
            lines.append(f'secret = "{secret(i, gen)}"')
        if routes:
            lines.append(f"route = cons{i:02d}:{{action}}")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # a reload never reads a half-written file


def json_body(src, inst, new_id=None):
    d = json.loads(src)
    d["institution"] = {"value": inst, "desc": f"member {inst}"}
    if new_id is not None:
        d["id"] = new_id
    return json.dumps(d).encode()


def xml_body(src, inst):
    out, n = re.subn(rb"(<institution[^>]*>)[^<]*(</institution>)",
                     rb"\g<1>" + inst.encode() + rb"\g<2>", src, count=1)
    assert n == 1, src[:200]
    return out


def bodies_of(inst):
    """(body, content type) of every JSON sample and XML fixture for institution inst."""
    out = [(json_body(b, inst), "application/json") for _, b in samples()]
    out += [(xml_body(b, inst), "application/xml") for _, b in xml_fixtures()]
    return out


class Client:
    """POSTs over one keep-alive connection per thread."""

    def __init__(self, port):
        self.port = port
        self.local = threading.local()

    def post(self, body, sig, path="/webhook", ctype="application/json"):
        for attempt in range(2):
            c = getattr(self.local, "c", None) or http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=15)
            self.local.c = c
            try:
                c.request("POST", path, body=body,
                          headers={"Content-Type": ctype, "X-Exl-Signature": sig})
                r = c.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    c.close()
                    self.local.c = None
                return r.status, dict(r.getheaders()), data
            except (OSError, http.client.HTTPException):
                c.close()
                self.local.c = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


def metric(d, name, **labels):
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    want = f"{name}{{{sel}}} " if labels else f"{name} "
    for line in d.metrics().splitlines():
        if line.startswith(want):
            return float(line.split()[-1])
    return 0.0


def start_consortium(daemon_factory, tmp_path, args, insts=None, **kw):
    prof = str(tmp_path / "institutions.conf")
    write_profiles(prof, insts if insts is not None else [(i, 0) for i in range(N)],
                   str(tmp_path), **kw.pop("profile_kw", {}))
    d = daemon_factory(["--institutions", prof] + args, secret=None, threads=2, **kw)
    return d, prof


def wait_all_ready(d, workers=2):
    """Every worker's sink connected (/readyz answers for the worker that serves it)."""
    wait_until(lambda: metric(d, "almabridge_sink_ready", sink="redis") == workers, 15,
               d.stderr)


def assert_no_secret_logged(d, secrets):
    err = d.stderr()
    for s in secrets:
        assert s not in err


# ---- 50 institutions, their streams, forgeries, URL forms, challenge (Redis) ---------------

def test_fifty_institutions_bound_routed_and_forgeries_refused(daemon_factory, tmp_path):
    with RedisServer() as redis, Resp(redis.port) as r:
        d, _ = start_consortium(daemon_factory, tmp_path,
                                ["--sink", "redis", "--redis", redis.url, "--ack-timeout", "3000"])
        wait_all_ready(d)
        cl = Client(d.port)
        forms = ["/webhook", "/webhook/{c}", "/webhook?institution={c}"]

        def send_all(i):
            c, got = code(i), []
            for k, (body, ctype) in enumerate(bodies_of(c)):
                path = forms[k % 3].format(c=c)
                got.append((cl.post(body, sign(body, secret(i)), path, ctype)[0], k))
            return got

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            results = list(ex.map(send_all, range(N)))
        per_inst = len(bodies_of(code(0)))
        assert all(s == 200 for res in results for s, _ in res), \
            [(i, k, s) for i, res in enumerate(results) for s, k in res if s != 200][:10]

        # 100 %: each institution's events, and only they, in its own streams
        keys = sorted(k.decode() for k in r.call("KEYS", "*"))
        assert all(re.fullmatch(r"cons\d\d:[a-z_]+", k) for k in keys), keys
        for i in range(N):
            mine = [k for k in keys if k.startswith(f"cons{i:02d}:")]
            events = [check_cloudevent(json.dumps(redis_event(f))) for k in mine
                      for _, f in stream(r, k)]
            assert len(events) == per_inst, (i, len(events))
            assert {e["almainstitution"] for e in events} == {code(i)}
            assert {e["source"] for e in events} == {f"urn:alma:{code(i)}"}

        # every cross-signed forgery, all 50 x 49 pairs (the body names i, the signature is
        # j's): refused, counted against the named institution, the answer naming neither j
        # nor its secret. Small bodies, so that the classification budget (32 MiB per
        # worker) covers them all without waiting for it to refill.
        def forge(i):
            out = []
            for j in range(N):
                if j != i:
                    body = json.dumps({"id": f"forged-{i}-{j}", "action": "LOAN",
                                       "institution": {"value": code(i)}}).encode()
                    status, _, data = cl.post(body, sign(body, secret(j)))
                    out.append((status, code(j) in data.decode() or secret(j) in data.decode()))
            return out

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            forged = [x for res in ex.map(forge, range(N)) for x in res]
        assert len(forged) == N * (N - 1) and set(forged) == {(401, False)}
        body_src = samples()[0][1]
        # a signature under no profile's secret, and none at all: refused as signature
        body = json_body(body_src, code(3), new_id="nobody")
        assert cl.post(body, sign(body, "not anyone's"))[0] == 401
        assert cl.post(body, "")[0] == 401
        # the URL names another institution than the body (path or query form)
        body = json_body(body_src, code(4), new_id="mismatch")
        for path in (f"/webhook/{code(5)}", f"/webhook?institution={code(5)}",
                     f"/webhook/{code(4)}?institution={code(5)}", "/webhook/no%20code"):
            status, _, data = cl.post(body, sign(body, secret(4)), path)
            assert status == 401, (path, status, data)
        # the body names no institution at all
        bare = json.dumps({"id": "bare", "action": "LOAN"}).encode()
        assert cl.post(bare, sign(bare, secret(0)))[0] == 401
        assert cl.post(bare, sign(bare, secret(0)), f"/webhook/{code(0)}")[0] == 401

        # counted: 49 forgeries per institution, each against the institution the body named
        m = d.metrics()
        for i in range(N):
            assert f'almabridge_institution_refused_total{{institution="{code(i)}",' \
                   f'reason="forgery"}} {N - 1}\n' in m, i
            assert f'almabridge_institution_requests_total{{institution="{code(i)}",' \
                   f'status="200"}} {per_inst}\n' in m, i
        assert metric(d, "almabridge_institution_refused_total", institution=code(3),
                      reason="signature") == 2
        assert metric(d, "almabridge_institution_refused_total", institution=code(4),
                      reason="url") == 4
        assert metric(d, "almabridge_forgery_checks_skipped_total") == 0
        assert metric(d, "almabridge_institutions") == N
        # nothing refused was stored
        total = sum(len(stream(r, k)) for k in keys)
        assert total == N * per_inst
        # the warning names both codes (rate-limited: the first, then a count of the others)
        assert re.search(r"forgery refused: .* names institution 01CONS\d\d_INST but is signed "
                         r"with the secret of institution 01CONS\d\d_INST", d.stderr()), \
            d.stderr()[-2000:]

        # the challenge on every URL form
        for path in (f"/webhook/{code(7)}?challenge=abc", f"/webhook?institution={code(7)}"
                     "&challenge=abc", "/webhook?challenge=abc"):
            assert cl.get(path) == (200, b'{"challenge":"abc"}'), path
        assert cl.get(f"/webhook/{code(7)}/x?challenge=abc")[0] == 404
        assert_no_secret_logged(d, [secret(i) for i in range(N)])


def test_fifty_institutions_file_sink_records_each(daemon_factory, tmp_path):
    """The same 50 profiles with the file sink: a JSON and an XML webhook of each, every
    one stored with its own institution (routes do not apply to the file sink)."""
    d, _ = start_consortium(daemon_factory, tmp_path, [])
    cl = Client(d.port)
    jsrc, xsrc = samples()[0][1], xml_fixtures()[0][1]

    def send(i):
        c = code(i)
        body = json_body(jsrc, c, new_id=f"file-{i}")
        xml = xml_body(xsrc, c)
        return (cl.post(body, sign(body, secret(i)), f"/webhook/{c}")[0],
                cl.post(xml, sign(xml, secret(i)), ctype="application/xml")[0])

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        assert set(ex.map(send, range(N))) == {(200, 200)}
    wait_until(lambda: len(d.events()) == 2 * N, 10, d.stderr)
    by_inst = {}
    for e in d.events():
        by_inst.setdefault(e["almainstitution"], []).append(e)
    assert sorted(by_inst) == sorted(code(i) for i in range(N))
    for i in range(N):
        evs = by_inst[code(i)]
        assert len(evs) == 2 and {e["source"] for e in evs} == {f"urn:alma:{code(i)}"}
        assert f"file-{i}" in {e["id"] for e in evs}


# ---- the file sink, --config sections, allowlists, unknown institutions ----------------------

def test_file_sink_config_sections_allow_and_unknown(daemon_factory, tmp_path):
    conf = tmp_path / "almabridge.conf"
    conf.write_text("# options first, then the profiles\nlog-level = info\n\n"
                    f'[{code(0)}]\nsecret = "{secret(0)}"\n'
                    f'[{code(1)}]\nsecret = "{secret(1)}"\nallow = 192.0.2.0/24, 2001:db8::/32\n'
                    f'[{code(2)}]\nsecret = "{secret(2)}"\nsecret = "{secret(2, 1)}"\n'
                    "allow = 127.0.0.0/8\nroute = ignored.by.the.file.sink\n")
    conf.chmod(0o600)
    d = daemon_factory(["--config", str(conf)], secret=None)
    cl = Client(d.port)
    src = samples()[0][1]
    ok = []
    for i, gen in ((0, 0), (2, 0), (2, 1)):
        body = json_body(src, code(i), new_id=f"ok-{i}-{gen}")
        assert cl.post(body, sign(body, secret(i, gen)))[0] == 200
        ok.append((f"ok-{i}-{gen}", code(i)))
    xml = xml_body(xml_fixtures()[0][1], code(0))
    assert cl.post(xml, sign(xml, secret(0)), ctype="application/xml")[0] == 200
    # institution 1 allows 192.0.2.0/24 only: 403 like --allow, before the signature
    body = json_body(src, code(1), new_id="not-allowed")
    status, _, data = cl.post(body, sign(body, secret(1)))
    assert status == 403 and b"not allowed" in data
    assert metric(d, "almabridge_institution_refused_total", institution=code(1),
                  reason="allow") == 1
    # nor is a body that cannot become an event kept as its dead letter
    junk = b"no webhook at all"
    assert cl.post(junk, sign(junk, secret(1)), f"/webhook/{code(1)}", "text/plain")[0] == 415
    dl = d.file + ".deadletter"
    assert not os.path.exists(dl) or open(dl, "rb").read() == b""
    # an institution without a profile: 503 with Retry-After, counted, logged
    body = json_body(src, "01NEWMEMBER_INST", new_id="new")
    status, headers, data = cl.post(body, sign(body, "whatever"))
    assert status == 503 and "Retry-After" in headers, (status, headers, data)
    assert metric(d, "almabridge_unknown_institution_total") == 1
    wait_until(lambda: "institution 01NEWMEMBER_INST, which has no profile" in d.stderr(), 5,
               d.stderr)
    # the file sink records the institution in every event
    wait_until(lambda: len(d.events()) == 4, 10, d.stderr)
    got = [(e["id"], e["almainstitution"]) for e in d.events()]
    assert sorted(got[:3]) == sorted(ok) and got[3][1] == code(0)
    assert_no_secret_logged(d, [secret(0), secret(1), secret(2), secret(2, 1)])


def test_unknown_institution_refuse(daemon_factory, tmp_path):
    d, _ = start_consortium(daemon_factory, tmp_path, ["--unknown-institution", "refuse"],
                            insts=[(0, 0)])
    body = json_body(samples()[0][1], "01OTHER_INST")
    status, headers, _ = Client(d.port).post(body, sign(body, secret(0)))
    assert status == 401 and "Retry-After" not in headers
    assert metric(d, "almabridge_unknown_institution_total") == 1


# ---- the spool forwards with the institution's route --------------------------------------

def test_spool_forwards_to_the_institutions_stream(daemon_factory, tmp_path):
    """Redis away: webhooks of two institutions are spooled (200); when it is back, the
    forwarder writes each into its own institution's stream, as the front end would have."""
    with RedisServer(appendonly=True, appendfsync="always") as redis:
        d, _ = start_consortium(daemon_factory, tmp_path,
                                ["--sink", "redis", "--redis", redis.url,
                                 "--spool", str(tmp_path / "spool")], insts=[(0, 0), (1, 0)])
        wait_all_ready(d)
        redis.stop()
        cl = Client(d.port)
        src = samples()[0][1]
        for i in (0, 1):
            for n in range(3):
                body = json_body(src, code(i), new_id=f"spooled-{i}-{n}")
                assert cl.post(body, sign(body, secret(i)))[0] == 200
        wait_until(lambda: metric(d, "almabridge_spooled_total") >= 6, 10, d.stderr)
        redis.start()
        action = json.loads(src)["action"].lower()
        with Resp(redis.port) as r:
            def ids(i):
                return sorted(f["id"] for _, f in stream(r, f"cons{i:02d}:{action}"))
            for i in (0, 1):
                wait_until(lambda i=i: ids(i) == [f"spooled-{i}-{n}" for n in range(3)], 30,
                           lambda: f"{ids(0)} {ids(1)} {d.stderr()[-2000:]}")
            assert r.call("KEYS", "alma:*") == []


# ---- reload under load ------------------------------------------------------------------------

def test_reload_add_remove_rotate_under_load(daemon_factory, tmp_path):
    with RedisServer() as redis:
        keep = list(range(2, 12))
        removed, rotated, added = 0, 1, 40
        insts = [(i, 0) for i in [removed, rotated] + keep]
        d, prof = start_consortium(daemon_factory, tmp_path,
                                   ["--sink", "redis", "--redis", redis.url], insts=insts)
        wait_all_ready(d)
        cl = Client(d.port)
        src = samples()[0][1]
        stop = threading.Event()
        answers = []

        def load(t):
            n = 0
            while not stop.is_set():
                i = keep[(t + n) % len(keep)]
                body = json_body(src, code(i), new_id=f"load-{t}-{n}")
                answers.append((cl.post(body, sign(body, secret(i)),
                                        f"/webhook/{code(i)}" if n % 2 else "/webhook")[0], i))
                n += 1

        threads = [threading.Thread(target=load, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(answers) > 50, 20, "load to start")
            # reloads while the load runs, each changing the set (an institution added or
            # removed, another rotated); the last one adds, removes and rotates at once
            for k in range(8):
                churn = [(rotated, k % 2)] + ([(added + 1 + k, 0)] if k % 2 else [])
                write_profiles(prof, churn + [(removed, 0)] + [(i, 0) for i in keep],
                               str(tmp_path))
                d.proc.send_signal(signal.SIGHUP)
                wait_until(lambda k=k: metric(d, "almabridge_reloads_total") == k + 1, 10,
                           d.stderr)
                before = len(answers)
                wait_until(lambda: len(answers) > before + 20, 20, "load after a reload")
            write_profiles(prof, [(rotated, 1), (added, 0)] + [(i, 0) for i in keep],
                           str(tmp_path))
            d.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: metric(d, "almabridge_reloads_total") == 9, 10, d.stderr)
            before = len(answers)
            wait_until(lambda: len(answers) > before + 50, 20, "load after the reload")

            body = json_body(src, code(added), new_id="added")
            assert cl.post(body, sign(body, secret(added)))[0] == 200
            body = json_body(src, code(removed), new_id="removed")
            assert cl.post(body, sign(body, secret(removed)))[0] == 503
            body = json_body(src, code(rotated), new_id="rotated")
            assert cl.post(body, sign(body, secret(rotated, 1)))[0] == 200
            assert cl.post(body, sign(body, secret(rotated, 0)))[0] == 401

            # a reload that fails keeps the running set
            with open(prof, "a") as f:
                f.write("[BROKEN\n")
            d.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: metric(d, "almabridge_reload_failures_total") == 1, 10, d.stderr)
            assert "line" in d.stderr() and "malformed section header" in d.stderr()
            body = json_body(src, code(added), new_id="added-2")
            assert cl.post(body, sign(body, secret(added)))[0] == 200
            before = len(answers)
            wait_until(lambda: len(answers) > before + 20, 20, "load after the failed reload")
        finally:
            stop.set()
            for t in threads:
                t.join()
        bad = [a for a in answers if a[0] != 200]
        assert not bad and len(answers) > 300, (bad[:10], len(answers))
        assert_no_secret_logged(d, [secret(i, g) for i in range(N) for g in (0, 1)])


# ---- bad configurations: exit 2, file and line named, nothing listening -----------------------

BAD = [
    ("[A]\nsecret = x\ncolor = red\n", "line 3: unknown key \"color\""),
    ("[A\nsecret = x\n", "line 1: malformed section header"),
    ("[A]\nroute = alma.{action}\n", "line 1: institution A has no secret"),
    ("[A]\nsecret-file = /nonexistent/a.secrets\n", "line 2: cannot read secret file "
                                                    "/nonexistent/a.secrets"),
    ("secret = x\n", "line 1: \"secret\" outside a section"),
    ("[A]\nsecret = x\n[A]\nsecret = y\n", "line 3: institution A is already defined"),
    ("# nothing\n", "no institution profile"),
]


@pytest.mark.parametrize("text,want", BAD, ids=[w.split(":")[0] + str(i)
                                                 for i, (_, w) in enumerate(BAD)])
def test_bad_profiles_exit_2_before_listening(tmp_path, text, want):
    prof = tmp_path / "bad.conf"
    prof.write_text(text)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ALMABRIDGE_SECRET"}
    p = subprocess.run([BIN, "--institutions", str(prof), "--listen", f"127.0.0.1:{port}",
                        "--file", str(tmp_path / "ev.jsonl")], env=env, capture_output=True,
                       timeout=30)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert str(prof) in err and want in err, err
    assert "listening" not in err and not (tmp_path / "ev.jsonl").exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("extra,env,want", [
    (["--secret-file", "/etc/hostname"], {}, "remove --secret-file"),
    ([], {"ALMABRIDGE_SECRET": "global"}, "unset ALMABRIDGE_SECRET"),
    (["--insecure-skip-signature"], {}, "remove --insecure-skip-signature"),
])
def test_one_source_of_secrets(tmp_path, extra, env, want):
    prof = tmp_path / "ok.conf"
    prof.write_text("[A]\nsecret = x\n")
    e = {k: v for k, v in os.environ.items() if k != "ALMABRIDGE_SECRET"}
    e.update(env)
    p = subprocess.run([BIN, "--institutions", str(prof), "--check-config"] + extra, env=e,
                       capture_output=True, timeout=30)
    assert p.returncode == 2 and want in p.stderr.decode(), p.stderr


# ---- dead letters in consortium mode --------------------------------------------------------

def test_dead_letter_needs_the_urls_institution(daemon_factory, tmp_path):
    """A body that cannot become an event names no institution: only a URL that names one
    ({path}/{code}) binds it, and then only that institution's own secret stores it as a
    dead letter (200). Without the URL's code, or signed by another member, it is refused
    as before and nothing is stored."""
    d, _ = start_consortium(daemon_factory, tmp_path, [], insts=[(0, 0), (1, 0)])
    cl = Client(d.port)
    junk = b"no webhook at all \x00\xff"
    status, _, data = cl.post(junk, sign(junk, secret(0)), f"/webhook/{code(0)}", "text/plain")
    assert status == 200 and json.loads(data)["status"] == "dead-lettered", data
    # signed by member 1 but sent to member 0's URL: not stored
    assert cl.post(junk, sign(junk, secret(1)), f"/webhook/{code(0)}", "text/plain")[0] == 415
    # no institution in the URL: nothing can bind the signature
    assert cl.post(junk, sign(junk, secret(0)), "/webhook", "text/plain")[0] == 415
    dl = d.file + ".deadletter"
    wait_until(lambda: os.path.exists(dl), 5, d.stderr)
    recs = [json.loads(l) for l in open(dl, "rb").read().splitlines()]
    assert len(recs) == 1 and recs[0]["almasignature"] == sign(junk, secret(0))
    assert recs[0]["almainstitution"] == code(0)  # what replay checks it against
    assert d.events() == []
