#!/usr/bin/env python3
"""Consortium mode's cost: throughput with 50 institution profiles vs one secret, side by
side in one run (issue 20: at least 0.95x).

    python3 bench/consortium.py [--rounds 3] [--duration 5] [--conns 32] [--threads 2]

Both daemons are build/almabridge with the file sink and --file-fsync=false (so that the
disk does not hide the front end's cost), --threads 2, on free loopback ports. The load is
the same 50 webhooks (tests/fixtures/alma/loan_created.json, each naming its own
institution 01BENCHnn_INST), sent in rotation by closed-loop wrk (bench/post_many.lua):
  single      one secret (ALMABRIDGE_SECRET); every body signed with it
  consortium  --institutions with 50 profiles, one secret each; each body signed with its
              institution's secret, a third of them to {path}/{code}
The modes alternate (ABBA...) after a warm-up each, so a drift of a shared machine falls on
both. Printed per run: req/s, and the daemon's CPU (user + system, from /proc) per webhook.
Reported: the median of each and the ratios consortium / single. The CPU per webhook is the
steadier number on a busy machine; req/s is what the issue's target names.

Needs wrk (installed with apt-get when missing and running as root, as bench/run.py does).
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from run import ensure_tools, free_port, log, proc_cpu_s  # noqa: E402

N = 50
SINGLE = "bench-single-secret"


def code(i):
    return f"01BENCH{i:02d}_INST"


def inst_secret(i):
    return f"bench-secret-{i:02d}"


def sig(secret, body):
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def write_inputs(tmp):
    """The 50 bodies, the profile file, and the two request lists for post_many.lua."""
    with open(os.path.join(ROOT, "tests/fixtures/alma/loan_created.json"), "rb") as f:
        src = json.load(f)
    lists = {"single": [], "consortium": []}
    prof = [f"[{code(i)}]\nsecret = {inst_secret(i)}\n" for i in range(N)]
    for i in range(N):
        src["institution"] = {"value": code(i), "desc": f"bench member {i}"}
        src["id"] = f"{i:02d}00000000000000000"
        body = json.dumps(src).encode()
        path = os.path.join(tmp, f"body{i:02d}.json")
        with open(path, "wb") as f:
            f.write(body)
        lists["single"].append(f"/webhook\t{sig(SINGLE, body)}\t{path}")
        url = f"/webhook/{code(i)}" if i % 3 == 0 else "/webhook"
        lists["consortium"].append(f"{url}\t{sig(inst_secret(i), body)}\t{path}")
    for mode, lines in lists.items():
        with open(os.path.join(tmp, f"{mode}.list"), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(tmp, "institutions.conf"), "w") as f:
        f.write("".join(prof))
    os.chmod(os.path.join(tmp, "institutions.conf"), 0o600)


def start(mode, tmp, threads, wrapper=()):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ALMABRIDGE_SECRET"}
    args = [os.path.join(ROOT, "build/almabridge"), "--listen", f"127.0.0.1:{port}",
            "--file", os.path.join(tmp, f"{mode}.jsonl"), "--file-fsync=false",
            "--threads", str(threads), "--log-level", "warn", "--drain-grace", "0"]
    if mode == "single":
        env["ALMABRIDGE_SECRET"] = SINGLE
    else:
        args += ["--institutions", os.path.join(tmp, "institutions.conf")]
    p = subprocess.Popen(list(wrapper) + args, env=env, stderr=open(os.path.join(tmp, f"{mode}.log"), "ab"))
    for _ in range(1200):
        try:
            import http.client
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return p, port
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{mode}: the daemon did not start; see {tmp}/{mode}.log")


def wrk(port, listfile, conns, seconds):
    env = dict(os.environ, BENCH_MANY=listfile)
    r = subprocess.run(["wrk", "-t", "2", "-c", str(conns), "-d", f"{max(1, round(seconds))}s", "--timeout",
                        "10s", "-s", os.path.join(HERE, "post_many.lua"),
                        f"http://127.0.0.1:{port}/webhook"], env=env, capture_output=True,
                       text=True)
    m = re.search(r"^BENCH_JSON (\{.*\})$", r.stdout, re.M)
    if not m:
        sys.exit(f"wrk failed: {r.stdout}\n{r.stderr}")
    res = json.loads(m.group(1))
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    return res


def one_run(mode, tmp, a):
    p, port = start(mode, tmp, a.threads)
    try:
        listfile = os.path.join(tmp, f"{mode}.list")
        wrk(port, listfile, a.conns, a.warmup)
        cpu0 = proc_cpu_s(p.pid)
        res = wrk(port, listfile, a.conns, a.duration)
        cpu = proc_cpu_s(p.pid) - cpu0
        errors = sum(res[k] for k in res if k.startswith("err_"))
        if errors:
            sys.exit(f"{mode}: {errors} errors or non-2xx answers: {res}")
        res["cpu_us"] = cpu / res["requests"] * 1e6
        return res
    finally:
        p.terminate()
        p.wait(30)


def callgrind(tmp, requests):
    """Instructions per webhook under callgrind (--threads 1, one keep-alive connection, the
    same body of institution 00 in both modes), as bench/smoke.py counts them: a number that
    does not depend on how busy the machine is."""
    import run as benchrun
    with open(os.path.join(tmp, "body00.json"), "rb") as f:
        body = f.read()
    out = {}
    for mode in ("single", "consortium"):
        p, port = start(mode, tmp, 1, wrapper=["valgrind", "--tool=callgrind",
                                               f"--callgrind-out-file={tmp}/cg.{mode}.%p"])
        try:
            secret = SINGLE if mode == "single" else inst_secret(0)
            s = sig(secret, body)
            if benchrun.post_n(port, body, s, 50, 1) != 50:
                sys.exit(f"{mode}: warm-up POSTs not all answered 200")
            subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True)
            ok = benchrun.post_n(port, body, s, requests, 1)
            before = set(os.listdir(tmp))
            subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True)
            dumps = sorted(f for f in set(os.listdir(tmp)) - before if f.startswith("cg."))
            if ok != requests or not dumps:
                sys.exit(f"{mode}: {ok}/{requests} answered 200, dumps {dumps}")
            out[mode] = benchrun.callgrind_total(os.path.join(tmp, dumps[-1])) / requests
        finally:
            p.terminate()
            p.wait(60)
        log(f"{mode:10s} {out[mode]:8.0f} instructions/webhook (callgrind, {requests} requests)")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--callgrind", type=int, default=500, metavar="N",
                    help="also count instructions per webhook over N requests (0: skip)")
    a = ap.parse_args()
    ensure_tools(["wrk"])
    runs = {"single": [], "consortium": []}
    with tempfile.TemporaryDirectory(prefix="almabridge-bench-consortium-") as tmp:
        write_inputs(tmp)
        order = []
        for r in range(a.rounds):
            order += ["single", "consortium"] if r % 2 == 0 else ["consortium", "single"]
        for mode in order:
            res = one_run(mode, tmp, a)
            runs[mode].append(res)
            log(f"{mode:10s} {res['rps']:8.0f} req/s  {res['cpu_us']:6.1f} us CPU/webhook  "
                f"p50 {res['lat_p50_us']} us  p99 {res['lat_p99_us']} us")
        ins = callgrind(tmp, a.callgrind) if a.callgrind else None
    if ins:
        print(f"instructions per webhook (callgrind): single {ins['single']:.0f}, consortium "
              f"{ins['consortium']:.0f}: {ins['consortium'] / ins['single']:.3f}x\n")
    if not runs["single"]:
        return
    med = {m: (statistics.median(r["rps"] for r in v), statistics.median(r["cpu_us"] for r in v))
           for m, v in runs.items()}
    print(f"| mode | req/s (median of {a.rounds}) | CPU per webhook (us) |")
    print("|---|---|---|")
    for m in ("single", "consortium"):
        print(f"| {m} | {med[m][0]:.0f} | {med[m][1]:.1f} |")
    print(f"\nthroughput consortium / single: {med['consortium'][0] / med['single'][0]:.3f}x; "
          f"CPU per webhook: {med['consortium'][1] / med['single'][1]:.3f}x")


if __name__ == "__main__":
    main()
