#!/usr/bin/env python3
"""The HTTP sink against the Redis sink, side by side in one run.

    make build/almabridge bench-tools
    python3 bench/http_bench.py [--conns 8,50] [--rounds 3] [--duration 8] [--threads 2]

Starts a Redis server (tests/redis/server.py) and, as the HTTP target, the bare evhttp peer
(bench/peers/bare_evhttp.c: answers every POST 200 at once), then two daemons with the same
options but the sink: `--sink redis` and `--sink http --http-url http://127.0.0.1:PORT/`
(binary mode). For each round and each concurrency, each daemon in turn gets `--duration` s
of closed-loop wrk with post.lua (the signed 1.5 kB loan_created.json), the order reversed
every other round so that a drift of the shared machine cancels out of the ratio. Prints a
Markdown table (req/s per round, the mean, the ratio http/redis, and the CPU the rest of the
machine used meanwhile: the trust column on a shared machine) and writes --json.

Timings on a shared machine are noisy; instruction counts are not. Unless --no-callgrind,
each daemon then runs once more under valgrind --tool=callgrind (--threads 1): 100 warm-up
POSTs over 8 connections, counters zeroed, --callgrind-requests more, and the instructions
of all its threads divided by them (as bench/run.py phase d and smoke.py do)."""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


sys.path.insert(0, HERE)
import run as benchrun  # noqa: E402  (bench/run.py: wrk, signatures, the daemon process)


def log(msg):
    print(f"[http_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Target:
    """bare_evhttp on a free port: the HTTP target that answers at once."""

    def __init__(self, tmpdir, threads):
        self.port = benchrun.free_port()
        self.log = open(os.path.join(tmpdir, "target.log"), "wb")
        self.proc = subprocess.Popen([os.path.join(ROOT, "build", "bench", "bare_evhttp"),
                                      "--listen", f"127.0.0.1:{self.port}", "--threads",
                                      str(threads)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("bare_evhttp did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--conns", default="8,50")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="almabridge --threads (2)")
    p.add_argument("--target-threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--no-callgrind", action="store_true")
    p.add_argument("--callgrind-requests", type=int, default=2000)
    p.add_argument("--content-mode", default="binary", choices=["binary", "structured"],
                   help="the http sink's --content-mode (binary)")
    p.add_argument("--sample", default=os.path.join(ROOT, "tests", "fixtures", "alma",
                                                    "loan_created.json"))
    a = p.parse_args()
    conns = [int(c) for c in a.conns.split(",")]
    benchrun.ensure_tools(["wrk"])
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (apt-get install wrk)")
    body = open(a.sample, "rb").read()
    sig = benchrun.signature(body)
    tmpdir = tempfile.mkdtemp(prefix="almabridge-http-bench-")
    sys.path.insert(0, os.path.join(ROOT, "tests", "redis"))
    from server import RedisServer
    ab = os.path.join(ROOT, "build", "almabridge")
    redis = target = None
    daemons = {}
    res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip(),
           "args": vars(a), "runs": []}
    try:
        redis = RedisServer().start()
        target = Target(tmpdir, a.target_threads)
        common = ["--threads", str(a.threads), "--drain-grace", "0", "--log-level", "warn"]
        sinks = {
            "redis": ["--sink", "redis", "--redis", redis.url, "--route", "alma"],
            "http": ["--sink", "http", "--http-url", f"http://127.0.0.1:{target.port}/",
                     "--content-mode", a.content_mode,
                     "--dead-letter-file", os.path.join(tmpdir, "dl.jsonl")],
        }
        for name, args in sinks.items():
            port = benchrun.free_port()
            daemons[name] = benchrun.DaemonProcess(
                port, [ab, "--listen", f"127.0.0.1:{port}", *common, *args],
                os.path.join(tmpdir, f"{name}.log"), ready_path="/readyz")
        for name, d in daemons.items():
            if benchrun.post_n(d.port, body, sig, 1, 1) != 1:
                raise RuntimeError(f"{name}: a signed POST was not answered 200")
            benchrun.wrk(d.url, max(conns), a.warmup, a.sample, sig)
        for r in range(a.rounds):
            order = list(daemons) if r % 2 == 0 else list(reversed(list(daemons)))
            for c in conns:
                for name in order:
                    d = daemons[name]
                    ok0, bad0 = d.counts()
                    busy0, cpu0 = benchrun.machine_busy_s(), d.cpu_seconds()
                    w = benchrun.wrk(d.url, c, a.duration, a.sample, sig)
                    busy, cpu = benchrun.machine_busy_s() - busy0, d.cpu_seconds() - cpu0
                    ok1, bad1 = d.counts()
                    run = {"round": r, "conns": c, "sink": name, "rps": w["rps"],
                           "non200": bad1 - bad0, "errors": w.get("errors", 0),
                           "daemon_cores": cpu / a.duration, "wrk_cores": w["wrk_cpu_s"] / a.duration,
                           "other_cores": max(0.0, (busy - cpu - w["wrk_cpu_s"]) / a.duration)}
                    res["runs"].append(run)
                    log(f"round {r} c={c} {name}: {w['rps']:.0f} req/s, non-200 {run['non200']}, "
                        f"other processes {run['other_cores']:.2f} cores")
        for d in daemons.values():
            d.stop()
        daemons = {}
        if not a.no_callgrind and shutil.which("valgrind"):
            res["callgrind"] = {name: callgrind(ab, [*common[2:], *args], tmpdir, name, body,
                                                sig, a.callgrind_requests)
                                for name, args in sinks.items()}
    finally:
        for d in daemons.values():
            d.stop()
        if target:
            target.stop()
        if redis:
            redis.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    print(markdown(res, conns))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


def callgrind(ab, args, tmpdir, name, body, sig, n):
    """Instructions per webhook of one daemon (--threads 1) under callgrind."""
    out = os.path.join(tmpdir, f"callgrind.{name}")
    port = benchrun.free_port()
    d = benchrun.DaemonProcess(port, [ab, "--listen", f"127.0.0.1:{port}", "--threads", "1",
                                      *args],
                               os.path.join(tmpdir, f"{name}-cg.log"), ready_path="/readyz",
                               wrapper=["valgrind", "--tool=callgrind",
                                        f"--callgrind-out-file={out}"], ready_timeout=60)
    try:
        benchrun.post_n(port, body, sig, 100, 8)
        subprocess.run(["callgrind_control", "-z", str(d.pid)], capture_output=True)
        ok = benchrun.post_n(port, body, sig, n, 8)
        before = set(os.listdir(tmpdir))
        subprocess.run(["callgrind_control", "-d", str(d.pid)], capture_output=True)
        dumps = sorted(f for f in set(os.listdir(tmpdir)) - before if f.startswith("callgrind."))
        dump = os.path.join(tmpdir, dumps[-1]) if dumps else None
        total = benchrun.callgrind_total(dump) if dump else None
        top = benchrun.annotate(dump, True, 40) if dump else []
    finally:
        d.stop()
    log(f"callgrind {name}: {total / n if total else 0:.0f} instructions/webhook ({ok}/{n} 200)")
    # the parts that tell the sinks apart, per webhook (inclusive)
    parts = {}
    for t in top:
        for part in ("curl_multi_socket_action", "http_submit", "redisAsyncCommandArgv",
                     "ab_signature_verify", "ab_event_from_body"):
            if t["fn"].split(" [")[0].endswith(":" + part) and part not in parts:
                parts[part] = round(t["Ir"] / n)
    return {"requests": n, "answered_200": ok, "instructions": total,
            "per_webhook": round(total / n) if total else None, "parts": parts}


def markdown(res, conns):
    L = [f"commit {res['commit']}, {res['date']}, almabridge --threads {res['args']['threads']}, "
         f"http --content-mode {res['args']['content_mode']}, "
         f"{res['args']['rounds']} rounds of {res['args']['duration']} s", "",
         "| c | redis req/s (rounds) | http req/s (rounds) | http / redis | daemon CPU µs/request redis / http | non-200 | other processes (cores, mean) |",
         "|---|---|---|---|---|---|---|"]
    for c in conns:
        rs = {s: [r["rps"] for r in res["runs"] if r["conns"] == c and r["sink"] == s]
              for s in ("redis", "http")}
        bad = sum(r["non200"] for r in res["runs"] if r["conns"] == c)
        other = statistics.mean(r["other_cores"] for r in res["runs"] if r["conns"] == c)
        mr, mh = statistics.mean(rs["redis"]), statistics.mean(rs["http"])
        us = {s: statistics.mean(r["daemon_cores"] / r["rps"] * 1e6 for r in res["runs"]
                                 if r["conns"] == c and r["sink"] == s) for s in ("redis", "http")}
        L.append(f"| {c} | {mr:.0f} ({', '.join(f'{x:.0f}' for x in rs['redis'])}) | "
                 f"{mh:.0f} ({', '.join(f'{x:.0f}' for x in rs['http'])}) | {mh / mr:.2f} | "
                 f"{us['redis']:.0f} / {us['http']:.0f} | {bad} | {other:.2f} |")
    cg = res.get("callgrind")
    if cg and all(v["per_webhook"] for v in cg.values()):
        L += ["", "| instructions per webhook (callgrind, --threads 1) | redis | http | http / redis |",
              "|---|---|---|---|",
              f"| all threads of the daemon | {cg['redis']['per_webhook']:,} | "
              f"{cg['http']['per_webhook']:,} | "
              f"{cg['http']['per_webhook'] / cg['redis']['per_webhook']:.2f} |"]
        fmt = lambda v: f"{v:,}" if v is not None else "-"
        for part in sorted(set(cg["redis"]["parts"]) | set(cg["http"]["parts"])):
            L.append(f"| {part} (inclusive) | {fmt(cg['redis']['parts'].get(part))} | "
                     f"{fmt(cg['http']['parts'].get(part))} | |")
    return "\n".join(L)


if __name__ == "__main__":
    main()
