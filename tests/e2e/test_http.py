"""End-to-end tests of the daemon on its embedded default (the fsync'd file sink)."""
import json
import os
import signal
import socket
import subprocess
import threading
import time
import http.client

import pytest

from daemon import (BIN, SECRET, Daemon, Posters, redacted, samples, sign, wait_until, with_id,
                    xml_fixtures)

SAMPLE = dict(samples())
LOAN = SAMPLE["loan_created"]


# ---- challenge ----------------------------------------------------------------------

def test_challenge_echoes_json_escaped(daemon):
    r = daemon.get("/webhook?challenge=abc123")
    assert r.status == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"challenge": "abc123"}
    # any UTF-8, quotes and backslashes come back JSON-escaped
    r = daemon.get("/webhook?challenge=%22h%C3%A9llo%5C%E2%9C%93%22")
    assert r.status == 200 and r.json() == {"challenge": '"héllo\\✓"'}


def test_challenge_missing_is_400(daemon):
    r = daemon.get("/webhook")
    assert r.status == 400 and "challenge" in r.json()["error"]


# ---- signatures ---------------------------------------------------------------------

def test_every_sample_accepted_and_in_file_once(daemon):
    for name, body in samples():
        r = daemon.post(body)
        assert r.status == 200, (name, r)
        assert r.json() == {"id": json.loads(body)["id"], "status": "accepted"}
    events = daemon.events()
    assert [e["id"] for e in events] == [json.loads(b)["id"] for _, b in samples()]
    for (name, body), ev in zip(samples(), events):
        src = json.loads(body)
        assert ev["specversion"] == "1.0"
        assert ev["source"] == "urn:alma:" + src["institution"]["value"]
        expected = "com.exlibrisgroup.alma." + src["action"].lower()
        if src.get("event"):
            expected += "." + src["event"]["value"].lower()
        assert ev["type"] == expected
        assert ev["time"] == src["time"]
        assert ev["datacontenttype"] == "application/json"
        assert ev["almaaction"] == src["action"]
        assert ev["data"] == redacted(src)  # every field kept but the redacted ones


def test_wrong_and_missing_signature_401(daemon):
    r = daemon.post(LOAN, signature=sign(LOAN, "another-secret"))
    assert r.status == 401 and "signature" in r.json()["error"].lower()
    r = daemon.post(LOAN, signature=False)
    assert r.status == 401 and "missing" in r.json()["error"]
    r = daemon.post(LOAN + b" ", signature=sign(LOAN))  # one byte changed
    assert r.status == 401
    assert daemon.events() == []


def test_signature_header_name_case_insensitive(daemon):
    r = daemon.post(LOAN, signature=False, headers={"x-exl-SIGNATURE": sign(LOAN)})
    assert r.status == 200


def test_signature_over_raw_bytes_not_reserialised(daemon):
    # the same webhook with other whitespace and key order: signed over its own bytes
    body = json.dumps(json.loads(LOAN), indent=None, sort_keys=True, ensure_ascii=False).encode()
    assert daemon.post(body).status == 200
    # non-ASCII body
    body = with_id(SAMPLE["user_update"], "99887766").replace(b"American", "Amérïcan ✓".encode())
    assert daemon.post(body).status == 200
    assert daemon.events()[-1]["data"]["institution"]["desc"].startswith("Amérïcan ✓")


def test_secret_file_rotation(daemon_factory, tmp_path):
    sf = tmp_path / "secrets"
    sf.write_text("# old and new secret\nold-sécret\n\nnew-secret\n")
    d = daemon_factory(["--secret-file", str(sf)], secret=None)
    assert d.post(LOAN, signature=sign(LOAN, "old-sécret")).status == 200
    assert d.post(with_id(LOAN, "1"), signature=sign(with_id(LOAN, "1"), "new-secret")).status == 200
    assert d.post(LOAN, signature=sign(LOAN, "third")).status == 401


def test_no_secret_refuses_to_start(tmp_path):
    p = subprocess.run([BIN, "--listen", "127.0.0.1:0", "--file", str(tmp_path / "f")],
                       env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=10)
    assert p.returncode == 2
    assert "secret" in p.stderr and p.stderr.count("\n") == 1


def test_insecure_skip_signature_warns(daemon_factory):
    d = daemon_factory(["--insecure-skip-signature"], secret=None)
    assert d.post(LOAN, signature=False).status == 200
    assert "NOT authenticated" in d.stderr()


def test_secret_not_in_logs_or_ps(daemon_factory):
    d = daemon_factory(["--log-level", "debug"])
    d.post(LOAN)
    d.post(LOAN, signature="bad")
    with open(f"/proc/{d.proc.pid}/cmdline", "rb") as f:
        assert SECRET.encode() not in f.read()
    with open(f"/proc/{d.proc.pid}/environ", "rb") as f:
        assert SECRET.encode() not in f.read()
    d.stop()
    assert SECRET not in d.stderr()
    # never bodies: personal data from the sample is not logged
    assert "AU8675309" not in d.stderr()


# ---- content types and bad bodies -----------------------------------------------------

def test_oversize_413_json(daemon_factory):
    d = daemon_factory(["--max-body", "1000"])
    r = d.post(b"{" + b" " * 5000 + b"}")
    assert r.status == 413 and "1000" in r.json()["error"]


def test_oversize_chunked_stopped(daemon_factory):
    d = daemon_factory(["--max-body", "100000"])
    s = socket.create_connection(("127.0.0.1", d.port))
    s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"a" * 65536
    sent = 0
    try:
        for _ in range(200):  # would be 13 MB
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except OSError:
        pass
    s.settimeout(5)
    data = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    except OSError:
        pass
    s.close()
    assert b" 413 " in data.split(b"\r\n")[0]
    assert sent < 13_000_000 or b"413" in data


def test_content_types(daemon_factory):
    # with --dead-letter off: the answers a signed body that cannot become an event gets
    daemon = daemon_factory(["--dead-letter", "off"])
    assert daemon.post(LOAN, content_type="application/json; charset=utf-8").status == 200
    r = daemon.post(LOAN, content_type="image/png")
    assert r.status == 415 and "Content-Type" in r.json()["error"]
    # absent or generic: detected from the first byte
    assert daemon.post(with_id(LOAN, "5"), content_type=None).status == 200
    assert daemon.post(with_id(LOAN, "6"), content_type="application/octet-stream").status == 200
    assert daemon.post(b"hello", content_type=None).status == 415


def test_malformed_and_not_webhook(daemon_factory):
    # with --dead-letter off: the answers a signed body that cannot become an event gets
    daemon = daemon_factory(["--dead-letter", "off"])
    for body in [b'{"id": "1", "action": ', b"{]", b'{"id":"1"} trailing']:
        r = daemon.post(body)
        assert r.status == 400, body
        assert r.json()["error"]
    for body in [b"[1,2]", b'{"action":"LOAN"}', b'{"id":"1"}', b'"x"', b'{"id":"","action":"X"}']:
        r = daemon.post(body)
        assert r.status == 422, (body, r)
    r = daemon.post(b"<webhook><id>1</id>", content_type="application/xml")
    assert r.status == 400
    assert daemon.events() == []


def test_odd_envelope_values_give_valid_cloudevents(daemon):
    """Issue 8 item 11: times in Alma's other forms, an institution code that is no URI
    part, an action with spaces: 200, and the event validates (Daemon.events() checks every
    line with the CloudEvents SDK); the values as sent stay in data."""
    cases = [
        ({"time": "26/01/2020 16:20"}, {"time": "2020-01-26T16:20:00Z"}),
        ({"time": "2020-01-26T16:20:00+0200"}, {"time": "2020-01-26T16:20:00+02:00"}),
        ({"time": "not a time"}, {"almatime": "not a time"}),
        ({"institution": {"value": "My Inst %zz<>", "desc": "x"}},
         {"source": "urn:alma:My%20Inst%20%25zz%3C%3E", "almainstitution": "My Inst %zz<>"}),
        ({"action": "Loan Now!", "event": {"value": "x y"}},
         {"type": "com.exlibrisgroup.alma.loan_now_.x_y", "almaaction": "Loan Now!"}),
    ]
    base = json.loads(LOAN)
    for i, (change, want) in enumerate(cases):
        body = dict(base, id=f"odd-{i}", **change)
        r = daemon.post(json.dumps(body).encode())
        assert r.status == 200, (change, r)
    events = daemon.events()
    assert [e["id"] for e in events] == [f"odd-{i}" for i in range(len(cases))]
    for ev, (change, want) in zip(events, cases):
        for k, v in want.items():
            assert ev[k] == v, (k, ev)
        if "almatime" in want:
            assert "time" not in ev
        for k, v in change.items():
            assert ev["data"][k] == v


def test_control_characters_and_repeated_envelope_fields_400(daemon_factory):
    """Issue 8 items 11 and 12: a control character in the id, or an envelope field given
    twice (the event would take the first, last-wins parsers the other): 400."""
    # with --dead-letter off: the answers a signed body that cannot become an event gets
    daemon = daemon_factory(["--dead-letter", "off"])
    bodies = [
        b'{"id":"a\\u0000b","action":"LOAN"}',
        b'{"id":"a\\nb","action":"LOAN"}',
        b'{"id":"1","action":"LOAN","id":"2"}',
        b'{"id":"1","action":"LOAN","action":"USER"}',
        b'{"id":"1","action":"LOAN","event":"A","event":"B"}',
        b'{"id":"1","action":"LOAN","institution":"A","institution":"B"}',
    ]
    for body in bodies:
        r = daemon.post(body)
        assert r.status == 400 and r.json()["error"], (body, r)
    r = daemon.post(b"<webhook><id>1</id><id>2</id><action>LOAN</action></webhook>",
                    content_type="application/xml")
    assert r.status == 400 and "repeats" in r.json()["error"], r
    assert daemon.events() == []


def test_xml_profiles_give_the_same_event(daemon):
    fixtures = dict(xml_fixtures())
    assert fixtures, "XML fixtures missing"
    for name, body in samples():
        if name not in fixtures:
            continue
        rx = daemon.post(fixtures[name], content_type="application/xml")
        assert rx.status == 200, (name, rx)
    by_id = {e["id"]: e for e in daemon.events()}
    for name, body in samples():
        if name in fixtures:
            src = json.loads(body)
            ev = by_id[src["id"]]
            assert ev["type"].startswith("com.exlibrisgroup.alma." + src["action"].lower())
            assert ev["source"] == "urn:alma:" + src["institution"]["value"]
            assert ev["data"]["institution"] == src["institution"]


def test_xxe_and_entity_expansion_refused(daemon_factory):
    # with --dead-letter off: the answers a signed body that cannot become an event gets
    daemon = daemon_factory(["--dead-letter", "off"])
    xxe = (b'<?xml version="1.0"?><!DOCTYPE w [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b"<webhook><id>1</id><action>&x;</action></webhook>")
    r = daemon.post(xxe, content_type="application/xml")
    assert r.status == 400 and b"root:" not in r.body
    lol = b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">' + b"".join(
        b'<!ENTITY %c "&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;">' % ((98 + i,) + (97 + i,) * 10)
        for i in range(9)) + b"]><webhook><id>1</id><action>&j;</action></webhook>"
    r = daemon.post(lol, content_type="application/xml")
    assert r.status == 400
    assert b"root:" not in open(daemon.file, "rb").read() if os.path.exists(daemon.file) else True
    assert daemon.get("/healthz").status == 200
    with open(f"/proc/{daemon.proc.pid}/status") as f:
        rss = [int(l.split()[1]) for l in f if l.startswith("VmRSS")][0]
    assert rss < 200_000  # kB: no expansion happened


def test_deep_nesting(daemon_factory):
    # with --dead-letter off: the answers a signed body that cannot become an event gets
    daemon = daemon_factory(["--dead-letter", "off"])
    assert daemon.post(b"[" * 100000 + b"]" * 100000).status == 400
    deep_xml = b"<webhook>" + b"<a>" * 5000 + b"</a>" * 5000 + b"</webhook>"
    assert daemon.post(deep_xml, content_type="text/xml").status == 400
    assert daemon.get("/healthz").status == 200


# ---- routing of methods and paths ------------------------------------------------------

def test_methods_paths_and_health(daemon):
    r = daemon.request("PUT", "/webhook", body=b"x")
    assert r.status == 405 and "POST" in r.headers["allow"] and r.json()["error"]
    r = daemon.get("/nope")
    assert r.status == 404 and r.json()["error"]
    assert daemon.get("/healthz").status == 200
    r = daemon.get("/readyz")
    assert r.status == 200 and r.json()["status"] == "ready"


def test_metrics(daemon):
    daemon.post(LOAN)
    daemon.post(LOAN, signature="bad")
    # a worker counts an answer right after sending it: poll until both are counted
    want = ['almabridge_requests_total{status="401",action="",event=""} 1',
            'almabridge_requests_total{status="200",action="LOAN",event="LOAN_CREATED"} 1']
    wait_until(lambda: all(w in daemon.metrics() for w in want), 5, daemon.metrics)
    m = daemon.metrics()
    assert 'almabridge_requests_total{status="200",action="LOAN",event="LOAN_CREATED"} 1' in m
    assert 'almabridge_sink_ready{sink="file"} 2' in m  # both workers' sinks can write
    assert 'almabridge_requests_total{status="401",action="",event=""} 1' in m
    assert 'almabridge_events_total{action="LOAN",event="LOAN_CREATED"} 1' in m
    assert "almabridge_sink_ack_seconds_bucket" in m
    assert "almabridge_requests_in_flight 0" in m


# ---- the sink: slow, failing, concurrent -------------------------------------------------

def test_concurrent_posts_each_once(daemon_factory):
    d = daemon_factory(threads=2)
    n_threads, per = 20, 15
    results = {}

    def worker(t):
        c = d.conn(timeout=30)
        for i in range(per):
            wid = f"{t:03d}{i:04d}"
            r = d.post(with_id(LOAN, wid), conn=c)
            results[wid] = r.status
        c.close()

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(results) == n_threads * per and set(results.values()) == {200}
    ids = [e["id"] for e in d.events()]
    assert sorted(ids) == sorted(results)  # each exactly once


def test_group_commit_shares_fsync(daemon_factory, tmp_path):
    """While one fsync is held back, the requests that queue up are written by one fsync."""
    d = daemon_factory(preload_shim=True)
    gate = tmp_path / "gate"
    gate.write_text("")
    posters = Posters(d, LOAN, [str(7000 + i) for i in range(30)])
    time.sleep(0.5)
    assert posters.statuses == []  # nobody answered before the sync
    gate.unlink()
    assert posters.join() == [200] * 30


def test_slow_disk_503_after_ack_timeout(daemon_factory, tmp_path):
    d = daemon_factory(["--ack-timeout", "300"], preload_shim=True)
    (tmp_path / "gate").write_text("")
    t0 = time.time()
    r = d.post(LOAN)
    assert r.status == 503 and r.headers["retry-after"]
    assert time.time() - t0 < 2
    (tmp_path / "gate").unlink()
    assert d.post(with_id(LOAN, "42")).status == 200


def test_failing_disk_503_and_readyz(daemon_factory, tmp_path):
    d = daemon_factory(preload_shim=True)
    (tmp_path / "fail").write_text("")
    r = d.post(LOAN)
    assert r.status == 503 and "retry" in r.json()["error"]
    assert d.get("/readyz").status == 503
    wait_until(lambda: 'almabridge_sink_ready{sink="file"} 0' in d.metrics(),
               what="sink_ready 0 in /metrics")
    (tmp_path / "fail").unlink()
    assert d.post(LOAN).status == 200
    assert d.get("/readyz").status == 200
    ids = [e["id"] for e in d.events()]
    assert ids.count(json.loads(LOAN)["id"]) == 1  # the failed batch was rolled back


def test_client_disconnects_while_waiting(daemon_factory, tmp_path):
    d = daemon_factory(preload_shim=True)
    (tmp_path / "gate").write_text("")
    for i in range(20):
        body = with_id(LOAN, str(8000 + i))
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"X-Exl-Signature: " + sign(body).encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        s.close()
    time.sleep(0.3)
    (tmp_path / "gate").unlink()
    wait_until(lambda: len(d.events()) == 20, what=lambda: "20 events, got %d" % len(d.events()))
    assert d.proc.poll() is None
    assert d.get("/healthz").status == 200
    assert len(d.events()) == 20  # stored all the same; Alma would retry and consumers dedupe
    wait_until(lambda: "almabridge_requests_in_flight 0" in d.metrics(), what=d.metrics)


def test_sigterm_with_requests_in_flight(daemon_factory, tmp_path):
    d = daemon_factory(preload_shim=True)
    (tmp_path / "gate").write_text("")
    answers = {}

    def send(i):
        wid = str(9000 + i)
        try:
            answers[wid] = d.post(with_id(LOAN, wid), timeout=20).status
        except OSError as e:
            answers[wid] = repr(e)

    ts = [threading.Thread(target=send, args=(i,)) for i in range(25)]
    for t in ts:
        t.start()
    time.sleep(0.5)
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    (tmp_path / "gate").unlink()
    for t in ts:
        t.join()
    assert d.proc.wait(20) == 0
    stored = {e["id"] for e in d.events()}
    ok = {k for k, v in answers.items() if v == 200}
    assert ok and ok <= stored  # every 200 is in the file
    assert all(v in (200, 503) for v in answers.values()), answers


def test_unwritable_file_is_startup_error(tmp_path):
    p = subprocess.run([BIN, "--listen", "127.0.0.1:0", "--file", "/nonexistent/dir/x.jsonl"],
                       env={"PATH": os.environ["PATH"], "ALMABRIDGE_SECRET": "s"},
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 2 and "/nonexistent/dir/x.jsonl" in p.stderr


def test_bad_options_exit_2(tmp_path):
    for args in (["--bogus"], ["--max-body", "abc"], ["--sink", "nope"], ["--config", "/nonexistent"]):
        p = subprocess.run([BIN] + args, env={"PATH": os.environ["PATH"], "ALMABRIDGE_SECRET": "s"},
                           capture_output=True, text=True, timeout=10)
        assert p.returncode == 2, args
        assert p.stderr.startswith("almabridge: ") and p.stderr.count("\n") == 1, p.stderr


def test_help_and_version():
    p = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0 and "--listen" in p.stdout and "--secret-file" in p.stdout
    p = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0 and p.stdout.startswith("almabridge ")
