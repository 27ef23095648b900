#!/usr/bin/env python3
"""A stand-in for Alma's REST API (the Jobs API part almabridge uses) for the
end-to-end tests, serving the shapes documented on Ex Libris' Developer
Network (sources: docs/MISSED_EVENTS.md, "Sources"):

  GET /almaws/v1/conf/jobs/{job_id}/instances
      ?submit_date_from=YYYY-MM-DD&submit_date_to=YYYY-MM-DD&limit=0..100&offset=N
      -> {"job_instance": [...], "total_record_count": N}  (no "job_instance"
         when the page is empty; Alma's JSON drops the XML's list wrappers)
  GET /almaws/v1/conf/jobs/{job_id}/instances/{instance_id}
      -> one job_instance (rest_job_instance.xsd: id, external_id, name,
         submitted_by, submit_time, start_time, end_time, progress, status
         {value, desc} from the systemJobStatus code table, status_date, alert,
         counter, job_info {id, name, type, category, link}, link)

with Alma's error bodies ({"errorsExist": true, "errorList": {"error":
[{"errorCode", "errorMessage", "trackingId"}]}, "result": null}): 400
UNAUTHORIZED "API-key not defined or not configured to allow this API." for a
missing or wrong `Authorization: apikey KEY`, 400 402215 "Invalid job id
format.", 402216 "Invalid job id.", 402218 "Invalid job instance id.", 400 for
a limit over 100 or a date that is not xs:date, and on demand 429
PER_SECOND_THRESHOLD / DAILY_THRESHOLD, 500 GENERAL_ERROR, or malformed JSON.

    from api_stub import AlmaApiStub

    with AlmaApiStub(key="k3y") as api:          # api.url, api.ca (with tls=True)
        api.add("M53", {"id": "123", ...})         # or api.add_instances(...)
        api.fail("429-second", count=2)            # the next 2 calls
        api.calls()                                # calls answered so far

The server runs as a child process (ServerProcess, tests/harness.py) on a free
loopback port, plain HTTP or, with tls=True, HTTPS with a certificate of a CA
made for the run (api.ca is that CA's PEM). Control requests go to /_stub/...
and are not counted as calls.

CLI: python3 tests/alma/api_stub.py --port N --key-file F [--cert F --cert-key F]
"""

import datetime
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from harness import ServerProcess, free_port  # noqa: E402

PREFIX = "/almaws/v1/conf/jobs/"
# Alma's answers (https://developers.exlibrisgroup.com/alma/apis/#error and #threshold, as
# captured by real clients' tests: see docs/MISSED_EVENTS.md "Sources"). The daily message
# is not confirmed (no source quotes it); clients match on errorCode only.
ERRORS = {
    "bad-key": (400, "UNAUTHORIZED", "API-key not defined or not configured to allow this API."),
    "429-second": (429, "PER_SECOND_THRESHOLD", "HTTP requests are more than allowed per second"),
    "429-daily": (429, "DAILY_THRESHOLD", "Daily threshold of API calls was reached."),
    "500": (500, "GENERAL_ERROR", "A general error occurred."),
}
XS_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(Z|[+-]\d{2}:\d{2})?$")


def error_body(code, message):
    return {"errorsExist": True,
            "errorList": {"error": [{"errorCode": code, "errorMessage": message,
                                     "trackingId": "E01-0712345678-ABCDE"}]},
            "result": None}


def instance(instance_id, job="M53", status="COMPLETED_SUCCESS", submit=None, end=None,
             name="Filter set by indication"):
    """A job instance as the Jobs API gives it (times: epoch seconds)."""
    submit = time.time() if submit is None else submit
    end = submit + 5 if end is None and status not in ("RUNNING", "QUEUED") else end

    def iso(t):
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    d = {
        "id": str(instance_id), "external_id": str(instance_id), "name": name,
        "submitted_by": {"value": "System", "desc": "System"},
        "submit_time": iso(submit), "start_time": iso(submit + 1),
        "progress": 100 if end else 40,
        "status": {"value": status, "desc": status.replace("_", " ").title()},
        "status_date": iso(end or submit)[:10] + "Z",
        "alert": [{"value": "alert_general_success", "desc": "The job completed successfully."}],
        "counter": [{"type": {"value": "c.jobs.records", "desc": "Records"}, "value": "4497"}],
        "job_info": {"id": job, "name": name, "description": "Filter a set job",
                     "type": {"value": "MANUAL", "desc": "Manual"},
                     "category": {"value": "METADATA_MANAGEMENT", "desc": "Metadata Management"},
                     "link": "/almaws/v1/conf/jobs/" + job},
        "link": "/almaws/v1/conf/jobs/%s/instances/%s" % (job, instance_id),
    }
    if end:
        d["end_time"] = iso(end)
    return d


class State:
    def __init__(self, key):
        self.key = key
        self.lock = threading.Lock()
        self.jobs = {}        # job id -> {instance id -> instance}
        self.mode = None      # a key of ERRORS, "malformed", or None
        self.mode_left = 0    # calls the mode applies to (-1: until changed)
        self.calls = 0
        self.paths = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None

    def log_message(self, fmt, *args):
        sys.stderr.write("api_stub: " + (fmt % args) + "\n")

    def send(self, status, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message):
        self.send(status, error_body(code, message))

    # -- control: /_stub/...

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"{}")
        st = self.state
        with st.lock:
            if self.path == "/_stub/instances":
                for job, inst in body:
                    st.jobs.setdefault(job, {})[inst["id"]] = inst
            elif self.path == "/_stub/jobs":
                for job in body:
                    st.jobs.setdefault(job, {})
            elif self.path == "/_stub/mode":
                st.mode, st.mode_left = body.get("mode"), body.get("count", -1)
            else:
                return self.send(404, {"error": "no such control"})
        self.send(200, {"ok": True})

    # -- the API

    def do_GET(self):
        st = self.state
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/_stub/calls":
            with st.lock:
                return self.send(200, {"calls": st.calls, "paths": st.paths})
        with st.lock:
            st.calls += 1
            st.paths.append(self.path)
            mode = st.mode
            if mode and st.mode_left != 0:
                st.mode_left -= 1 if st.mode_left > 0 else 0
            else:
                mode = None
        auth = self.headers.get("Authorization", "")
        if auth != "apikey " + st.key or mode == "bad-key":
            return self.error(*ERRORS["bad-key"])
        if mode in ERRORS:
            return self.error(*ERRORS[mode])
        if mode == "malformed":
            return self.send(200, b'{"job_instance": [{"id": "1", "status": ')
        if self.headers.get("Accept") != "application/json":
            return self.send(200, b"<?xml version=\"1.0\"?><job_instances/>")
        if not url.path.startswith(PREFIX):
            return self.error(400, "402215", "Invalid job id format.")
        parts = url.path[len(PREFIX):].split("/")
        with st.lock:
            job = st.jobs.get(urllib.parse.unquote(parts[0]))
            if job is None:
                return self.error(400, "402216", "Invalid job id.")
            if len(parts) == 2 and parts[1] == "instances":
                return self.list(job, urllib.parse.parse_qs(url.query))
            if len(parts) == 3 and parts[1] == "instances":
                inst = job.get(urllib.parse.unquote(parts[2]))
                if inst is None:
                    return self.error(400, "402218", "Invalid job instance id.")
                return self.send(200, inst)
        self.error(400, "402215", "Invalid job id format.")

    def list(self, job, q):
        try:
            limit = int(q.get("limit", ["10"])[0])
            offset = int(q.get("offset", ["0"])[0])
        except ValueError:
            return self.error(400, "40166411", "Parameter value invalid.")
        if not 0 <= limit <= 100 or offset < 0:
            return self.error(400, "40166411", "limit must be 0-100.")
        lo, hi = (q.get(k, [""])[0] for k in ("submit_date_from", "submit_date_to"))
        if any(d and not XS_DATE.match(d) for d in (lo, hi)):
            return self.error(400, "40166411", "Parameter value invalid.")
        lo, hi = lo[:10], hi[:10]
        rows = [i for i in job.values()
                if (not lo or i["submit_time"][:10] >= lo) and (not hi or i["submit_time"][:10] <= hi)]
        rows.sort(key=lambda i: i["submit_time"], reverse=True)
        page = [{k: v for k, v in i.items() if k != "counter"} for i in rows[offset:offset + limit]]
        body = {"total_record_count": len(rows)}
        if page:
            body["job_instance"] = page
        self.send(200, body)


def serve(port, key, cert=None, cert_key=None):
    Handler.state = State(key)
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, cert_key)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    httpd.serve_forever()


class AlmaApiStub(ServerProcess):
    """The stub as a child process. AlmaApiStub(key="k3y", tls=False)."""

    kind = "Alma API stub"
    log_name = "api_stub.log"
    tmp_prefix = "almabridge-alma-"

    def __init__(self, key="test-api-key", tls=False):
        super().__init__()
        self.key = key
        self.tls = tls
        self.ca = None

    @property
    def url(self):
        return "%s://%s:%d" % ("https" if self.tls else "http",
                               "localhost" if self.tls else "127.0.0.1", self.port)

    def start(self, timeout=10.0):
        if self.is_running():
            return self
        if self.workdir is None:
            self.port = free_port()
            self._make_workdir()
            (self.workdir / "key").write_text(self.key + "\n")
            if self.tls:
                self._make_ca()
        cmd = [sys.executable, __file__, "--port", str(self.port),
               "--key-file", str(self.workdir / "key")]
        if self.tls:
            cmd += ["--cert", str(self.workdir / "server.pem"),
                    "--cert-key", str(self.workdir / "server.key")]
        self._log = open(self.workdir / self.log_name, "ab")
        self._spawn(cmd, output=self._log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.calls()
                return self
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError("Alma API stub did not start:\n" + self.log_tail())
                time.sleep(0.05)

    def _reap(self):
        super()._reap()
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def _make_ca(self):
        """A CA and a server certificate for localhost and 127.0.0.1 (openssl)."""
        w = self.workdir

        def ossl(*args):
            subprocess.run(["openssl"] + list(args), cwd=w, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=almabridge test CA", "-keyout", "ca.key", "-out", "ca.pem")
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr")
        (w / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
        self.ca = str(w / "ca.pem")

    # -- control

    def _control(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        ctx = ssl.create_default_context(cafile=self.ca) if self.tls else None
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return json.loads(r.read())

    def add(self, job, *instances):
        """Instances (dicts as from instance()) of job; jobs are known once named here."""
        self._control("POST", "/_stub/jobs", [job])
        if instances:
            self._control("POST", "/_stub/instances", [[job, i] for i in instances])

    def fail(self, mode, count=-1):
        """Answer the next count calls (all, -1) with mode: "bad-key", "429-second",
        "429-daily", "500", "malformed"; None stops failing."""
        self._control("POST", "/_stub/mode", {"mode": mode, "count": count})

    def calls(self):
        return self._control("GET", "/_stub/calls")["calls"]

    def paths(self):
        return self._control("GET", "/_stub/calls")["paths"]


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description="a stand-in for Alma's Jobs API")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--key-file", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--cert-key")
    a = ap.parse_args(argv[1:])
    with open(a.key_file) as f:
        key = f.read().strip()
    serve(a.port, key, a.cert, a.cert_key)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
