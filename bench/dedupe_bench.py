#!/usr/bin/env python3
"""What deduplication costs (issue 19): each sink with and without its store, side by side
in one run, against the issue's targets. Every request carries a new webhook id
(bench/unique.lua), so every one is a first copy and pays the store's full price (claim,
then the stored marker).

    make && python3 bench/dedupe_bench.py             # 3 rounds of 8 runs, ~6 min
    python3 bench/dedupe_bench.py --seconds 1 --paced-s 1 --rounds 1 --no-kafka  # a check

Configurations (the daemon with --threads 2, fsync on, --insecure-skip-signature since the
ids change per request; a fresh directory and fresh Redis data per run):
  file/none   file sink, --dedupe-store none (the old default)
  file/local  file sink, its local store (the new default)
  file/redis  file sink, a Redis store
  redis/none  Redis sink, no store
  redis/same  Redis sink, the store on the same server (claim + XADD in one script)
  redis/other Redis sink, the store on another Redis server (claim, XADD, mark)
  kafka/none  Kafka sink (one real broker, tests/kafka/broker.py), no store
  kafka/redis Kafka sink, a Redis store (the deployment of the issue: replicas sharing it)
  redis/script-floor, redis/ping-floor: the floors of redis/same and redis/other (FLOORS)
Each round runs every configuration once, the order reversed every other round (A B .. B A
..), so a drift of the machine cancels out of the ratios; every figure is the median over
the rounds of the per-round value, ratios and deltas taken within a round against the same
sink without a store. Each run: 2 s of warm-up, then
  - throughput: wrk closed loop (c = --conns, 2 threads) for --seconds;
  - latency: wrk paced, each connection waiting --delay-ms before each request (a load well
    below the peak, the same for every configuration), for --paced-s: the p50 the targets
    speak of is this one (the closed loop's p50 is mostly queueing: c / throughput);
  - cost: CPU time per webhook of the daemon and of the Redis servers (/proc, over the
    closed-loop run), to tell where a throughput loss comes from.
Targets (issue 19): with a Redis store p50 at most +0.3 ms and throughput at least 0.8x of
the same sink without a store (file/redis, redis/same, redis/other, kafka/redis); the local store at
least 0.9x of the file sink without one (file/local). Prints Markdown and the verdicts;
--json writes the raw results."""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "redis"))
from server import RedisServer  # noqa: E402

BODY = os.path.join(ROOT, "tests", "fixtures", "alma", "loan_created.json")
LUA = os.path.join(ROOT, "bench", "unique.lua")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def wait_ready(port, proc, args, seconds):
    """Poll the daemon's /readyz until it says ready; RuntimeError after `seconds` or if
    proc exits."""
    deadline = time.time() + seconds
    while True:
        try:
            if "ready" in get(port, "/readyz"):
                return
        except OSError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            raise RuntimeError("the daemon did not become ready: " + " ".join(args))
        time.sleep(0.05)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def configs(r1, r2, kafka=None):
    k = ["--sink", "kafka", "--kafka-brokers", kafka.bootstrap, "--route", "dd.bench"] if kafka else []
    return {
        "file/none": ["--dedupe-store", "none"],
        "file/local": [],
        "file/redis": ["--dedupe-store", r2.url],
        "redis/none": ["--sink", "redis", "--redis", r1.url, "--dedupe-store", "none"],
        "redis/same": ["--sink", "redis", "--redis", r1.url, "--dedupe-store", r1.url],
        "redis/other": ["--sink", "redis", "--redis", r1.url, "--dedupe-store", r2.url],
        # the floors (ALMABRIDGE_BENCH_FLOOR, FLOORS below): what the design must pay
        "redis/script-floor": ["--sink", "redis", "--redis", r1.url, "--dedupe-store", "none"],
        "redis/ping-floor": ["--sink", "redis", "--redis", r1.url, "--dedupe-store", r2.url],
        **({"kafka/none": k + ["--dedupe-store", "none"],
            "kafka/redis": k + ["--dedupe-store", r2.url]} if kafka else {}),
    }


# Floors, measured in the same rounds as the configurations (sinks/redis_conn.h,
# ab_redis_bench_floor): the same daemon with the store's work taken out, what is left being
# what any design with the issue's guarantees must pay on this machine.
#   redis/script-floor  the Redis sink without a store, each XADD inside a script that does
#                       nothing else: the price of the script that the atomic claim needs,
#                       against redis/same;
#   redis/ping-floor    the store on a second server answering each claim and each marker
#                       with a PING (deduplication off): the price of the two round trips
#                       (claim before the write, marker before the 200), against redis/other.
FLOORS = {"redis/script-floor": "script", "redis/ping-floor": "store-ping"}
FLOOR_LUA = "return redis.call('XADD', KEYS[1], '*', unpack(ARGV))"  # as sinks/redis.c's


def wrk(port, conns, seconds, tag, delay_ms=None):
    env = dict(os.environ, BENCH_BODY=BODY, BENCH_TAG=tag)
    if delay_ms:
        env["BENCH_DELAY_MS"] = str(delay_ms)
    out = subprocess.run(["wrk", "-t", "2", "-c", str(conns), "-d", f"{seconds}s",
                          "--latency", "-s", LUA, f"http://127.0.0.1:{port}/webhook"],
                         env=env, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"BENCH_JSON (\{.*\})", out)
    if not m:
        raise RuntimeError("wrk printed no BENCH_JSON:\n" + out)
    return json.loads(m.group(1))


def not_ok(metrics):
    """Answers other than 200 so far, from /metrics."""
    return sum(float(v) for code, v in re.findall(
        r'^almabridge_requests_total\{[^}]*status="(\d+)"[^}]*\} (\S+)$', metrics, re.M)
        if code != "200")


def cpu_s(pid):
    """User + system CPU seconds of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(binary, args, a, tag, redis_servers, floor=None):
    for r in redis_servers:  # fresh data: no key left from an earlier run
        r.cli("FLUSHALL")
    env = dict(os.environ)
    env.pop("ALMABRIDGE_BENCH_FLOOR", None)
    if floor:
        env["ALMABRIDGE_BENCH_FLOOR"] = floor
        redis_servers[0].cli("SCRIPT", "LOAD", FLOOR_LUA)
    tmp = tempfile.mkdtemp(prefix="almabridge-dedupe-bench-")
    port = free_port()
    log = open(os.path.join(tmp, "daemon.log"), "wb")
    p = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--threads", "2",
                          "--insecure-skip-signature", "--file", os.path.join(tmp, "e.jsonl"),
                          "--drain-grace", "0", "--log-level", "warn"] + args,
                         stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(port, p, args, 10)
        wrk(port, a.conns, 2, tag + "9")  # warm-up
        rss0 = rss_kb(p.pid)
        metrics0 = get(port, "/metrics")
        held0 = re.search(r"^almabridge_dedupe_ids_held (\S+)$", metrics0, re.M)
        non200_0 = not_ok(metrics0)
        cpu0 = [cpu_s(p.pid)] + [cpu_s(r.pid) for r in redis_servers]
        res = wrk(port, a.conns, a.seconds, tag + "1")
        cpu1 = [cpu_s(p.pid)] + [cpu_s(r.pid) for r in redis_servers]
        rss1 = rss_kb(p.pid)
        paced = wrk(port, a.conns, a.paced_s, tag + "2", delay_ms=a.delay_ms)
        metrics = get(port, "/metrics")
        held = re.search(r"^almabridge_dedupe_ids_held (\S+)$", metrics, re.M)
        non200 = not_ok(metrics) - non200_0  # the measured runs' (not /readyz at the start)
        n = max(res["requests"], 1)
        res.update(rps=res["requests"] / (res["duration_us"] / 1e6), rss_kb=rss1,
                   rss_growth_kb=rss1 - rss0, ids_held=float(held.group(1)) if held else None,
                   ids_added=float(held.group(1)) - float(held0.group(1)) if held else None,
                   non200=non200 + paced["err_other"],  # /metrics has every non-2xx answer
                   cpu_us=(cpu1[0] - cpu0[0]) * 1e6 / n,
                   redis_cpu_us=sum(c1 - c0 for c0, c1 in zip(cpu0[1:], cpu1[1:])) * 1e6 / n,
                   paced_rps=paced["requests"] / (paced["duration_us"] / 1e6),
                   paced_p50_us=paced["lat_p50_us"], paced_p99_us=paced["lat_p99_us"])
        return res
    finally:
        p.terminate()
        p.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


BASE = {"file": "file/none", "redis": "redis/none", "kafka": "kafka/none"}
# (configuration, what, the largest/smallest acceptable median)
TARGETS = [(c, k, v) for c in ("file/redis", "redis/same", "redis/other", "kafka/redis")
           for k, v in (("dp50", 0.3), ("ratio", 0.8))] + [("file/local", "ratio", 0.9)]


def per_round(results, name):
    """{what: [per-round values]} of a configuration against its sink's no-store runs."""
    runs, base = results[name], results[BASE[name.split("/")[0]]]
    return {"ratio": [r["rps"] / x["rps"] for r, x in zip(runs, base)],
            "dp50": [(r["paced_p50_us"] - x["paced_p50_us"]) / 1000 for r, x in zip(runs, base)],
            "dcpu": [r["cpu_us"] + r["redis_cpu_us"] - x["cpu_us"] - x["redis_cpu_us"]
                     for r, x in zip(runs, base)]}


def fmt(v, f):
    return f"{statistics.median(v):{f}} [" + ", ".join(f"{x:{f}}" for x in v) + "]"


def memory_note(results):
    """The local store's resident memory per id, from the last file/local run."""
    loc = results.get("file/local")
    if not loc or not loc[-1].get("ids_added"):
        return []
    r = loc[-1]
    return ["", f"file/local: {r['ids_added']:.0f} ids added in the last throughput run, "
            f"resident memory grew by {r['rss_growth_kb']} kB meanwhile: about "
            f"{r['rss_growth_kb'] * 1024 / r['ids_added']:.0f} bytes per id "
            f"(an upper bound: the run's own buffers included)."]


def markdown(results, a):
    out = [f"{a['seconds']} s of throughput per run (closed loop, c={a['conns']}), then "
           f"{a['paced_s']} s paced (each connection waits {a['delay_ms']} ms before each "
           f"request); {a['rounds']} round(s), the order reversed every other round. Each "
           "figure is the median over the rounds, each round's value in brackets; ratios and "
           "deltas are taken within a round against the same sink without a store.", "",
           "| configuration | req/s | x no store | paced p50 ms | +p50 ms | paced p99 ms "
           "| p50 at c=%d ms | CPU us/webhook daemon + redis | +CPU us | non-200 |" % a["conns"],
           "|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        pr = per_round(results, name)
        bad = sum(r["non200"] + r["err_other"] for r in runs)
        cpu = [r["cpu_us"] for r in runs]
        rcpu = [r["redis_cpu_us"] for r in runs]
        first = name == BASE[name.split("/")[0]]
        out.append(
            f"| {name} | {fmt([r['rps'] for r in runs], ',.0f')} "
            f"| {'1.00' if first else fmt(pr['ratio'], '.2f')} "
            f"| {fmt([r['paced_p50_us'] / 1000 for r in runs], '.2f')} "
            f"| {'' if first else fmt(pr['dp50'], '+.2f')} "
            f"| {fmt([r['paced_p99_us'] / 1000 for r in runs], '.1f')} "
            f"| {fmt([r['lat_p50_us'] / 1000 for r in runs], '.2f')} "
            f"| {statistics.median(cpu):.0f} + {statistics.median(rcpu):.0f} "
            f"| {'' if first else fmt(pr['dcpu'], '+.0f')} | {bad:.0f} |")
    out += memory_note(results)
    out += ["", "Against issue 19's targets (medians over the rounds):", ""]
    for name, what, limit in TARGETS:
        if name not in results or BASE[name.split("/")[0]] not in results:
            continue
        v = statistics.median(per_round(results, name)[what])
        ok = v <= limit if what == "dp50" else v >= limit
        desc = (f"p50 {v:+.2f} ms (at most +{limit} ms)" if what == "dp50"
                else f"throughput {v:.2f}x (at least {limit}x)")
        out.append(f"- {name}: {desc}: **{'met' if ok else 'NOT met'}**")
    return "\n".join(out)


def markdown_v1(results, n, conns, rounds):
    """The table of a --json file written before the paced runs (bench/results/dedupe-2026-12-07.json)."""
    base = {"file": "file/none", "redis": "redis/none"}
    out = [f"{n} webhooks per run, c={conns}, {rounds} round(s). Ratios and p50 deltas are "
           "taken round by round against the same sink without a store (same round), then "
           "the median over rounds is shown, with each round's value in brackets.", "",
           "| configuration | req/s | x no store | p50 ms | +p50 ms | p99 ms | non-200 |",
           "|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        b = results[base[name.split("/")[0]]]
        ratio = [r["rps"] / x["rps"] for r, x in zip(runs, b)]
        dp50 = [(r["lat_p50_us"] - x["lat_p50_us"]) / 1000 for r, x in zip(runs, b)]
        bad = sum(r["non200"] + r["err_other"] for r in runs)
        out.append(f"| {name} | {fmt([r['rps'] for r in runs], ',.0f')} | {fmt(ratio, '.2f')} "
                   f"| {fmt([r['lat_p50_us'] / 1000 for r in runs], '.2f')} | {fmt(dp50, '+.2f')} "
                   f"| {fmt([r['lat_p99_us'] / 1000 for r in runs], '.1f')} | {bad:.0f} |")
    out += memory_note(results)
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=6, help="seconds of the throughput run")
    ap.add_argument("--no-kafka", action="store_true", help="leave out the Kafka sink")
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--paced-s", type=int, default=4, help="seconds of the paced run")
    ap.add_argument("--delay-ms", type=int, default=4,
                    help="paced run: each connection's pause before each request")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "almabridge"))
    ap.add_argument("--only", help="comma-separated configuration names")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--md-from", metavar="JSON", help="only print the Markdown of a --json file")
    a = ap.parse_args()
    if a.md_from:
        with open(a.md_from) as f:
            j = json.load(f)
        if "args" in j:
            print(markdown(j["results"], j["args"]))
        else:
            print(markdown_v1(j["results"], j["n"], j["conns"], j["rounds"]))
        return
    results = {}
    broker = None
    if not a.no_kafka:
        sys.path.insert(0, os.path.join(ROOT, "tests", "kafka"))
        sys.path.insert(0, os.path.join(ROOT, "bench"))
        from broker import KafkaBroker
        from peers import KAFKA_JVM_OPTS  # those of Kafka's own start scripts
        print("starting a Kafka broker", file=sys.stderr, flush=True)
        broker = KafkaBroker(log_level="WARN", jvm_opts=KAFKA_JVM_OPTS).start()
        broker.create_topic("dd.bench")
    try:
        with RedisServer() as r1, RedisServer() as r2:
            cfgs = configs(r1, r2, broker)
            names = [n for n in cfgs if not a.only or n in a.only.split(",")]
            if "kafka/none" in names:  # the broker's JIT and the topic's leader: not measured
                print("warming the Kafka broker up", file=sys.stderr, flush=True)
                run_one(a.binary, cfgs["kafka/none"], a, "0", (r1, r2))
            for rnd in range(a.rounds):
                order = names if rnd % 2 == 0 else list(reversed(names))
                for i, name in enumerate(order):
                    tag = "%d%d%d" % (rnd + 1, i + 1, int(time.time()) % 1000)
                    res = run_one(a.binary, cfgs[name], a, tag, (r1, r2), FLOORS.get(name))
                    print(f"round {rnd + 1} {name}: {res['rps']:,.0f} req/s, CPU "
                          f"{res['cpu_us']:.0f} + {res['redis_cpu_us']:.0f} us/webhook; paced "
                          f"{res['paced_rps']:,.0f} req/s, p50 {res['paced_p50_us'] / 1000:.2f} "
                          f"ms, p99 {res['paced_p99_us'] / 1000:.2f} ms", file=sys.stderr,
                          flush=True)
                    results.setdefault(name, []).append(res)
    finally:
        if broker:
            broker.close()
    results = {n: results[n] for n in names}
    args = {k: getattr(a, k) for k in ("seconds", "conns", "rounds", "paced_s", "delay_ms")}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": args, "results": results,
                       "command": " ".join(["python3"] + sys.argv),
                       "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                capture_output=True, text=True).stdout.strip()},
                      f, indent=1)
    print(markdown(results, args))


if __name__ == "__main__":
    main()
