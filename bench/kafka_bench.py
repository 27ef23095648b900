#!/usr/bin/env python3
"""Kafka: one producer per worker thread, or one producer shared by all workers?

Run from anywhere:  python3 bench/kafka_bench.py            (about 4-5 minutes)
                    python3 bench/kafka_bench.py --help

Starts a real single-node broker (tests/kafka/broker.py, KafkaBroker), builds
bench/kafka_producers.c into build/kafka_producers and runs it per-thread vs shared
(see that file: T workers each keeping W messages in flight, closed loop, the daemon's
producer configuration) for T = 1 and 2 and W = 1, 8, 32, two runs of each variant in the
order A B B A (B A A B for every other configuration), so that a drift of the machine
cancels out of the ratio. Then, unless --no-extra, three more configurations at T=2:
W=256 (512 messages in flight: a shared producer fills batch.size before linger.ms
expires), W=32 with linger.ms=0 (the CPU-bound regime), and idle (connected, producing
nothing: the fixed cost of a producer). For every run it also samples the broker JVM's
CPU and the whole machine's busy time over exactly the measured window.

Then, unless --no-e2e, the daemon itself: build/almabridge --sink kafka --threads 1 vs 2
(one producer per worker, as shipped), driven by wrk with bench/post.lua at c=64 as
bench/run.py does, order 1,2,2,1.

Prints a Markdown table and writes JSON to bench/results/kafka-producers-<date>.json.
Compare ratios within one run: the machine (2 cores, shared) is noisy, and the broker runs
on the same 2 cores as the client.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import importlib.util

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "kafka"))
from broker import KafkaBroker  # noqa: E402

# bench/run.py by its path (a "run" module elsewhere on sys.path must not shadow it):
# DaemonProcess, wrk(), free_port(), proc_cpu_s(), machine_busy_s(), ensure_tools(),
# make_daemon(), signature(), cpu_model()
_spec = importlib.util.spec_from_file_location("almabridge_bench_run", os.path.join(HERE, "run.py"))
benchrun = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchrun)
proc_cpu_s = benchrun.proc_cpu_s

TOPIC = "alma.bench"


def log(msg):
    print(f"[kafka-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(cc_out):
    cmd = ["cc", "-O2", "-Wall", "-o", cc_out, os.path.join(HERE, "kafka_producers.c"),
           "-lrdkafka", "-lpthread"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"build failed: {' '.join(cmd)}\n{r.stderr}")


def cloudevent_file(sample, tmpdir):
    """The CloudEvent the daemon would write for this webhook (core/event.c: the body
    minified into "data"), with a 19-digit id that kafka_producers overwrites per message."""
    data = json.load(open(sample, encoding="utf-8"))
    inst = (data.get("institution") or {}).get("value", "unknown")
    action = str(data.get("action", ""))
    event = (data.get("event") or {}).get("value", "")
    ev = {"specversion": "1.0", "id": "4729646413727017106", "source": "urn:alma:" + inst,
          "type": "com.exlibrisgroup.alma." + action.lower() + ("." + event.lower() if event
                                                                 else ""),
          "time": data.get("time", ""), "datacontenttype": "application/json",
          "almaaction": action, "almaevent": event, "almainstitution": inst, "data": data}
    path = os.path.join(tmpdir, "cloudevent.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(ev, separators=(",", ":"), ensure_ascii=False))
    return path


def one_run(binary, broker, mode, threads, inflight, duration, warmup, value_file, conf,
            idle=False):
    cmd = [binary, "--brokers", broker.bootstrap, "--mode", mode, "--threads", str(threads),
           "--inflight", str(inflight), "--duration", str(duration), "--warmup", str(warmup),
           "--topic", TOPIC, "--value-file", value_file, "--idle", "1" if idle else "0"]
    for kv in conf:
        cmd += ["--conf", kv]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b0 = m0 = b1 = m1 = None
    result = None
    for line in p.stdout:
        line = line.strip()
        if line == "MEASURE_START":
            b0, m0 = proc_cpu_s(broker.pid), benchrun.machine_busy_s()
        elif line == "MEASURE_END":
            b1, m1 = proc_cpu_s(broker.pid), benchrun.machine_busy_s()
        elif line.startswith("RESULT "):
            result = json.loads(line[7:])
    err = p.stderr.read()
    rc = p.wait()
    if result is None or b1 is None:
        raise RuntimeError(f"kafka_producers failed (exit {rc}): {err[-2000:]}")
    if rc != 0:
        log(f"WARNING: kafka_producers exit {rc}: {err.strip()[-500:]}")
    secs = result["seconds"]
    n = max(1, result["delivered"])
    client_cpu = result["cpu_user_s"] + result["cpu_sys_s"]
    result["broker_cores"] = round((b1 - b0) / secs, 3)
    result["broker_cpu_us_per_msg"] = round((b1 - b0) * 1e6 / n, 2)
    result["total_cpu_us_per_msg"] = round(result["cpu_us_per_msg"] + (b1 - b0) * 1e6 / n, 2)
    result["other_cores"] = round(max(0.0, (m1 - m0) - (b1 - b0) - client_cpu) / secs, 3)
    result["conf"] = conf
    return result


CONFIGS = [  # (threads, inflight, extra librdkafka properties, label)
    (1, 1, [], "main"), (1, 8, [], "main"), (1, 32, [], "main"),
    (2, 1, [], "main"), (2, 8, [], "main"), (2, 32, [], "main"),
]
# 512 messages in flight: a shared producer fills batch.size (1 MB) before linger.ms; the
# CPU-bound regime without linger; and connected but idle (the fixed cost of a producer)
EXTRA = [(2, 256, [], "extra"), (2, 32, ["linger.ms=0"], "extra"), (2, 1, [], "idle")]
# ABBA on even configurations, BAAB on odd ones: a linear drift cancels out of each mean
ORDER = ["per-thread", "shared", "shared", "per-thread"]
ORDER_ODD = ["shared", "per-thread", "per-thread", "shared"]


def ratio(a, b):
    return round(a / b, 3) if b else None


def summarize(runs):
    pt = [r for r in runs if r["mode"] == "per-thread"]
    sh = [r for r in runs if r["mode"] == "shared"]

    def m(rs, k):
        return statistics.mean(r[k] for r in rs)

    out = {}
    for k in ("cores", "broker_cores", "msgs_per_s", "lat_p50_us", "lat_p99_us", "cpu_us_per_msg", "broker_cpu_us_per_msg",
              "total_cpu_us_per_msg", "rss_kb", "tcp_conns", "os_threads",
              "msgs_per_produce_request", "vcsw_per_msg", "other_cores"):
        out[k] = {"per-thread": round(m(pt, k), 5), "shared": round(m(sh, k), 5),
                  "shared/per-thread": ratio(m(sh, k), m(pt, k))}
    # the ratio of each adjacent (per-thread, shared) pair: the spread shows the noise
    pairs = []
    for i in range(0, len(runs) - 1, 2):
        by = {r["mode"]: r for r in runs[i:i + 2]}
        pairs.append(ratio(by["shared"]["msgs_per_s"], by["per-thread"]["msgs_per_s"]))
    out["msgs_per_s_pairs"] = pairs
    return out


# ---------------------------------------------------------------------------- the daemon

class KafkaDaemon(benchrun.DaemonProcess):
    """build/almabridge --sink kafka; started, queried and stopped as bench/run.py's Daemon."""

    def __init__(self, binary, tmpdir, threads, brokers, name):
        port = benchrun.free_port()
        args = [binary, "--listen", f"127.0.0.1:{port}", "--threads", str(threads),
                "--sink", "kafka", "--kafka-brokers", brokers, "--drain-grace", "0"]
        super().__init__(port, args, os.path.join(tmpdir, f"{name}.log"), ready_path="/readyz",
                         ready_timeout=15,
                         not_ready="almabridge (kafka sink) did not become ready")


def phase_e2e(a, binary, broker, tmpdir, body, sig):
    runs = []
    for i, t in enumerate([1, 2, 2, 1]):
        d = KafkaDaemon(binary, tmpdir, t, broker.bootstrap, f"e2e-{i}-t{t}")
        try:
            benchrun.wrk(d.url, 8, 2, body, sig)  # warm-up: connections, topic metadata
            ok0, bad0 = d.counts()
            c0, b0, m0 = proc_cpu_s(d.pid), proc_cpu_s(broker.pid), benchrun.machine_busy_s()
            w = benchrun.wrk(d.url, a.e2e_conns, a.e2e_duration, body, sig)
            c1, b1, m1 = proc_cpu_s(d.pid), proc_cpu_s(broker.pid), benchrun.machine_busy_s()
            ok1, bad1 = d.counts()
            secs = w["duration_us"] / 1e6
            mem = d.mem()
            n = max(1, ok1 - ok0)
            r = {"threads": t, "rps": round(w["rps"], 1), "answered_200": ok1 - ok0,
                 "non_200": bad1 - bad0,
                 "wrk_errors": sum(w[k] for k in w if k.startswith("err_")),
                 "lat_p50_ms": round(w["lat_p50_us"] / 1000, 2),
                 "lat_p99_ms": round(w["lat_p99_us"] / 1000, 2),
                 "daemon_cpu_us_per_req": round((c1 - c0) * 1e6 / n, 1),
                 "broker_cpu_us_per_req": round((b1 - b0) * 1e6 / n, 1),
                 "cores_daemon": round((c1 - c0) / secs, 2),
                 "cores_broker": round((b1 - b0) / secs, 2),
                 "cores_wrk": round(w["wrk_cpu_s"] / secs, 2),
                 "cores_other": round(max(0, (m1 - m0) - (c1 - c0) - (b1 - b0) - w["wrk_cpu_s"])
                                      / secs, 2),
                 "daemon_rss_kb": mem.get("VmRSS"), "daemon_threads": mem.get("Threads")}
            log(f"e2e threads={t}: {r['rps']} req/s, p50 {r['lat_p50_ms']} ms, "
                f"p99 {r['lat_p99_ms']} ms, non-200 {r['non_200']}, "
                f"daemon {r['daemon_cpu_us_per_req']} µs/req, RSS {r['daemon_rss_kb']} kB, "
                f"{r['daemon_threads']} threads")
            runs.append(r)
        finally:
            d.stop()
    t1 = [r["rps"] for r in runs if r["threads"] == 1]
    t2 = [r["rps"] for r in runs if r["threads"] == 2]
    return {"conns": a.e2e_conns, "duration": a.e2e_duration, "runs": runs,
            "rps_threads1_mean": round(statistics.mean(t1), 1),
            "rps_threads2_mean": round(statistics.mean(t2), 1),
            "ratio_t2_over_t1": ratio(statistics.mean(t2), statistics.mean(t1)),
            "ratio_per_pair": [ratio(runs[1]["rps"], runs[0]["rps"]),
                               ratio(runs[2]["rps"], runs[3]["rps"])]}


# ---------------------------------------------------------------------------- output

def markdown(res):
    L = []
    e = res["env"]
    L.append(f"Run {e['started']}, {e['cpus']} CPUs, kernel {e['kernel']}, librdkafka "
             f"{e['librdkafka']}, Kafka {e['kafka']} (same machine), commit {e['commit']}, "
             f"value {res['value_bytes']} B (the CloudEvent of {res['value_sample']}), "
             f"{res['duration']} s per run after {res['warmup']} s warm-up; per configuration "
             "2 runs of each variant, ordered per-thread, shared, shared, per-thread and the "
             "reverse for every other configuration.\n")
    L.append("Means of the 2 runs of each variant. W = messages in flight per thread; cores = "
             "CPU time / window (client: the whole bench process; broker: the JVM).\n")
    L.append("| T | W | conf | variant | msg/s | p50 ms | p99 ms | client CPU µs/msg | broker CPU "
             "µs/msg | msgs/ProduceRequest | client / broker cores | TCP conns | OS threads "
             "| RSS kB | other cores |")
    L.append("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in res["configs"]:
        for mode in ("per-thread", "shared"):
            s = c["summary"]
            if c["label"] == "idle":
                L.append(f"| {c['threads']} | idle | - | {mode} | - | - | - | - | - | - | "
                         f"{s['cores'][mode] * 1000:.2f} / {s['broker_cores'][mode] * 1000:.0f}"
                         " ms/s | "
                         f"{s['tcp_conns'][mode]:.0f} | {s['os_threads'][mode]:.0f} | "
                         f"{s['rss_kb'][mode]:.0f} | {s['other_cores'][mode]:.2f} |")
                continue
            L.append(f"| {c['threads']} | {c['inflight']} | {' '.join(c['conf']) or '-'} | "
                     f"{mode} | {s['msgs_per_s'][mode]:.0f} | {s['lat_p50_us'][mode] / 1000:.2f} | "
                     f"{s['lat_p99_us'][mode] / 1000:.2f} | {s['cpu_us_per_msg'][mode]:.1f} | "
                     f"{s['broker_cpu_us_per_msg'][mode]:.1f} | "
                     f"{s['msgs_per_produce_request'][mode]:.1f} | "
                     f"{s['cores'][mode]:.2f} / {s['broker_cores'][mode]:.2f} | "
                     f"{s['tcp_conns'][mode]:.0f} | "
                     f"{s['os_threads'][mode]:.0f} | {s['rss_kb'][mode]:.0f} | "
                     f"{s['other_cores'][mode]:.2f} |")
    L.append("\nshared / per-thread (means of 2 runs each; msg/s also per adjacent pair):\n")
    L.append("| T | W | conf | msg/s | msg/s per pair | p50 | p99 | client CPU/msg | broker "
             "CPU/msg | client+broker CPU/msg | RSS |")
    L.append("|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for c in res["configs"]:
        s = c["summary"]
        if c["label"] == "idle":
            L.append(f"| {c['threads']} | idle | - | - | - | - | - | client cores "
                     f"{s['cores']['shared/per-thread']} | broker cores "
                     f"{s['broker_cores']['shared/per-thread']} | - | "
                     f"{s['rss_kb']['shared/per-thread']} |")
            continue
        L.append(f"| {c['threads']} | {c['inflight']} | {' '.join(c['conf']) or '-'} | "
                 f"{s['msgs_per_s']['shared/per-thread']} | {s['msgs_per_s_pairs']} | "
                 f"{s['lat_p50_us']['shared/per-thread']} | {s['lat_p99_us']['shared/per-thread']} | "
                 f"{s['cpu_us_per_msg']['shared/per-thread']} | "
                 f"{s['broker_cpu_us_per_msg']['shared/per-thread']} | "
                 f"{s['total_cpu_us_per_msg']['shared/per-thread']} | "
                 f"{s['rss_kb']['shared/per-thread']} |")
    if "e2e" in res:
        x = res["e2e"]
        L.append(f"\nDaemon end to end (--sink kafka, one producer per worker), wrk c={x['conns']}, "
                 f"{x['duration']} s per run, order 1,2,2,1:\n")
        L.append("| run | threads | req/s | p50 ms | p99 ms | non-200 | daemon CPU µs/req | broker "
                 "CPU µs/req | cores daemon / broker / wrk / other | RSS kB | OS threads |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, r in enumerate(x["runs"]):
            L.append(f"| {i + 1} | {r['threads']} | {r['rps']:.0f} | {r['lat_p50_ms']} | "
                     f"{r['lat_p99_ms']} | {r['non_200'] + r['wrk_errors']} | "
                     f"{r['daemon_cpu_us_per_req']} | {r['broker_cpu_us_per_req']} | "
                     f"{r['cores_daemon']} / {r['cores_broker']} / {r['cores_wrk']} / "
                     f"{r['cores_other']} | {r['daemon_rss_kb']} | {r['daemon_threads']} |")
        L.append(f"\nreq/s threads 2 / 1 = {x['ratio_t2_over_t1']} (per pair {x['ratio_per_pair']})")
    L.append(f"\nWhole run: {res['elapsed_s']:.0f} s.")
    return "\n".join(L)


def environment():
    def out(cmd):
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        return r.stdout.strip()
    cpu = benchrun.cpu_model()
    dirty = " (dirty)" if out(["git", "status", "--porcelain", "--untracked-files=no"]) else ""
    return {"started": datetime.datetime.now().isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "librdkafka": out(["pkg-config", "--modversion", "rdkafka"]),
            "commit": out(["git", "rev-parse", "--short", "HEAD"]) + dirty}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=5, help="measured seconds per run (5)")
    p.add_argument("--warmup", type=float, default=1, help="warm-up seconds per run (1)")
    p.add_argument("--no-extra", action="store_true", help="skip T=2 W=128 and linger.ms=0")
    p.add_argument("--no-e2e", action="store_true", help="skip the daemon end-to-end runs")
    p.add_argument("--e2e-duration", type=int, default=5)
    p.add_argument("--e2e-conns", type=int, default=64)
    samples = os.path.join(ROOT, "tests", "fixtures", "alma")
    p.add_argument("--value-sample", default=os.path.join(samples,
                                                          "job_end_publishing_failed.json"),
                   help="webhook whose CloudEvent is the message value (about 2.2 kB)")
    p.add_argument("--sample", default=os.path.join(samples, "loan_created.json"),
                   help="webhook POSTed by wrk in the end-to-end runs (as bench/run.py)")
    p.add_argument("--daemon", default=os.path.join(ROOT, "build", "almabridge"))
    p.add_argument("--no-build", action="store_true", help="do not run `make build/almabridge`")
    p.add_argument("--json", default=os.path.join(
        HERE, "results", f"kafka-producers-{datetime.date.today().isoformat()}.json"))
    p.add_argument("--md", default=None, help="also write the Markdown here")
    a = p.parse_args()

    t_start = time.time()
    # SIGTERM as an exception, so that the finally below stops the broker and cleans up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("kafka_bench: terminated"))
    tmpdir = tempfile.mkdtemp(prefix="almabridge-kafka-bench-")
    broker = KafkaBroker()
    try:
        run_all(a, t_start, tmpdir, broker)
    finally:
        broker.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


def run_all(a, t_start, tmpdir, broker):
    binary = os.path.join(tmpdir, "kafka_producers")
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    build(os.path.join(ROOT, "build", "kafka_producers"))
    shutil.copy2(os.path.join(ROOT, "build", "kafka_producers"), binary)
    sample = os.path.realpath(a.sample)
    value_sample = os.path.realpath(a.value_sample)
    value_file = cloudevent_file(value_sample, tmpdir)
    res = {"env": environment(), "value_sample": os.path.relpath(value_sample, ROOT),
           "e2e_sample": os.path.relpath(sample, ROOT),
           "value_bytes": os.path.getsize(value_file), "duration": a.duration,
           "warmup": a.warmup, "configs": []}
    daemon = None
    if not a.no_e2e:
        benchrun.ensure_tools(["wrk"])
        if not a.no_build:
            benchrun.make_daemon()
        daemon = os.path.join(tmpdir, "almabridge")  # a private copy, as run.py does
        shutil.copy2(a.daemon, daemon)

    broker.start()
    res["env"]["kafka"] = broker.libs.parent.name  # .cache/kafka/<version>/libs
    log(f"broker {broker.bootstrap} up in {broker.startup_seconds:.1f} s; tmp {tmpdir}")
    # create the topic and warm the broker's JIT up (not recorded)
    one_run(binary, broker, "per-thread", 2, 32, 2, 1, value_file, [])
    configs = CONFIGS + ([] if a.no_extra else EXTRA)
    for ci, (t, w, conf, label) in enumerate(configs):
        order = ORDER if ci % 2 == 0 else ORDER_ODD
        runs = []
        for mode in order:
            r = one_run(binary, broker, mode, t, w, a.duration, a.warmup, value_file, conf,
                        idle=label == "idle")
            log(f"T={t} W={w} {label} {' '.join(conf)} {mode}: {r['msgs_per_s']:.0f} msg/s, "
                f"cores client {r['cores']} broker {r['broker_cores']}, "
                f"p50 {r['lat_p50_us'] / 1000:.2f} ms, p99 {r['lat_p99_us'] / 1000:.2f} ms, "
                f"client {r['cpu_us_per_msg']:.1f} + broker {r['broker_cpu_us_per_msg']:.1f}"
                f" µs/msg, {r['msgs_per_produce_request']:.1f} msgs/req, "
                f"{r['tcp_conns']} conns, {r['os_threads']} threads, RSS {r['rss_kb']} kB, "
                f"other {r['other_cores']} cores")
            runs.append(r)
        res["configs"].append({"threads": t, "inflight": w, "conf": conf, "label": label,
                               "order": order, "runs": runs, "summary": summarize(runs)})
    if daemon:
        with open(sample, "rb") as f:
            sig = benchrun.signature(f.read())
        res["e2e"] = phase_e2e(a, daemon, broker, tmpdir, sample, sig)
    res["elapsed_s"] = round(time.time() - t_start, 1)
    md = markdown(res)
    print(md)
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    log(f"wrote {a.json}")
    if a.md:
        with open(a.md, "w") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
