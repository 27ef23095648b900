"""Start the built almabridge daemon on a free port and talk HTTP to it.

Signatures are computed independently of the daemon with Python's hmac module. Every event
read back from a sink goes through check_cloudevent() (the CloudEvents Python SDK and the
spec's attribute rules); Kafka messages through check_kafka_event() as well."""
import base64
import datetime
import glob
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import re
import threading
import time

import cloudevents.conversion
import cloudevents.http
import cloudevents.kafka

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("ALMABRIDGE_BUILD", "build"))
BIN = os.path.join(BUILD, "almabridge")
SHIM = os.path.join(BUILD, "shim", "slowsync.so")
SAMPLES = os.environ.get("ALMABRIDGE_SAMPLES", os.path.join(ROOT, "tests", "fixtures", "alma"))
XML_FIXTURES = os.path.join(ROOT, "tests", "fixtures", "xml")
SECRET = "test-secret-ünïcødé"


def wait_until(cond, timeout=10, what="condition"):
    """Poll cond() until it returns something true (returned), or fail after timeout
    seconds; `what` (a string, or a callable giving one, e.g. the daemon's stderr) says
    what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for "
                         f"{what() if callable(what) else what}")


def sign(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def samples():
    """[(name, bytes)] of every JSON sample."""
    out = []
    for p in sorted(glob.glob(os.path.join(SAMPLES, "*.json"))):
        with open(p, "rb") as f:
            out.append((os.path.basename(p)[:-5], f.read()))
    assert out, f"no samples found in {SAMPLES}"
    return out


def xml_fixtures():
    out = []
    for p in sorted(glob.glob(os.path.join(XML_FIXTURES, "*.xml"))):
        with open(p, "rb") as f:
            out.append((os.path.basename(p)[:-4], f.read()))
    return out


def with_id(body: bytes, new_id: str) -> bytes:
    """A JSON sample with its envelope id replaced (keeps the rest byte-for-byte)."""
    d = json.loads(body)
    old = d["id"]
    return body.replace(f'"{old}"'.encode(), f'"{new_id}"'.encode(), 1)


# ---- CloudEvents validation (issue 8, item 13) -----------------------------------------------

# RFC 3986 URI-reference, by character classes: a scheme (optional), then only unreserved,
# sub-delims, ":", "@", "/", "?", "#" and well-formed percent escapes.
_URI_REF = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:)?"
                      r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?#]|%[0-9A-Fa-f]{2})*$")
# RFC 3339 date-time (section 5.6), upper-case T and Z as almabridge writes them.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})$")
_ATTR_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_TYPE = re.compile(r"^[a-z0-9._-]+$")


def check_cloudevent(raw):
    """raw (str or bytes, one structured-mode JSON CloudEvent) is parsed by the CloudEvents
    SDK and every attribute is valid for CloudEvents 1.0: returns the parsed JSON (dict).
    Fails with an AssertionError naming the attribute otherwise."""
    doc = json.loads(raw)
    event = cloudevents.http.from_json(raw)  # the SDK refuses missing required attributes
    attrs = event.get_attributes()
    assert attrs["specversion"] == "1.0", attrs
    for name, value in doc.items():
        assert name == "data" or _ATTR_NAME.match(name), f"attribute name {name!r}"
        if name != "data":
            assert isinstance(value, str) and value != "", f"{name}={value!r}"
            assert attrs[name] == value, name
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in attrs["id"]), attrs["id"]
    assert _URI_REF.match(attrs["source"]), f"source {attrs['source']!r} is no URI reference"
    assert _TYPE.match(attrs["type"]), f"type {attrs['type']!r}"
    if "time" in attrs:
        assert _RFC3339.match(attrs["time"]), f"time {attrs['time']!r} is not RFC 3339"
        datetime.datetime.fromisoformat(attrs["time"].replace("Z", "+00:00"))
    assert attrs["datacontenttype"] == "application/json", attrs
    assert isinstance(doc["data"], dict) and event.get_data() == doc["data"]
    # the SDK writes it back as an equal event
    again = cloudevents.http.from_json(cloudevents.conversion.to_json(event))
    assert again.get_attributes() == attrs and again.get_data() == doc["data"]
    return doc


def redacted(obj, names=("pin_number", "password")):
    """obj without the members the default --redact removes (any depth)."""
    if isinstance(obj, dict):
        return {k: redacted(v, names) for k, v in obj.items() if k not in names}
    if isinstance(obj, list):
        return [redacted(v, names) for v in obj]
    return obj


def redis_event(fields):
    """The CloudEvent (dict, data parsed) of a Redis stream entry's fields (bytes or str) in
    either content mode: structured = one field "event" holding the JSON event; binary = one
    field per attribute plus "data"."""
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in fields.items()}
    if "event" in f:
        assert set(f) == {"event"}, f  # structured: nothing beside it
        return json.loads(f["event"])
    ev = {k: v for k, v in f.items() if k != "data"}
    if "data" in f:
        ev["data"] = json.loads(f["data"])
    return ev


def check_kafka_event(msg):
    """msg (from KafkaBroker.consume) is a CloudEvent exactly as the Kafka protocol binding
    1.0 has it, in binary or structured mode, read intact by the SDK; no hybrid. Binary:
    ce_specversion and the other attributes as ce_ headers, content-type = datacontenttype,
    the data as value, read by from_binary(). Structured: content-type
    application/cloudevents+json and no ce_ header, the event as value, read by
    from_structured(). The key is the partitionkey. Returns the event (dict, data parsed)."""
    headers = msg["headers"] or {}
    if "ce_specversion" in headers:
        assert headers.get("content-type") == "application/json", headers
        doc = {k[3:]: v for k, v in headers.items() if k.startswith("ce_")}
        doc["datacontenttype"] = headers["content-type"]
        doc["data"] = json.loads(msg["value"])
        check_cloudevent(json.dumps(doc))
        event = cloudevents.kafka.from_binary(cloudevents.kafka.KafkaMessage(
            headers={k: v.encode() for k, v in headers.items()}, key=msg["key"],
            value=msg["value"]))
    else:
        assert headers.get("content-type") == "application/cloudevents+json", headers
        assert not [h for h in headers if h.startswith("ce_")], headers  # no hybrid
        doc = check_cloudevent(msg["value"])
        # Without the header: the 1.x SDK's from_structured() lets content-type replace
        # datacontenttype (docs/CLOUDEVENTS.md)
        event = cloudevents.kafka.from_structured(
            cloudevents.kafka.KafkaMessage(headers={}, key=msg["key"], value=msg["value"]))
    for name, value in doc.items():
        # the SDKs read the key as partitionkey (the default key is the partitionkey)
        if name != "data" and not (name == "partitionkey" and msg["key"] is not None):
            assert event[name] == value, name
    if msg["key"] is not None:
        assert event["partitionkey"] == msg["key"]
    assert event.get_data() == doc["data"]
    return doc


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


class Daemon:
    """One almabridge process. Use as a context manager or call stop()."""

    def __init__(self, args=(), secret=SECRET, env=None, tmpdir=None, file_path=None,
                 preload_shim=False, threads=2, drain_grace=0):
        self.tmp = tmpdir or tempfile.mkdtemp(prefix="almabridge-e2e-")
        self.port = free_port()
        self.secret = secret
        self.file = file_path or os.path.join(self.tmp, "events.jsonl")
        self.args = ["--listen", f"127.0.0.1:{self.port}", "--file", self.file,
                     "--threads", str(threads), "--drain-grace", str(drain_grace)] + list(args)
        self.env = dict(os.environ)
        self.env.pop("ALMABRIDGE_SECRET", None)
        if secret is not None:
            self.env["ALMABRIDGE_SECRET"] = secret
        if preload_shim:
            self.env["LD_PRELOAD"] = SHIM
            self.env["SLOWSYNC_GATE"] = os.path.join(self.tmp, "gate")
            self.env["SLOWSYNC_FAIL"] = os.path.join(self.tmp, "fail")
            self.env["ASAN_OPTIONS"] = "verify_asan_link_order=0:" + self.env.get("ASAN_OPTIONS", "")
        self.env.setdefault("TSAN_OPTIONS", f"suppressions={ROOT}/tests/tsan.supp")
        self.env.update(env or {})
        self.stderr_path = os.path.join(self.tmp, "stderr.log")
        self.proc = None
        self.scheme = "http"

    # -- life cycle --
    def start(self, wait=True):
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([BIN] + self.args, env=self.env, stdout=self._err,
                                     stderr=self._err, cwd=self.tmp)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"almabridge exited with {self.proc.returncode}: {self.stderr()}")
            try:
                if self.get("/healthz", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"almabridge did not become healthy: {self.stderr()}")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.stop()
        if self.proc and self.proc.returncode not in (0, None) and exc[0] is None:
            raise AssertionError(f"almabridge exited with {self.proc.returncode}: {self.stderr()[-3000:]}")

    # -- HTTP --
    def conn(self, timeout=10):
        if self.scheme == "https":
            import ssl
            ctx = ssl.create_default_context(cafile=self.cafile)
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=ctx)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=10, conn=None):
        c = conn or self.conn(timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            if conn is None:
                c.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, body, content_type="application/json", signature=True, path="/webhook",
             headers=None, **kw):
        h = {}
        if content_type:
            h["Content-Type"] = content_type
        if signature is True:
            h["X-Exl-Signature"] = sign(body, self.secret or "")
        elif signature:
            h["X-Exl-Signature"] = signature
        h.update(headers or {})
        return self.request("POST", path, body=body, headers=h, **kw)

    def events(self):
        """The file sink's lines, each checked by check_cloudevent() and parsed."""
        if not os.path.exists(self.file):
            return []
        with open(self.file, "rb") as f:
            return [check_cloudevent(l) for l in f.read().splitlines() if l.strip()]

    def metrics(self):
        return self.get("/metrics").body.decode()


class KeepAlive:
    """POSTs to a daemon over one keep-alive connection, opened when first needed and
    dropped after a network error (reset, timeout) so that the next POST opens a new one."""

    def __init__(self, d, timeout=15):
        self.d, self.timeout, self.c = d, timeout, None

    def post(self, body):
        """The answer's status, or -1 after a network error."""
        try:
            self.c = self.c or self.d.conn(timeout=self.timeout)
            return self.d.post(body, conn=self.c).status
        except OSError:
            self.close()
            return -1

    def close(self):
        if self.c:
            self.c.close()
        self.c = None


class Posters:
    """One thread per id, started at once, each POSTing body with that id; statuses holds
    the answers in the order they arrive, join() waits for all and returns them."""

    def __init__(self, d, body, ids):
        self.statuses = []
        self.threads = [threading.Thread(
            target=lambda i=i: self.statuses.append(d.post(with_id(body, i)).status))
            for i in ids]
        for t in self.threads:
            t.start()

    def join(self):
        for t in self.threads:
            t.join()
        return self.statuses


def go_build(tmp_path, pkg, name):
    """Build the Go program pkg of tests/sdk/go (the CloudEvents Go SDK's module) into
    tmp_path/name with the machine's go; skips when there is no go >= 1.23."""
    import pytest
    import shutil
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go")
                                else None)
    v = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout if go else ""
    if not re.fullmatch(r"go1\.(2[3-9]|[3-9]\d)(\.\d+)?\S*\n?", v):
        # Debian 12's golang-go is 1.19; sdk-go 2.16 needs 1.23 (golang.org/dl, backports)
        pytest.skip("no go toolchain >= 1.23 on this machine (%r): the Go SDK check needs one"
                    % v.strip())
    out = str(tmp_path / name)
    p = subprocess.run([go, "build", "-o", out, pkg], cwd=os.path.join(ROOT, "tests", "sdk", "go"),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return out
