#!/usr/bin/env python3
"""Instructions per webhook (callgrind) of the daemon, or of the Redis server(s), in the
Redis configurations of bench/dedupe_bench.py: a measure of what deduplication costs each
process that the load of a shared machine does not move, for comparing builds.

    python3 bench/dedupe_instr.py --who redis build/almabridge /tmp/before/almabridge
    python3 bench/dedupe_instr.py --who daemon --only redis/same build/almabridge

--who redis: every redis-server runs under valgrind --tool=callgrind (tests/redis/server.py
with ALMABRIDGE_REDIS_SERVER pointing at a wrapper), the daemon (--threads 2) natively.
--who daemon: the daemon runs under callgrind with --threads 1, Redis natively.
Each run: fresh Redis data, 1 s of warm-up (wrk, c=8, bench/unique.lua: a new id per
request), counters zeroed, --seconds of the same load, counters dumped; the instructions
(user space only: callgrind counts no kernel work) divided by the requests wrk completed.
Prints one line per binary and configuration; for --who redis with two servers (redis/other)
the sink's server first, then the store's."""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

CONFIGS = ("redis/none", "redis/same", "redis/other", "file/redis")


def callgrind_total(path):
    for line in open(path):
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return None


def run(db, a, cgdir, binary, args, tag, servers):
    """(requests, non-2xx answers of the measured load, [instructions per webhook of each
    measured process])"""
    for r in servers:
        r.cli("FLUSHALL")
    tmp = tempfile.mkdtemp(prefix="almabridge-dedupe-instr-")
    port = db.free_port()
    daemon_cg = a.who == "daemon"
    wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cgdir}/cg.%p"] if daemon_cg else []
    p = subprocess.Popen(wrap + [binary, "--listen", f"127.0.0.1:{port}",
                                 "--threads", "1" if daemon_cg else "2",
                                 "--insecure-skip-signature", "--file", os.path.join(tmp, "e.jsonl"),
                                 "--ack-timeout", "30000", "--drain-grace", "0",
                                 "--log-level", "warn"] + args,
                         stdout=open(os.path.join(tmp, "daemon.log"), "wb"), stderr=subprocess.STDOUT)
    try:
        db.wait_ready(port, p, args, 60)
        db.wrk(port, 8, 1, tag + "9")
        bad0 = db.not_ok(db.get(port, "/metrics"))  # a 503 of /readyz while it started
        pids = [p.pid] if daemon_cg else [r.pid for r in servers]
        for pid in pids:
            subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True)
        res = db.wrk(port, 8, a.seconds, tag + "1")
        per = []
        for pid in pids:
            before = set(glob.glob(f"{cgdir}/cg.{pid}*"))
            subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True)
            dump = sorted(set(glob.glob(f"{cgdir}/cg.{pid}*")) - before)[-1]
            per.append(callgrind_total(dump) / max(res["requests"], 1))
            if a.keep:
                shutil.copy(dump, os.path.join(a.keep, f"{tag}-{os.path.basename(dump)}"))
        return res["requests"], db.not_ok(db.get(port, "/metrics")) - bad0, per
    finally:
        p.terminate()
        p.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--who", choices=("redis", "daemon"), default="redis")
    ap.add_argument("--only", default=",".join(CONFIGS))
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--keep", metavar="DIR", help="copy each measured dump into DIR "
                    "(callgrind_annotate it), named <tag>-cg.<pid>")
    a = ap.parse_args()
    cgdir = tempfile.mkdtemp(prefix="almabridge-callgrind-")
    try:
        if a.who == "redis":
            wrapper = os.path.join(cgdir, "redis-server")
            with open(wrapper, "w") as f:
                f.write("#!/bin/sh\nexec valgrind --tool=callgrind "
                        f"--callgrind-out-file={cgdir}/cg.%p redis-server \"$@\" 2>/dev/null\n")
            os.chmod(wrapper, 0o755)
            os.environ["ALMABRIDGE_REDIS_SERVER"] = wrapper  # read when server.py is imported
        import dedupe_bench as db
        from server import RedisServer
        with RedisServer() as r1, RedisServer() as r2:
            configs = db.configs(r1, r2)
            for binary in a.binaries:
                for name in a.only.split(","):
                    servers = {"redis/other": [r1, r2], "file/redis": [r2]}.get(name, [r1])
                    n, bad, per = run(db, a, cgdir, binary, configs[name],
                                      "%d" % (len(name) * 31 + len(binary)), servers)
                    print(f"{a.who} {binary} {name}: {n} webhooks, {bad:.0f} non-2xx; "
                          "instructions per webhook " + " + ".join(f"{x / 1e3:.1f}k" for x in per)
                          + (f" = {sum(per) / 1e3:.1f}k" if len(per) > 1 else ""), flush=True)
    finally:
        shutil.rmtree(cgdir, ignore_errors=True)


if __name__ == "__main__":
    main()
