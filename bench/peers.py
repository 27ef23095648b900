#!/usr/bin/env python3
"""almabridge side by side with its peers, on this machine, in alternating rounds.

Run from the repository root:
    python3 bench/peers.py                       # every sink, c=1,8,50 (~8-10 min)
    python3 bench/peers.py --sinks kafka --duration 5 --rounds 2
    python3 bench/peers.py --help

For each sink (file, kafka, redis) it starts the systems below, then measures them in
alternating rounds: for round r, concurrency c, every system in turn (the order reversed
every other round, so a drift of the machine cancels out of the ratios) gets --duration s
of closed-loop wrk with bench/post.lua (the same signed 1.5 kB Alma body for all). Then,
per system, the latency at half its peak: bench/ratepost (open-loop, fixed rate; wrk2-like)
at half its best mean req/s over the rounds (at the best concurrency), with up to 50
connections.

Systems (each answers the same signed requests; configurations in bench/peers/):
  almabridge      build/almabridge (file sink: --threads 1 and 2, fsync on; kafka and
                  redis: --threads 2), secret "bench"
  bare            bench/peers/bare_evhttp.c (build/bench/bare_evhttp --threads 2): evhttp
                  answering 200 without doing anything: the limit
  benthos         Benthos 4.27 (bench/peers/benthos: a Go module built into .cache/bench),
                  http_server -> HMAC + CloudEvent in Bloblang -> kafka_franz / redis_streams
  node            bench/peers/node/listener.js (Express, raw-body HMAC, kafkajs / ioredis,
                  answers after the ack), npm ci into .cache/bench/node

Kafka is a real single-node broker (tests/kafka/broker.py) run with the JVM options of
Kafka's own start scripts (1 GB heap, G1 with a 20 ms pause goal; the test suite's broker
trades those for a fast start: serial GC, C1 only), its GC log kept to attribute latency
tails; Redis a real redis-server (tests/redis/server.py). Both are started here and
stopped at the end. Each system first gets --warmup s of load (the broker's and peers'
JITs, connections, topic metadata).

Writes to --out (default bench/results/): peers-<date>.json (everything), peers-<date>.md
(tables of req/s and ratios), and PNG charts: peers-<date>-rps.png (req/s by concurrency,
per system and sink), peers-<date>-latency.png (latency percentiles at half peak),
peers-<date>-instructions.png (instructions per webhook by part, from bench/smoke.py).
"""
import argparse
import datetime
import hashlib
import importlib.util
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
CACHE = os.path.join(ROOT, ".cache", "bench")
BENTHOS_VERSION = "4.27.0"
BENTHOS_BIN = os.path.join(CACHE, f"benthos-{BENTHOS_VERSION}")
NODE_DIR = os.path.join(CACHE, "node")
TOPIC = "alma.bench"
STREAM = "alma"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


benchrun = _load("almabridge_bench_run", os.path.join(HERE, "run.py"))
SECRET = benchrun.SECRET


def log(msg):
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- building

def ensure_benthos():
    """The Benthos binary, built from bench/peers/benthos (go.mod pins 4.27.0) once."""
    if os.path.exists(BENTHOS_BIN):
        return BENTHOS_BIN
    os.makedirs(CACHE, exist_ok=True)
    log("building Benthos 4.27.0 (about 3 minutes, once; cached in .cache/bench)")
    env = dict(os.environ, GOFLAGS="-mod=mod")
    r = subprocess.run(["go", "build", "-trimpath", "-o", BENTHOS_BIN + ".tmp", "."],
                       cwd=os.path.join(HERE, "peers", "benthos"), env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"go build failed: {r.stderr[-3000:]}")
    os.rename(BENTHOS_BIN + ".tmp", BENTHOS_BIN)
    return BENTHOS_BIN


def ensure_node():
    """node_modules for the Node peer in .cache/bench/node (npm ci from the lockfile)."""
    src = os.path.join(HERE, "peers", "node")
    lock = open(os.path.join(src, "package-lock.json"), "rb").read()
    stamp = os.path.join(NODE_DIR, ".lock-sha256")
    want = hashlib.sha256(lock).hexdigest()
    if os.path.exists(stamp) and open(stamp).read() == want:
        return os.path.join(NODE_DIR, "node_modules")
    os.makedirs(NODE_DIR, exist_ok=True)
    for f in ("package.json", "package-lock.json"):
        shutil.copy(os.path.join(src, f), NODE_DIR)
    log("npm ci for the Node peer (into .cache/bench/node)")
    r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"npm ci failed: {r.stderr[-3000:]}")
    with open(stamp, "w") as f:
        f.write(want)
    return os.path.join(NODE_DIR, "node_modules")


def make_tools():
    r = subprocess.run(["make", "-C", ROOT, "build/almabridge", "bench-tools"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"make failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


# ---------------------------------------------------------------------------- systems

class System(benchrun.DaemonProcess):
    """One peer process on a free loopback port, ready when GET ready_path answers 200."""

    def __init__(self, name, args, tmpdir, env=None, ready_path="/healthz", ready_timeout=30):
        self.name = name
        port = benchrun.free_port()
        args = [a.replace("{PORT}", str(port)) for a in args]
        env = {k: v.replace("{PORT}", str(port)) for k, v in (env or {}).items()}
        super().__init__(port, args, os.path.join(tmpdir, f"{name}.log"), env=env,
                         ready_path=ready_path, ready_timeout=ready_timeout,
                         not_ready=f"{name} did not become ready")

    def ready_post(self, body, sig):
        """One signed POST answered 200 (the broker/stream may need a moment)."""
        deadline = time.time() + 30
        while time.time() < deadline:
            if benchrun.post_n(self.port, body, sig, 1, 1) == 1:
                return True
            time.sleep(0.5)
        return False


class BenthosSystem(System):
    """Benthos has no readiness path on its http_server: ready when a signed POST is 200."""

    def __init__(self, name, args, tmpdir, env, body, sig):
        self.name = name
        port = benchrun.free_port()
        env = dict(os.environ, ALMABRIDGE_SECRET=SECRET,
                   **{k: v.replace("{PORT}", str(port)) for k, v in env.items()})
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.logfile = os.path.join(tmpdir, f"{name}.log")
        self.logfh = open(self.logfile, "wb")
        self.proc = subprocess.Popen(args, env=env, stdout=self.logfh, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {open(self.logfile).read()[-2000:]}")
            try:
                if benchrun.post_n(port, body, sig, 1, 1) == 1:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{name} did not answer 200")


def start_systems(sink, a, tmpdir, body, sig, services):
    """{name: System} for this sink, all started and answering a signed POST with 200."""
    body = open(body, "rb").read()  # the POSTs below send bytes; wrk reads the path
    ab = os.path.join(ROOT, "build", "almabridge")
    bare = os.path.join(ROOT, "build", "bench", "bare_evhttp")
    systems = {}
    try:
        common = ["--listen", "127.0.0.1:{PORT}", "--drain-grace", "0"]
        if sink == "file":
            for t in (1, 2):
                d = os.path.join(tmpdir, f"file-t{t}")
                os.makedirs(d, exist_ok=True)
                systems[f"almabridge t{t}"] = System(
                    f"almabridge-file-t{t}", [ab, *common, "--threads", str(t), "--file",
                                              os.path.join(d, "events.jsonl")], tmpdir)
            systems["bare t1"] = System("bare-t1", [bare, "--listen", "127.0.0.1:{PORT}",
                                                    "--threads", "1"], tmpdir)
            systems["bare t2"] = System("bare-t2", [bare, "--listen", "127.0.0.1:{PORT}",
                                                    "--threads", "2"], tmpdir)
            return systems
        if sink == "kafka":
            sink_args = ["--sink", "kafka", "--kafka-brokers", services["kafka"].bootstrap,
                         "--route", TOPIC]
            benthos_env = {"BENCH_BROKERS": services["kafka"].bootstrap, "BENCH_TOPIC": TOPIC}
            node_env = {"SINK": "kafka", "BROKERS": services["kafka"].bootstrap, "TOPIC": TOPIC}
        else:
            help_text = subprocess.run([ab, "--help"], capture_output=True, text=True).stdout
            opt = "--redis-url" if "--redis-url" in help_text else "--redis"
            sink_args = ["--sink", "redis", opt, services["redis"].url, "--route", STREAM]
            benthos_env = {"BENCH_REDIS_URL": services["redis"].url, "BENCH_STREAM": STREAM}
            node_env = {"SINK": "redis", "REDIS_URL": services["redis"].url, "STREAM": STREAM}
        systems["almabridge"] = System(f"almabridge-{sink}", [ab, *common, "--threads", "2",
                                                              *sink_args], tmpdir,
                                       ready_path="/readyz")
        systems["bare"] = System("bare", [bare, "--listen", "127.0.0.1:{PORT}", "--threads",
                                          "2"], tmpdir)
        systems["benthos"] = BenthosSystem(
            "benthos", [a.benthos, "-c", os.path.join(HERE, "peers", "benthos", f"{sink}.yaml")],
            tmpdir, dict(benthos_env, BENCH_PORT="{PORT}", BENCH_SECRET=SECRET), body, sig)
        systems["node"] = System(
            "node", ["node", os.path.join(HERE, "peers", "node", "listener.js")], tmpdir,
            env=dict(node_env, PORT="{PORT}", SECRET=SECRET, NODE_PATH=a.node_modules))
        for name, s in systems.items():
            if not s.ready_post(body, sig):
                raise RuntimeError(f"{name}: a signed POST was not answered 200 "
                                   f"(log {s.logfile})")
        return systems
    except BaseException:
        for s in systems.values():
            s.stop()
        raise


# ---------------------------------------------------------------------------- load

def ratepost(url, rate, duration, conns, body, sig, warmup=1.0):
    cmd = [os.path.join(ROOT, "build", "bench", "ratepost"), "-r", f"{rate:.0f}", "-d",
           str(duration), "-c", str(conns), "-w", str(warmup), "-b", body, "-s", sig,
           url + "/webhook"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    for line in r.stdout.splitlines():
        if line.startswith("RATEPOST_JSON "):
            return json.loads(line[len("RATEPOST_JSON "):])
    raise RuntimeError(f"ratepost failed: {r.stdout} {r.stderr}")


def closed_loop(s, conns, duration, body, sig):
    """wrk at `conns` for `duration` s against system s: req/s, latency, errors, CPU."""
    cpu0 = benchrun.proc_cpu_s(s.pid) + children_cpu(s.pid)
    busy0 = benchrun.machine_busy_s()
    w = benchrun.wrk(s.url, conns, duration, body, sig)
    busy1 = benchrun.machine_busy_s()
    cpu1 = benchrun.proc_cpu_s(s.pid) + children_cpu(s.pid)
    secs = w["duration_us"] / 1e6
    bad = w.get("err_status", 0)
    errs = sum(w[k] for k in w if k.startswith("err_") and k != "err_status")
    return {"conns": conns, "rps": round(w["rps"], 1), "requests": w["requests"],
            "non_2xx": bad, "errors": errs,
            "p50_ms": w["lat_p50_us"] / 1000, "p90_ms": w["lat_p90_us"] / 1000,
            "p99_ms": w["lat_p99_us"] / 1000, "cores": round((cpu1 - cpu0) / secs, 2),
            "wrk_cores": round(w["wrk_cpu_s"] / secs, 2),
            # what neither the system nor wrk used: the broker, and everything else on this
            # shared machine (the noise indicator; tick-sampled, approximate)
            "other_cores": round(max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - w["wrk_cpu_s"])
                                 / secs, 2)}


def children_cpu(pid):
    """CPU-seconds of pid's direct children (none for our systems; kept for wrappers)."""
    total = 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for c in f.read().split():
                    try:
                        total += benchrun.proc_cpu_s(int(c))
                    except OSError:
                        pass
    except OSError:
        pass
    return total


# The JVM options of Kafka's bin/kafka-server-start.sh and kafka-run-class.sh
# (KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS), which is how a broker is run for real.
KAFKA_JVM_OPTS = ["-Xmx1G", "-Xms1G", "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                  "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
                  "-XX:MaxInlineLevel=15", "-Djava.awt.headless=true"]


def gc_pauses(path, offset):
    """Stop-the-world pauses the broker's GC log records after byte offset: (count,
    total ms, longest ms, new offset)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
            end = f.tell()
    except OSError:
        return 0, 0.0, 0.0, offset
    ms = [float(m.group(1)) for m in re.finditer(r"\] GC\(\d+\) Pause .* ([0-9.]+)ms$", text, re.M)]
    return len(ms), round(sum(ms), 1), round(max(ms, default=0.0), 1), end


def bench_sink(sink, a, tmpdir, body, sig, services):
    systems = start_systems(sink, a, tmpdir, body, sig, services)
    names = list(systems)
    out = {"systems": names, "runs": [], "latency": {}}
    gc_log = a.kafka_gc_log if sink == "kafka" else None
    try:
        for name in names:  # warm-up: connections, JITs, topic metadata
            benchrun.wrk(systems[name].url, 8, a.warmup, body, sig)
        for r in range(a.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for c in a.conns:
                for name in order:
                    res = closed_loop(systems[name], c, a.duration, body, sig)
                    res.update(system=name, round=r)
                    out["runs"].append(res)
                    log(f"{sink} round {r} c={c} {name}: {res['rps']:.0f} req/s "
                        f"p50 {res['p50_ms']:.2f} ms p99 {res['p99_ms']:.2f} ms, "
                        f"{res['cores']} cores, non-2xx {res['non_2xx']}, errors {res['errors']}")
        jobs = []
        for name in names:
            # peak: the best concurrency's mean over the rounds (one lucky run is not a peak)
            peak = max(mean([x["rps"] for x in out["runs"]
                             if x["system"] == name and x["conns"] == c]) for c in a.conns)
            jobs.append((name, name, max(1.0, peak / 2), peak))
        for name in names:
            # the machine's own floor at almabridge's rate: the bare server that does nothing,
            # driven the same way (this VM's scheduling stalls show in every system's p99)
            bare = "bare" if "bare" in systems else name.replace("almabridge", "bare")
            if name.startswith("almabridge") and bare in systems:
                jobs.append((f"{bare} at {name}'s rate", bare, jobs[names.index(name)][2], None))
        for label, name, rate, peak in jobs:
            gc0 = gc_pauses(gc_log, 0)[3] if gc_log else 0
            lat = ratepost(systems[name].url, rate, a.latency_duration, 50, body, sig,
                           warmup=min(1.0, a.latency_duration / 4))
            if peak is not None:
                lat["peak_rps"] = peak
            if gc_log:
                n, total, longest, _ = gc_pauses(gc_log, gc0)
                lat["broker_gc"] = {"pauses": n, "total_ms": total, "max_ms": longest}
            out["latency"][label] = lat
            log(f"{sink} {label} at {rate:.0f} req/s: p50 {lat['lat_p50_us']} µs "
                f"p99 {lat['lat_p99_us']} µs p99.9 {lat['lat_p999_us']} µs, "
                f"2xx {lat['s2xx']}/{lat['counted']}"
                + (f", broker GC {lat['broker_gc']}" if gc_log else ""))
        for name, s in systems.items():
            try:
                out.setdefault("rss_kb", {})[name] = s.mem().get("VmRSS")
            except OSError:
                pass
    finally:
        for s in systems.values():
            s.stop()
    return out


# ---------------------------------------------------------------------------- report

def summarise(res):
    """Per sink and concurrency: mean req/s of each system over the rounds, and ratios."""
    table = {}
    for sink, out in res["sinks"].items():
        for c in res["conns"]:
            row = {}
            for name in out["systems"]:
                xs = [x["rps"] for x in out["runs"] if x["system"] == name and x["conns"] == c]
                p50 = [x["p50_ms"] for x in out["runs"] if x["system"] == name and x["conns"] == c]
                row[name] = {"rps": round(sum(xs) / len(xs), 1) if xs else None,
                             "p50_ms": round(sorted(p50)[len(p50) // 2], 3) if p50 else None}
            table.setdefault(sink, {})[c] = row
    return table


def ratios(sink, row):
    """almabridge's req/s over each peer's, for one sink and concurrency."""
    out = {}
    abn = [n for n in row if n.startswith("almabridge")]
    for a_ in abn:
        for n in row:
            if n.startswith("almabridge") or not row[n]["rps"] or not row[a_]["rps"]:
                continue
            if sink == "file" and a_[-2:] != n[-2:]:
                continue  # file: threads 1 vs bare threads 1, threads 2 vs bare threads 2
            out[f"{a_} / {n}"] = round(row[a_]["rps"] / row[n]["rps"], 2)
    return out


def mean(xs):
    return round(sum(xs) / len(xs), 2) if xs else None


def markdown(res):
    L = []
    e = res["env"]
    L.append(f"Run {e['date']}, {e['host_cpus']} CPUs ({e['cpu']}), commit {e['git']}, "
             f"{res['rounds']} alternating rounds of {res['duration']} s per system and "
             f"concurrency, wrk closed loop with bench/post.lua; latency at half peak with "
             f"bench/ratepost for {res['latency_duration']} s. Machine load average at the "
             f"start: {e['loadavg']}.")
    for sink, rows in res["summary"].items():
        out = res["sinks"][sink]
        L.append(f"\n### {sink} sink: req/s (mean of the rounds) and ratios\n")
        names = out["systems"]
        L.append("| c | " + " | ".join(names) + " | almabridge ratios |")
        L.append("|---:|" + "---:|" * len(names) + "---|")
        for c, row in rows.items():
            cells = [f"{row[n]['rps']:.0f} ({row[n]['p50_ms']:.2f} ms)" if row[n]["rps"]
                     else "-" for n in names]
            rat = ", ".join(f"{k}: **{v}**" for k, v in ratios(sink, row).items())
            L.append(f"| {c} | " + " | ".join(cells) + f" | {rat} |")
        L.append("\nCells: req/s (median p50 latency of the rounds). Non-2xx answers and "
                 "socket errors over all runs: " +
                 ", ".join(f"{n} {sum(x['non_2xx'] for x in out['runs'] if x['system'] == n)}"
                           f"/{sum(x['errors'] for x in out['runs'] if x['system'] == n)}"
                           for n in names) + ". Cores used during the runs, mean (the system "
                 "itself / everything else but wrk: broker, other work on the machine): " +
                 ", ".join(f"{n} {mean([x['cores'] for x in out['runs'] if x['system'] == n])}"
                           f" / {mean([x['other_cores'] for x in out['runs'] if x['system'] == n])}"
                           for n in names) + ".")
        L.append("\nLatency at half of each system's peak (open loop, up to 50 connections; "
                 "the \"bare at ...'s rate\" rows are the server that does nothing at "
                 "almabridge's rate, the machine's floor):\n")
        gc = any("broker_gc" in x for x in out["latency"].values())
        L.append("| system | rate req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
                 "| 2xx / counted | RSS kB |" + (" broker GC pauses: n, total, longest ms |"
                                                   if gc else ""))
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if gc else ""))
        for n, lat in out["latency"].items():
            if lat:
                L.append(f"| {n} | {lat['rate']:.0f} | {lat['lat_p50_us'] / 1000:.2f} "
                         f"| {lat['lat_p90_us'] / 1000:.2f} | {lat['lat_p99_us'] / 1000:.2f} "
                         f"| {lat['lat_p999_us'] / 1000:.2f} | {lat['lat_max_us'] / 1000:.1f} "
                         f"| {lat['s2xx']} / {lat['counted']} | "
                         f"{out.get('rss_kb', {}).get(n, '-')} |" +
                         (" {pauses}, {total_ms}, {max_ms} |".format(**lat["broker_gc"])
                          if "broker_gc" in lat else ""))
    if res.get("smoke"):
        s = res["smoke"]
        L.append(f"\n### instructions per webhook (callgrind, file sink, {s['requests']} "
                 f"requests, bench/smoke.py)\n")
        L.append(f"almabridge **{s['instructions_per_webhook']:,}**, bare evhttp "
                 f"{s.get('bare_evhttp_instructions_per_webhook', 0):,}: ratio "
                 f"**{s.get('ratio_to_bare')}**. By part: " +
                 ", ".join(f"{k} {v:,}" for k, v in s["parts"].items()) + ".")
    return "\n".join(L) + "\n"


COLORS = {"almabridge": "#1f77b4", "almabridge t1": "#6baed6", "almabridge t2": "#1f77b4",
          "bare": "#7f7f7f", "bare t1": "#c7c7c7", "bare t2": "#7f7f7f",
          "benthos": "#ff7f0e", "node": "#2ca02c"}


def charts(res, base):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    sinks = list(res["summary"])
    fig, axes = plt.subplots(1, len(sinks), figsize=(5 * len(sinks), 4), squeeze=False)
    for ax, sink in zip(axes[0], sinks):
        rows = res["summary"][sink]
        for n in res["sinks"][sink]["systems"]:
            cs = [c for c in rows if rows[c][n]["rps"]]
            ax.plot([str(c) for c in cs], [rows[c][n]["rps"] for c in cs], marker="o",
                    label=n, color=COLORS.get(n))
        ax.set_title(f"{sink} sink")
        ax.set_xlabel("concurrent connections (wrk, closed loop)")
        ax.set_ylabel("requests/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"req/s by concurrency ({res['env']['date'][:10]}, commit {res['env']['git']})")
    fig.tight_layout()
    files.append(base + "-rps.png")
    fig.savefig(files[-1], dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(sinks), figsize=(5 * len(sinks), 4), squeeze=False)
    pcts = [("lat_p50_us", "p50"), ("lat_p90_us", "p90"), ("lat_p99_us", "p99"),
            ("lat_p999_us", "p99.9")]
    for ax, sink in zip(axes[0], sinks):
        lat = res["sinks"][sink]["latency"]
        names = list(lat)
        width = 0.8 / max(1, len(names))
        for i, n in enumerate(names):
            xs = [j + i * width for j in range(len(pcts))]
            ax.bar(xs, [max(lat[n][k] / 1000, 0.001) for k, _ in pcts], width,
                   label=f"{n} @ {lat[n]['rate']:.0f}/s", color=COLORS.get(n, "#c7c7c7"))
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(pcts))])
        ax.set_xticklabels([p for _, p in pcts])
        ax.set_yscale("log")
        ax.set_ylabel("latency ms (log)")
        ax.set_title(f"{sink} sink, at half of each one's peak")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    files.append(base + "-latency.png")
    fig.savefig(files[-1], dpi=90)
    plt.close(fig)

    s = res.get("smoke")
    if s:
        fig, ax = plt.subplots(figsize=(6, 4))
        parts = list(s["parts"].items())
        bottom = 0
        for k, v in parts:
            ax.bar(["almabridge"], [v], bottom=bottom, label=k)
            bottom += v
        ax.bar(["bare evhttp"], [s.get("bare_evhttp_instructions_per_webhook", 0)],
               color="#7f7f7f", label="bare evhttp (all)")
        ax.set_ylabel("instructions per webhook (callgrind)")
        ax.set_title(f"file sink, {s['requests']} requests: ratio {s.get('ratio_to_bare')}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(base + "-instructions.png")
        fig.savefig(files[-1], dpi=90)
        plt.close(fig)
    return files


def reexec_for_matplotlib():
    """Charts need matplotlib (Debian: python3-matplotlib): when this interpreter (a pyenv
    or a plain venv) cannot import it and Debian's python3 can, run under that one."""
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    syspy = "/usr/bin/python3"
    if os.path.realpath(sys.executable) != os.path.realpath(syspy) and os.path.exists(syspy) \
            and subprocess.run([syspy, "-c", "import matplotlib"],
                               capture_output=True).returncode == 0:
        os.execv(syspy, [syspy, os.path.abspath(__file__), *sys.argv[1:]])


def main():
    reexec_for_matplotlib()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sinks", default="file,kafka,redis")
    p.add_argument("--conns", default="1,8,50")
    p.add_argument("--duration", type=int, default=5, help="s per closed-loop run (5)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    p.add_argument("--latency-duration", type=int, default=6, help="s at half peak (6)")
    p.add_argument("--warmup", type=int, default=5, help="s of load per system first (5)")
    p.add_argument("--no-smoke", action="store_true", help="skip instructions per webhook")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--name", default=None, help="file name stem (default peers-<date>)")
    p.add_argument("--sample", default=os.path.join(ROOT, "tests", "fixtures", "alma",
                                                    "loan_created.json"))
    a = p.parse_args()
    a.conns = [int(c) for c in a.conns.split(",")]
    sinks = a.sinks.split(",")
    t0 = time.time()
    benchrun.ensure_tools(["wrk", "openssl"])
    if not a.no_build:
        make_tools()
    if {"kafka", "redis"} & set(sinks):
        a.benthos = ensure_benthos()
        a.node_modules = ensure_node()
    body = os.path.realpath(a.sample)
    body_bytes = open(body, "rb").read()
    sig = benchrun.signature(body_bytes)
    tmpdir = tempfile.mkdtemp(prefix="almabridge-peers-")
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    res = {"env": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "host_cpus": os.cpu_count(), "cpu": benchrun.cpu_model(),
        "git": git, "loadavg": open("/proc/loadavg").read().split()[:3],
        "benthos": BENTHOS_VERSION, "node": subprocess.run(["node", "-v"], capture_output=True,
                                                          text=True).stdout.strip()},
        "conns": a.conns, "rounds": a.rounds, "duration": a.duration,
        "latency_duration": a.latency_duration, "sample": os.path.relpath(body, ROOT),
        "sinks": {}}
    services = {}
    try:
        if "kafka" in sinks:
            sys.path.insert(0, os.path.join(ROOT, "tests", "kafka"))
            from broker import KafkaBroker
            log("starting a Kafka broker")
            a.kafka_gc_log = os.path.join(tmpdir, "kafka-gc.log")
            services["kafka"] = KafkaBroker(
                log_level="WARN",
                jvm_opts=KAFKA_JVM_OPTS + [f"-Xlog:gc:file={a.kafka_gc_log}"]).start()
            services["kafka"].create_topic(TOPIC)
        if "redis" in sinks:
            sys.path.insert(0, os.path.join(ROOT, "tests", "redis"))
            from server import RedisServer
            services["redis"] = RedisServer().start()
        for sink in sinks:
            log(f"--- {sink} sink")
            res["sinks"][sink] = bench_sink(sink, a, tmpdir, body, sig, services)
    finally:
        for s in services.values():
            s.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    if not a.no_smoke and shutil.which("valgrind"):
        sj = os.path.join(tempfile.gettempdir(), f"smoke-{os.getpid()}.json")
        r = subprocess.run([sys.executable, os.path.join(HERE, "smoke.py"), "--json", sj],
                           capture_output=True, text=True)
        if os.path.exists(sj):
            res["smoke"] = json.load(open(sj))
            os.unlink(sj)
        else:
            log(f"smoke.py failed: {r.stdout[-1000:]} {r.stderr[-1000:]}")
    res["summary"] = summarise(res)
    res["elapsed_s"] = round(time.time() - t0, 1)
    os.makedirs(a.out, exist_ok=True)
    base = os.path.join(a.out, a.name or f"peers-{res['env']['date'][:10]}")
    md = markdown(res) + f"\nWhole run: {res['elapsed_s']} s.\n"
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(md)
    try:
        files = charts(res, base)
    except ImportError:
        files = []
        log("matplotlib missing (Debian: python3-matplotlib): no charts")
    print(md)
    print("written: " + ", ".join(os.path.relpath(x, ROOT) for x in
                                  [base + ".json", base + ".md", *files]))


if __name__ == "__main__":
    main()
