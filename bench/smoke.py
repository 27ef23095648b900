#!/usr/bin/env python3
"""bench-smoke: instructions per webhook under callgrind, a regression alarm that does not
depend on timing (instruction counts repeat to a fraction of a percent on a noisy machine).

    make bench-smoke            # fails when instructions/webhook > baseline * 1.10
    make bench-smoke-record     # writes the current number to bench/smoke-baseline.json

The daemon (--threads 1, file sink with its default fsync, --drain-grace 0) runs under
`valgrind --tool=callgrind`; after --warmup signed POSTs the counters are zeroed, exactly
--requests (500) signed POSTs of tests/fixtures/alma/loan_created.json follow on one
keep-alive connection, and the counters are dumped: instructions of all threads (writer
included) / requests. The bare evhttp peer (bench/peers/bare_evhttp.c) is measured the same
way for the ratio the performance target is stated in (informational: only the baseline
fails the run). The cost is also split by part (see PARTS) for the bench's chart.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import run as benchrun  # noqa: E402  (bench/run.py: daemon process, POST helpers)

BASELINE = os.path.join(HERE, "smoke-baseline.json")
TOLERANCE = 0.10

# Parts of a webhook's cost, from callgrind's INCLUSIVE costs by function name. A part is a
# list of groups; a group is a pattern, and counts the largest inclusive cost among the
# functions it matches (an outer function includes its callees, so a group names the
# outermost function of its part, under its old and new names); the groups of a part are
# added up (they must not call each other). What no part claims is "HTTP + libevent + rest".
PARTS = [
    ("JSON/XML normalise", [r"^(ab_event_from_body|ab_event_build|ab_event_new\w*|ab_normalise_\w+)$"]),
    ("HMAC signature", [r"^(ab_signature_verify|ab_secrets_verify|ab_signature_check\w*)$"]),
    ("answer + access log", [r"^(on_sink_done|pending_answer|ab_webhook_answer\w*)$"]),
    ("sink", [r"^(file_submit)$", r"^(write_batch)$", r"^(complete_batch)$"]),
    ("HTTP request parse", [r"^(read_head)$", r"^(read_body)$"]),
]


def log(msg):
    print(f"[smoke {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def inclusive_costs(dump):
    """{function name: inclusive Ir} from callgrind_annotate --inclusive=yes."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                       capture_output=True, text=True)
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^\s*([0-9,]+)\s+\(\s*[0-9.]+%\)\s+(.*)$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        fn = m.group(2).split(" [")[0].strip().rsplit(":", 1)[-1]
        ir = int(m.group(1).replace(",", ""))
        out[fn] = max(out.get(fn, 0), ir)
    return out


def split_parts(dump, total, requests):
    costs = inclusive_costs(dump)
    parts, claimed = {}, 0
    for name, groups in PARTS:
        ir = 0
        for pat in groups:
            rx = re.compile(pat)
            ir += max((c for fn, c in costs.items() if rx.match(fn)), default=0)
        parts[name] = round(ir / requests)
        claimed += ir
    parts["HTTP + libevent + rest"] = round(max(total - claimed, 0) / requests)
    return parts


def measure(cmd, port, tmpdir, name, body, sig, requests, warmup, env=None):
    """Run cmd under callgrind; instructions for `requests` signed POSTs after `warmup`."""
    out = os.path.join(tmpdir, f"callgrind.{name}")
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
    d = benchrun.DaemonProcess(port, vg + cmd, os.path.join(tmpdir, f"{name}.log"), env=env,
                               ready_timeout=120, not_ready=f"{name} did not start under valgrind")
    try:
        if benchrun.post_n(port, body, sig, warmup, 1) != warmup:
            raise RuntimeError(f"{name}: warm-up POSTs were not all answered 200; see {d.logfile}")
        r = subprocess.run(["callgrind_control", "-z", str(d.pid)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"callgrind_control -z: {r.stdout} {r.stderr}")
        ok = benchrun.post_n(port, body, sig, requests, 1)
        before = set(os.listdir(tmpdir))
        subprocess.run(["callgrind_control", "-d", str(d.pid)], capture_output=True, text=True)
        dumps = sorted(f for f in set(os.listdir(tmpdir)) - before
                       if f.startswith(f"callgrind.{name}"))
        if not dumps:
            raise RuntimeError(f"{name}: no callgrind dump")
        dump = os.path.join(tmpdir, dumps[-1])
        total = benchrun.callgrind_total(dump)
    finally:
        d.stop()
    if ok != requests:
        raise RuntimeError(f"{name}: {ok}/{requests} answered 200")
    return total, dump


def git_head():
    r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                       text=True)
    return r.stdout.strip()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default="build", help="build directory (default build)")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--record", action="store_true", help="write the baseline instead of checking")
    p.add_argument("--no-bare", action="store_true", help="skip the bare evhttp measurement")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--sample", default=os.path.join(ROOT, "tests", "fixtures", "alma",
                                                    "loan_created.json"))
    a = p.parse_args()
    build = os.path.join(ROOT, a.build)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("bench-smoke: valgrind is not installed (make setup-test installs it)")
    body = open(a.sample, "rb").read()
    sig = benchrun.signature(body)
    t0 = time.time()
    tmpdir = tempfile.mkdtemp(prefix="almabridge-smoke-")
    res = {"requests": a.requests, "warmup": a.warmup, "conns": 1, "sample":
           os.path.relpath(a.sample, ROOT), "git": git_head(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        port = benchrun.free_port()
        cmd = [os.path.join(build, "almabridge"), "--listen", f"127.0.0.1:{port}",
               "--file", os.path.join(tmpdir, "events.jsonl"), "--threads", "1",
               "--drain-grace", "0"]
        total, dump = measure(cmd, port, tmpdir, "almabridge", body, sig, a.requests, a.warmup)
        res["instructions_per_webhook"] = round(total / a.requests)
        res["parts"] = split_parts(dump, total, a.requests)
        if not a.no_bare:
            port = benchrun.free_port()
            cmd = [os.path.join(build, "bench", "bare_evhttp"), "--listen", f"127.0.0.1:{port}"]
            btotal, _ = measure(cmd, port, tmpdir, "bare", body, sig, a.requests, a.warmup)
            res["bare_evhttp_instructions_per_webhook"] = round(btotal / a.requests)
            res["ratio_to_bare"] = round(total / btotal, 2)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    res["seconds"] = round(time.time() - t0, 1)
    ipw = res["instructions_per_webhook"]
    parts = ", ".join(f"{k} {v:,}" for k, v in res["parts"].items())
    print(f"bench-smoke: {ipw:,} instructions/webhook ({parts})")
    if "ratio_to_bare" in res:
        print(f"bench-smoke: bare evhttp {res['bare_evhttp_instructions_per_webhook']:,} "
              f"instructions/webhook; almabridge / bare = {res['ratio_to_bare']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    if a.record:
        with open(BASELINE, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
        print(f"bench-smoke: baseline written to {os.path.relpath(BASELINE, ROOT)} "
              f"({ipw:,}); commit it")
        return 0
    if not os.path.exists(BASELINE):
        sys.exit("bench-smoke: no bench/smoke-baseline.json: run `make bench-smoke-record`")
    base = json.load(open(BASELINE))["instructions_per_webhook"]
    limit = base * (1 + TOLERANCE)
    change = 100.0 * (ipw - base) / base
    print(f"bench-smoke: baseline {base:,} (limit {limit:,.0f}): {change:+.1f} % "
          f"({res['seconds']} s)")
    if ipw > limit:
        print(f"bench-smoke: FAIL: {ipw:,} instructions/webhook is more than "
              f"{100 * TOLERANCE:.0f} % above the baseline {base:,}. If the rise is intended, "
              f"run `make bench-smoke-record` and commit bench/smoke-baseline.json.")
        return 1
    if ipw < base * (1 - TOLERANCE):
        print("bench-smoke: note: more than 10 % below the baseline; record the new number "
              "with `make bench-smoke-record` so that the alarm keeps watching it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
