#!/usr/bin/env python3
"""The Kafka path's tail and its cost per webhook, at fixed rates, against its floor.

    make bench-tools
    python3 bench/kafka_tail.py                                  # 1k, 5k, 10k, half peak
    python3 bench/kafka_tail.py --rates 5000 --rounds 5 --perf --conns ''   # + syscalls
    python3 bench/kafka_tail.py --system old=/tmp/before/build/almabridge --system \\
        new=build/almabridge --system l0=build/almabridge,--kafka-conf,linger.ms=0

One real broker (tests/kafka/broker.py, with the JVM options of Kafka's own start scripts,
as bench/peers.py runs it). Every system (almabridge builds or configurations, `--threads 2`,
each on its own topic, and the floor: bench/peers/bare_evhttp.c, 2 threads) gets the same
open-loop load from bench/ratepost (same rate, 50 keep-alive connections, 1 s warm-up that
is not counted) in alternating rounds (the order reversed every other round). First, the
same way, closed-loop runs (wrk, bench/post.lua) at --conns (8 and 50): req/s, p50, CPU per
webhook at the peak; the rate "half" is half of the first system's peak (its best mean).

Per run, besides the latency percentiles of ratepost:
  - CPU per webhook of the daemon, and by thread (our workers, librdkafka's rdk:main and
    rdk:broker threads), and of the broker JVM, from /proc/<pid>/task/*/schedstat: CPU
    time, time spent runnable but waiting for a core (the sign that CPU is scarce), and
    the number of times each thread was put on a core (wake-ups);
  - the record batches the broker received for that system's topic, read from its log
    segment (the bytes appended during the run): produce requests per message and
    messages per batch (mean and p50/p99);
  - messages per batch as librdkafka counts them (its statistics' batchcnt, which the
    daemon logs every second at --log-level debug, as every almabridge system here runs);
  - the broker's GC pauses during the run (its own GC log);
  - with --perf: system calls per webhook by thread group and name (perf stat --per-thread
    on the syscall tracepoints; perf costs the daemon a little, so compare latencies of
    runs without it).
Writes bench/results/kafka-tail-<date>.json and prints Markdown tables (medians over the
rounds with [min-max])."""
import argparse
import datetime
import importlib.util
import json
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


_spec = importlib.util.spec_from_file_location("almabridge_bench_peers",
                                               os.path.join(HERE, "peers.py"))
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)
benchrun = peers.benchrun  # bench/run.py, as peers.py loaded it
BODY = os.path.join(ROOT, "tests", "fixtures", "alma", "loan_created.json")
SYSCALLS = ["read", "write", "sendmsg", "recvmsg", "epoll_wait", "poll", "ppoll", "futex",
            "writev", "readv", "sendto", "recvfrom", "madvise"]


def log(msg):
    print(f"[kafka_tail {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- counters

def thread_group(comm):
    """Our workers, librdkafka's threads by role, or the rest."""
    if comm.startswith("rdk:broker"):
        return "rdk:broker"
    if comm.startswith("rdk:"):
        return comm  # rdk:main, rdk:bg
    return "almabridge"  # the loop threads (workers, main)


def schedstat(pid, group=thread_group):
    """{group: [cpu ns, run-queue wait ns, times on a core]} over pid's threads."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                v = [int(x) for x in f.read().split()]
        except OSError:
            continue
        acc = out.setdefault(group(comm), [0, 0, 0])
        for i in range(3):
            acc[i] += v[i]
    return out


def sched_delta(a, b, n):
    """Per webhook: {group: {cpu_us, wait_us, wakeups}} between two schedstat() snapshots."""
    out = {}
    for g, v in b.items():
        v0 = a.get(g, [0, 0, 0])
        out[g] = {"cpu_us": round((v[0] - v0[0]) / 1e3 / n, 2),
                  "wait_us": round((v[1] - v0[1]) / 1e3 / n, 2),
                  "wakeups": round((v[2] - v0[2]) / n, 3)}
    tot = [sum(x[k] for x in out.values()) for k in ("cpu_us", "wait_us", "wakeups")]
    out["total"] = {"cpu_us": round(tot[0], 2), "wait_us": round(tot[1], 2),
                    "wakeups": round(tot[2], 3)}
    return out


class Batches:
    """The record batches appended to one topic's partition 0 in the broker's log."""

    def __init__(self, datadir, topic):
        self.dir = os.path.join(datadir, f"{topic}-0")
        self.pos = {}

    def _segments(self):
        try:
            return sorted(f for f in os.listdir(self.dir) if f.endswith(".log"))
        except OSError:
            return []

    def mark(self):
        self.pos = {f: os.path.getsize(os.path.join(self.dir, f)) for f in self._segments()}

    def since_mark(self):
        """Records per batch appended since mark()."""
        counts = []
        for f in self._segments():
            with open(os.path.join(self.dir, f), "rb") as fh:
                fh.seek(self.pos.get(f, 0))
                data = fh.read()
            p = 0
            while p + 61 <= len(data):
                (length,) = struct.unpack_from(">i", data, p + 8)
                if length <= 0 or p + 12 + length > len(data):
                    break
                (n,) = struct.unpack_from(">i", data, p + 57)  # recordCount
                counts.append(n)
                p += 12 + length
        return counts


class PerfSyscalls:
    """perf stat --per-thread on the syscall tracepoints of pid while it runs."""

    def __init__(self, pid, out):
        events = ["raw_syscalls:sys_enter", "context-switches"] + \
                 [f"syscalls:sys_enter_{s}" for s in SYSCALLS]
        self.out = out
        # and the poll() calls that returned with nothing ready: the busy loop's, a zero
        # timeout (a real timeout is rare while requests come every millisecond)
        self.proc = subprocess.Popen(["perf", "stat", "--per-thread", "-x,", "-o", out, "-e",
                                      ",".join(events), "-e", "syscalls:sys_exit_poll",
                                      "--filter", "ret == 0", "-p", str(pid)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def stop(self, n):
        """{group: {call: per webhook}}."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait()
        out = {}
        with open(self.out) as f:
            for line in f:
                v = line.strip().split(",")  # comm-tid,count,unit,event,...
                if len(v) < 4 or not v[1].isdigit():
                    continue
                comm = v[0].rsplit("-", 1)[0]
                name = v[3]
                name = {"raw_syscalls:sys_enter": "all", "syscalls:sys_exit_poll": "poll_idle"
                        }.get(name, name.split("sys_enter_")[-1])
                g = out.setdefault(thread_group(comm), {})
                g[name] = g.get(name, 0) + int(v[1])
        return {g: {k: round(c / n, 3) for k, c in calls.items() if c} for g, calls in out.items()}


# ---------------------------------------------------------------------------- runs

def measured(system, broker, batches, fn, n_of):
    """Run fn() (the load) with every counter around it; n_of(result) = webhooks."""
    d0, b0 = schedstat(system["pid"]), schedstat(broker.pid, lambda c: "broker")
    gc0 = peers.gc_pauses(broker.gc_log, 0)[3]
    busy0, t0 = benchrun.machine_busy_s(), time.monotonic()
    if batches:
        batches.mark()
    perf = PerfSyscalls(system["pid"], os.path.join(system["tmp"], "perf.txt")) \
        if system.get("perf") else None
    rec = None
    if system.get("record"):
        out = os.path.join(system["record"], f"perf-{system['name']}-{time.strftime('%H%M%S')}.data")
        rec = subprocess.Popen(["perf", "record", "-q", "-F", "997", "-g", "-o", out, "-p",
                                str(system["pid"])], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(0.3)
    res = fn()
    if rec:
        rec.send_signal(signal.SIGINT)
        rec.wait()
        res["perf_record"] = out
    n = max(1, n_of(res))
    if perf:
        res["syscalls"] = perf.stop(n)
    secs = time.monotonic() - t0
    d1, b1 = schedstat(system["pid"]), schedstat(broker.pid, lambda c: "broker")
    res["sched"] = sched_delta(d0, d1, n)
    res["broker_sched"] = sched_delta(b0, b1, n)["broker"] if b1 else {}
    res["machine_cores"] = round((benchrun.machine_busy_s() - busy0) / secs, 2)
    g = peers.gc_pauses(broker.gc_log, gc0)
    res["broker_gc"] = {"pauses": g[0], "total_ms": g[1], "max_ms": g[2]}
    if batches:
        c = sorted(batches.since_mark())
        if c:
            res["batches"] = {"n": len(c), "records": sum(c),
                              "requests_per_msg": round(len(c) / sum(c), 3),
                              "mean": round(sum(c) / len(c), 2), "p50": c[len(c) // 2],
                              "p99": c[min(len(c) - 1, int(len(c) * 0.99))], "max": c[-1]}
    return res


def in_daemon(logfile, offset, skip):
    """p50/p99/p99.9 in ms of the access lines' latency_ms after byte offset (request read
    to answer sent, inside the daemon), the first `skip` lines (the warm-up) left out."""
    with open(logfile, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    v = sorted([float(m.group(1)) for m in re.finditer(r"latency_ms\W+([0-9.]+)", text)][skip:])
    if not v:
        return None
    return {k: v[min(len(v) - 1, int(len(v) * q))] for k, q in
            (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))}


def rdkafka_batches(logfile, offset):
    """Messages per batch as librdkafka counts them (its statistics, batchcnt, logged every
    second by `--log-level debug`) after byte offset: the mean over the intervals, weighted
    by their batches; None without such lines (an older build)."""
    with open(logfile, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    v = [(float(m.group(1)), float(m.group(2))) for m in re.finditer(
        r"kafka: topic \S+: (\d+) batches in the last statistics interval, messages per batch "
        r"avg ([0-9.]+)", text)]
    n = sum(b for b, _ in v)
    return round(sum(b * x for b, x in v) / n, 2) if n else None


def ratepost_run(system, broker, batches, rate, a, sig):
    log_at = os.path.getsize(system["log"]) if system.get("log") else None

    def go():
        return peers.ratepost(system["url"], rate, a.duration, 50, BODY, sig, warmup=1.0)
    res = measured(system, broker, batches, go, lambda r: r["answered"])
    if log_at is not None:
        res["in_daemon_ms"] = in_daemon(system["log"], log_at, int(rate))
        time.sleep(1.1)  # the statistics of the run's last second
        res["rdkafka_batch"] = rdkafka_batches(system["log"], log_at)
    return res


def closed_run(system, broker, batches, conns, a, sig):
    def go():
        w = benchrun.wrk(system["url"], conns, a.duration, BODY, sig)
        return {"conns": conns, "rps": round(w["rps"], 1), "requests": w["requests"],
                "p50_ms": w["lat_p50_us"] / 1000, "p99_ms": w["lat_p99_us"] / 1000,
                "non_2xx": w.get("err_status", 0)}
    return measured(system, broker, batches, go, lambda r: r["requests"])


# ---------------------------------------------------------------------------- report

def med(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m = statistics.median(xs)
    return f"{m:.2f} [{min(xs):.2f}-{max(xs):.2f}]" if len(xs) > 1 else f"{m:.2f}"


def markdown(res):
    L = [f"Kafka tail, {res['date']}, commit {res['commit']}; {res['rounds']} alternating "
         f"rounds of {res['duration']} s per system and rate (ratepost, 50 keep-alive "
         f"connections); medians [min-max] over the rounds.", ""]
    if res["peak"]:
        L += ["| system | c | closed loop req/s | p50 ms | p99 ms | CPU µs/webhook | broker CPU "
              "µs/msg | msgs/batch |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for (name, c), runs in sorted(res["peak"].items()):
            L.append(f"| {name} | {c} | {med([r['rps'] for r in runs])} | "
                     f"{med([r['p50_ms'] for r in runs])} | {med([r['p99_ms'] for r in runs])} | "
                     f"{med([r['sched']['total']['cpu_us'] for r in runs])} | "
                     f"{med([r['broker_sched'].get('cpu_us') for r in runs])} | "
                     f"{med([r.get('batches', {}).get('mean') for r in runs])} |")
        L.append("")
    L += ["| rate | system | p50 ms | p99 ms | p99.9 ms | in daemon p99 ms | non-2xx | CPU µs/webhook "
          "(ours / rdk:main / rdk:broker) | wait µs/webhook | wake-ups/webhook | broker CPU µs "
          "| produce requests/msg | msgs/batch p50/p99 | librdkafka msgs/batch | GC pauses |",
          "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|"]
    for (rate, name), runs in sorted(res["runs"].items(), key=lambda kv: (kv[0][0], kv[0][1])):
        def s(g, k):
            return med([r["sched"].get(g, {}).get(k) for r in runs])
        bad = sum(r["counted"] - r["s2xx"] for r in runs)
        b = [r.get("batches") for r in runs if r.get("batches")]
        L.append(
            f"| {rate} | {name} | {med([r['lat_p50_us'] / 1000 for r in runs])} | "
            f"{med([r['lat_p99_us'] / 1000 for r in runs])} | "
            f"{med([r['lat_p999_us'] / 1000 for r in runs])} | "
            f"{med([(r.get('in_daemon_ms') or {}).get('p99') for r in runs])} | {bad} | "
            f"{s('total', 'cpu_us')} ({s('almabridge', 'cpu_us')} / {s('rdk:main', 'cpu_us')} / "
            f"{s('rdk:broker', 'cpu_us')}) | {s('total', 'wait_us')} | {s('total', 'wakeups')} | "
            f"{med([r['broker_sched'].get('cpu_us') for r in runs])} | "
            f"{med([x['requests_per_msg'] for x in b]) if b else '-'} | "
            f"{'/'.join(str(statistics.median(x[k] for x in b)) for k in ('p50', 'p99')) if b else '-'} | "
            f"{med([r.get('rdkafka_batch') for r in runs])} | "
            f"{sum(r['broker_gc']['pauses'] for r in runs)} (max "
            f"{max(r['broker_gc']['max_ms'] for r in runs)} ms) |")
    sc = [(k, r["syscalls"]) for k, runs in res["runs"].items() for r in runs if "syscalls" in r]
    if sc:
        L += ["", "System calls per webhook (perf), median over the rounds, by thread group:", ""]
        for (rate, name) in sorted({k for k, _ in sc}):
            per = {}
            for k, s in sc:
                if k == (rate, name):
                    for g, calls in s.items():
                        for c, v in calls.items():
                            per.setdefault((g, c), []).append(v)
            groups = sorted({g for g, _ in per})
            parts = []
            for g in groups:
                calls = sorted(((statistics.median(v), c) for (gg, c), v in per.items() if gg == g),
                               reverse=True)
                parts.append(f"{g}: " + ", ".join(f"{c} {v:.2f}" for v, c in calls if v >= 0.01))
            L.append(f"- {rate} req/s, {name}: " + "; ".join(parts))
    return "\n".join(L)


# ---------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--system", action="append", default=[],
                   help="NAME=BINARY[,ARG...] (repeatable; default almabridge=build/almabridge)")
    p.add_argument("--rates", default="1000,5000,10000,half",
                   help="req/s, comma-separated; 'half': half the first system's peak")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="s per run (5)")
    p.add_argument("--conns", default="8,50",
                   help="closed-loop runs (wrk) first, at these concurrencies; the peak is "
                        "the best mean req/s; '' to skip (then 'half' is not available)")
    p.add_argument("--no-bare", dest="bare", action="store_false", help="skip the floor")
    p.add_argument("--perf", action="store_true", help="count system calls (perf stat)")
    p.add_argument("--benthos", action="store_true",
                   help="add Benthos+HMAC (bench/peers/benthos, kafka_franz) to the closed-loop "
                        "runs (the throughput ratio of issue 13)")
    p.add_argument("--record", metavar="DIR", help="perf record -g each almabridge run into DIR "
                   "(where the CPU goes: perf report -i FILE --sort comm,dso,sym)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--name", default=None)
    a = p.parse_args()
    specs = a.system or ["almabridge=" + os.path.join(ROOT, "build", "almabridge")]
    sig = benchrun.signature(open(BODY, "rb").read())
    tmp = tempfile.mkdtemp(prefix="kafka-tail-")
    sys.path.insert(0, os.path.join(ROOT, "tests", "kafka"))
    from broker import KafkaBroker
    gc_log = os.path.join(tmp, "kafka-gc.log")
    log("starting a Kafka broker")
    broker = KafkaBroker(log_level="WARN",
                         jvm_opts=peers.KAFKA_JVM_OPTS + [f"-Xlog:gc:file={gc_log}"]).start()
    broker.gc_log = gc_log
    datadir = str(broker.workdir / "data")
    systems, procs = {}, []
    res = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
           "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip(),
           "rounds": a.rounds, "duration": a.duration, "specs": specs, "peak": {}, "runs": {}}
    try:
        for spec in specs:
            name, _, rest = spec.partition("=")
            binary, *extra = rest.split(",")
            topic = f"tail.{name}"
            broker.create_topic(topic)
            s = peers.System(name, [binary, "--listen", "127.0.0.1:{PORT}", "--drain-grace", "0",
                                    "--threads", "2", "--sink", "kafka", "--kafka-brokers",
                                    broker.bootstrap, "--route", topic, "--log-level", "debug",
                                    *extra], tmp,
                             ready_path="/readyz")
            procs.append(s)
            systems[name] = {"name": name, "url": s.url, "pid": s.pid, "tmp": tmp,
                             "perf": a.perf, "record": a.record, "log": s.logfile,
                             "batches": Batches(datadir, topic)}
        if a.bare:
            s = peers.System("bare", [os.path.join(ROOT, "build", "bench", "bare_evhttp"),
                                      "--listen", "127.0.0.1:{PORT}", "--threads", "2"], tmp)
            procs.append(s)
            systems["bare"] = {"name": "bare", "url": s.url, "pid": s.pid, "tmp": tmp,
                               "perf": False, "batches": None}
        if a.benthos:
            topic = "tail.benthos"
            broker.create_topic(topic)
            s = peers.BenthosSystem(
                "benthos", [peers.ensure_benthos(), "-c",
                            os.path.join(HERE, "peers", "benthos", "kafka.yaml")], tmp,
                {"BENCH_BROKERS": broker.bootstrap, "BENCH_TOPIC": topic, "BENCH_PORT": "{PORT}",
                 "BENCH_SECRET": benchrun.SECRET}, open(BODY, "rb").read(), sig)
            procs.append(s)
            systems["benthos"] = {"name": "benthos", "url": s.url, "pid": s.pid, "tmp": tmp,
                                  "perf": False, "batches": Batches(datadir, topic),
                                  "closed_only": True}
        for name, s in systems.items():  # warm-up: connections, JIT, topic metadata
            benchrun.wrk(s["url"], 8, 3, BODY, sig)
        ab = [n for n in systems if n not in ("bare", "benthos")]
        names = list(systems)
        conns = [int(c) for c in a.conns.split(",") if c]
        for r in range(a.rounds):
            for c in conns:
                for name in (names if r % 2 == 0 else names[::-1]):
                    x = closed_run(systems[name], broker, systems[name]["batches"], c, a, sig)
                    res["peak"].setdefault((name, c), []).append(x)
                    log(f"closed loop c={c} {name}: {x['rps']:.0f} req/s, p50 {x['p50_ms']} ms, "
                        f"{x['sched']['total']['cpu_us']} µs/webhook, batches {x.get('batches')}")
        rates = []
        for r in (x for x in a.rates.split(",") if x):
            if r == "half":
                if not conns:
                    sys.exit("--rates half needs the closed-loop runs (--conns)")
                peak = max(statistics.mean(x["rps"] for x in res["peak"][(ab[0], c)])
                           for c in conns)
                rates.append(round(peak / 2))
            else:
                rates.append(int(r))
        for r in range(a.rounds):
            for rate in rates:
                for name in (names if r % 2 == 0 else names[::-1]):
                    s = systems[name]
                    if s.get("closed_only"):
                        continue
                    x = ratepost_run(s, broker, s["batches"], rate, a, sig)
                    x["round"] = r
                    res["runs"].setdefault((rate, name), []).append(x)
                    log(f"round {r} {rate} req/s {name}: p50 {x['lat_p50_us']} p99 "
                        f"{x['lat_p99_us']} p99.9 {x['lat_p999_us']} µs, 2xx "
                        f"{x['s2xx']}/{x['counted']}, {x['sched']['total']['cpu_us']} µs and "
                        f"{x['sched']['total']['wakeups']} wake-ups/webhook, "
                        f"batches {x.get('batches', {}).get('mean')}, gc {x['broker_gc']}")
    finally:
        for s in procs:
            s.stop()
        broker.stop()
    md = markdown(res)
    print(md)
    os.makedirs(a.out, exist_ok=True)
    stem = a.name or f"kafka-tail-{datetime.date.today()}"
    res["runs"] = {f"{k[0]} {k[1]}": v for k, v in res["runs"].items()}
    res["peak"] = {f"{k[0]} c={k[1]}": v for k, v in res["peak"].items()}
    with open(os.path.join(a.out, stem + ".json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(a.out, stem + ".md"), "w") as f:
        f.write(md + "\n")
    log(f"wrote {os.path.join(a.out, stem)}.json/.md")


if __name__ == "__main__":
    main()
