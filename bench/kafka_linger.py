#!/usr/bin/env python3
"""The Kafka producer's linger.ms at Alma-like concurrency: almabridge on a real broker
(tests/kafka, KRaft) with linger.ms 0, 1 and 5, wrk closed loop at 1, 8 and 50 connections,
three alternating rounds of 4 s; prints the median req/s and every round's p50.

    python3 bench/kafka_linger.py            # needs build/almabridge, wrk, Java + Maven

Ratios within one run are what count: the machine is shared and noisy."""
import base64
import hashlib
import hmac
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests", "kafka"), os.path.join(ROOT, "tests")]
from broker import KafkaBroker  # noqa: E402

BODY = os.path.join(ROOT, "tests", "fixtures", "alma", "loan_created.json")
ORDER = [("0", "1", "5"), ("5", "1", "0"), ("1", "0", "5")]


def ready(port):
    for _ in range(100):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("daemon not ready")


def wrk(port, conns, sig):
    env = dict(os.environ, BENCH_BODY=BODY, BENCH_SIG=sig)
    out = subprocess.run(["wrk", "-t1" if conns == 1 else "-t2", f"-c{conns}", "-d4s", "--latency",
                          "-s", os.path.join(ROOT, "bench", "post.lua"),
                          f"http://127.0.0.1:{port}/webhook"],
                         env=env, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"\n\s+50%\s+(\S+)", out).group(1)
    assert "Non-2xx" not in out, out
    return rps, p50


def main():
    sig = base64.b64encode(hmac.new(b"s", open(BODY, "rb").read(), hashlib.sha256).digest()).decode()
    kafka = KafkaBroker(log_level="WARN").start()
    res = {}
    try:
        for rnd, lingers in enumerate(ORDER):
            for linger in lingers:
                port = 18300 + rnd * 10 + int(linger)
                d = subprocess.Popen([os.path.join(ROOT, "build", "almabridge"), "--listen",
                                      f"127.0.0.1:{port}", "--sink", "kafka", "--kafka-brokers",
                                      kafka.bootstrap, "--kafka-conf", f"linger.ms={linger}",
                                      "--threads", "2", "--log-level", "warn"],
                                     env=dict(os.environ, ALMABRIDGE_SECRET="s"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    ready(port)
                    for c in (1, 8, 50):
                        res.setdefault((linger, c), []).append(wrk(port, c, sig))
                finally:
                    d.terminate()
                    d.wait()
    finally:
        kafka.stop()
    print("| linger.ms | c | median req/s | p50 of each round |")
    print("|---:|---:|---:|---|")
    for (linger, c), v in sorted(res.items(), key=lambda kv: (float(kv[0][0]), kv[0][1])):
        print(f"| {linger} | {c} | {statistics.median(r for r, _ in v):.0f} | "
              f"{', '.join(p for _, p in v)} |")


if __name__ == "__main__":
    main()
