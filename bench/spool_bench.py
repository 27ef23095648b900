#!/usr/bin/env python3
"""The spool under load (issue: store and forward): almabridge on a real redis-server with
--spool, wrk closed loop at 8 connections, four phases of 5 s in one run:

  broker     Redis up, events go straight to the stream (the reference)
  spooling   Redis killed: every event is appended to the fsync'd spool and answered 200
  draining   Redis back: the forwarder empties the spool while live events queue behind
             what is spooled (appended to it too: per-record order, issue 22)
  after      the spool is empty again

For each phase: req/s, p50 and p99 (wrk's latency distribution), non-2xx answers; plus how
long the forwarder took to empty the spool, at what rate it forwarded (events a second),
and whether the stream holds every 200.

    python3 bench/spool_bench.py            # needs build/almabridge, wrk, redis-server
"""
import base64
import hashlib
import hmac
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests", "redis"), os.path.join(ROOT, "tests")]
from server import RedisServer  # noqa: E402
from harness import free_port  # noqa: E402

BODY = os.path.join(ROOT, "tests", "fixtures", "alma", "loan_created.json")
CONNS, SECONDS = 8, 5


def http(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:  # not listening yet
        return 0, ""


def metric(port, name):
    m = re.search(r"^%s (\S+)$" % re.escape(name), http(port, "/metrics")[1], re.M)
    return float(m.group(1)) if m else 0.0


def to_ms(v):
    n, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def wrk(port, sig):
    env = dict(os.environ, BENCH_BODY=BODY, BENCH_SIG=sig)
    out = subprocess.run(["wrk", "-t2", f"-c{CONNS}", f"-d{SECONDS}s", "--latency", "-s",
                          os.path.join(ROOT, "bench", "post.lua"), f"http://127.0.0.1:{port}/webhook"],
                         env=env, capture_output=True, text=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": to_ms(re.search(r"\n\s+50%\s+(\S+)", out).group(1)),
            "p99": to_ms(re.search(r"\n\s+99%\s+(\S+)", out).group(1)),
            "ok": total - (int(non.group(1)) if non else 0),
            "non2xx": int(non.group(1)) if non else 0}


def main():
    sig = base64.b64encode(hmac.new(b"s", open(BODY, "rb").read(), hashlib.sha256).digest()).decode()
    redis = RedisServer(appendonly=True, appendfsync="always").start()  # a kill loses nothing
    port = free_port()
    with tempfile.TemporaryDirectory() as spool:
        d = subprocess.Popen([os.path.join(ROOT, "build", "almabridge"), "--listen", f"127.0.0.1:{port}",
                              "--sink", "redis", "--redis", redis.url, "--spool", spool,
                              "--threads", "2", "--log-level", "warn"],
                             env=dict(os.environ, ALMABRIDGE_SECRET="s"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows, ok_total = [], 0
        try:
            while http(port, "/readyz")[0] != 200:
                time.sleep(0.1)
            rows.append(("broker", wrk(port, sig)))
            redis.kill()
            rows.append(("spooling", wrk(port, sig)))
            spooled = metric(port, "almabridge_spool_events")
            fwd0 = metric(port, "almabridge_spool_forwarded_total")
            redis.start()
            t0 = time.monotonic()
            rows.append(("draining", wrk(port, sig)))
            while metric(port, "almabridge_spool_events") > 0 and time.monotonic() - t0 < 300:
                time.sleep(0.1)
            drained = time.monotonic() - t0
            forwarded = metric(port, "almabridge_spool_forwarded_total") - fwd0
            rows.append(("after", wrk(port, sig)))
            ok_total = sum(r["ok"] for _, r in rows)
            time.sleep(1)
            xlen = sum(int(redis.cli("XLEN", k)) for k in redis.cli("KEYS", "*").split()
                       if redis.cli("TYPE", k) == "stream")
        finally:
            d.terminate()
            d.wait()
            redis.stop()
    print("| phase | req/s | p50 ms | p99 ms | 200 | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['ok']} | {r['non2xx']} |")
    print(f"\n{spooled:.0f} events in the spool when Redis came back; the forwarder emptied it in "
          f"{drained:.1f} s while live load went on (queued behind it); it forwarded "
          f"{forwarded:.0f} events, {forwarded / drained:.0f} a second. 200 answers: {ok_total}; "
          f"stream entries: {xlen} (at least once: entries >= answers).")


if __name__ == "__main__":
    main()
