#!/usr/bin/env python3
"""The cost of the Kafka producer's compression (issue 22): almabridge on a real broker
(tests/kafka, KRaft), compression.type none / gzip / lz4 / zstd / snappy, wrk closed loop at
8 connections for 4 s, two alternating rounds, with the USER fixture (the largest common
webhook) in binary mode. Prints per codec: median req/s, the daemon's CPU per webhook
(utime + stime from /proc over the run) and the bytes the broker stored per webhook (the
topic's segment files).

    python3 bench/compression_bench.py      # needs build/almabridge, wrk, Java + Maven

Ratios within one run are what count: the machine is shared and noisy."""
import base64
import glob
import hashlib
import hmac
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests", "kafka"), os.path.join(ROOT, "tests"),
                os.path.dirname(os.path.abspath(__file__))]
from broker import KafkaBroker  # noqa: E402
from kafka_linger import ready  # noqa: E402

BODY = os.path.join(ROOT, "tests", "fixtures", "alma", "user_update.json")
CODECS = ["none", "gzip", "lz4", "zstd", "snappy"]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def wrk(port, sig):
    env = dict(os.environ, BENCH_BODY=BODY, BENCH_SIG=sig)
    out = subprocess.run(["wrk", "-t2", "-c8", "-d4s", "-s", os.path.join(ROOT, "bench", "post.lua"),
                          f"http://127.0.0.1:{port}/webhook"],
                         env=env, capture_output=True, text=True).stdout
    assert "Non-2xx" not in out, out
    n = int(re.search(r"(\d+) requests in", out).group(1))
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), n


def main():
    sig = base64.b64encode(hmac.new(b"s", open(BODY, "rb").read(), hashlib.sha256).digest()).decode()
    kafka = KafkaBroker(log_level="WARN").start()
    res = {}
    try:
        for rnd, order in enumerate([CODECS, CODECS[::-1]]):
            for i, codec in enumerate(order):
                port = 18400 + rnd * 10 + i
                topic = f"comp{rnd}.{codec}"
                d = subprocess.Popen([os.path.join(ROOT, "build", "almabridge"), "--listen",
                                      f"127.0.0.1:{port}", "--sink", "kafka", "--kafka-brokers",
                                      kafka.bootstrap, "--kafka-conf",
                                      f"compression.type={codec}", "--route", topic,
                                      "--threads", "2", "--log-level", "warn"],
                                     env=dict(os.environ, ALMABRIDGE_SECRET="s"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    ready(port)
                    c0 = cpu_s(d.pid)
                    rps, n = wrk(port, sig)
                    cpu = (cpu_s(d.pid) - c0) / n
                finally:
                    d.terminate()
                    d.wait()
                time.sleep(1)
                size = sum(os.path.getsize(p) for p in
                           glob.glob(str(kafka.workdir / "data" / f"{topic}-*" / "*.log")))
                res.setdefault(codec, []).append((rps, cpu, size / n))
    finally:
        kafka.stop()
    raw = os.path.getsize(BODY)
    print(f"USER webhook: {raw} bytes as sent")
    print("| compression.type | median req/s (c=8) | daemon CPU per webhook | bytes stored per webhook |")
    print("|---|---:|---:|---:|")
    for codec in CODECS:
        v = res[codec]
        print(f"| {codec} | {statistics.median(r for r, _, _ in v):.0f} | "
              f"{statistics.median(c for _, c, _ in v) * 1e6:.0f} µs | "
              f"{statistics.median(s for _, _, s in v):.0f} |")


if __name__ == "__main__":
    main()
