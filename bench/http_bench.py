#!/usr/bin/env python3
"""The HTTP sink against the Redis sink, side by side in one run.

    make build/almabridge bench-tools
    python3 bench/http_bench.py [--conns 8,50] [--rounds 3] [--duration 8] [--threads 2]

Starts a Redis server (tests/redis/server.py) and the HTTP targets (--targets), each
answering every POST 200 at once: `evhttp`, the bare evhttp peer (bench/peers/bare_evhttp.c,
libevent's evhttp), and `nginx` (`return 200`, one worker process, access log off; the
nginx-light package is installed with apt-get when missing). Then one daemon per sink with
the same options but the sink: `--sink redis`, and `--sink http --http-url
http://127.0.0.1:PORT/` (binary mode) for each target. For each round and each
concurrency, each daemon in turn gets `--duration` s of closed-loop wrk with post.lua (the
signed 1.5 kB loan_created.json), the order reversed every other round so that a drift of
the shared machine cancels out of the ratio. Prints a Markdown table (req/s per round, the
mean, the ratio http/redis, the CPU per request of the daemon, of its peer (redis-server or
the HTTP target) and of wrk, and the CPU the rest of the machine used meanwhile: the trust
column on a shared machine) and writes --json. On a 2-core machine that the daemon, its
peer and wrk share, req/s ~ 2 cores / the CPU per request of all three.

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


NGINX_CONF = """worker_processes 1;
master_process off;
daemon off;
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            add_header Cache-Control no-store;
            return 200 '{{"id":"4729646413727017106","status":"accepted"}}';
        }}
    }}
}}
"""


def nginx_binary():
    """nginx, installed (nginx-light, not started as a service) when missing; or None."""
    found = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing nginx-light with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "nginx-light"], env=env,
                       capture_output=True)
        found = shutil.which("/usr/sbin/nginx")
    return found


class Target:
    """An HTTP target that answers every POST 200 at once, on a free port: `evhttp`
    (bare_evhttp, --target-threads loops) or `nginx` (one worker process, no master, so
    that its pid is the process that does the work)."""

    def __init__(self, kind, tmpdir, threads):
        self.kind = kind
        self.port = benchrun.free_port()
        self.log = open(os.path.join(tmpdir, f"target-{kind}.log"), "wb")
        if kind == "nginx":
            conf = os.path.join(tmpdir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(tmp=tmpdir, port=self.port))
            cmd = [nginx_binary(), "-c", conf, "-p", tmpdir]
        else:
            cmd = [os.path.join(ROOT, "build", "bench", "bare_evhttp"),
                   "--listen", f"127.0.0.1:{self.port}", "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"{kind} did not start (see {self.log.name})")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def sys_cpu_s(pid):
    """CPU-seconds a process has spent in the kernel so far (stime, /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[12]) / os.sysconf("SC_CLK_TCK")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--conns", default="8,50")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="almabridge --threads (2)")
    p.add_argument("--target-threads", type=int, default=1, help="bare_evhttp's loops (1)")
    p.add_argument("--targets", default="evhttp,nginx",
                   help="HTTP targets, each with its own http daemon: evhttp, nginx")
    p.add_argument("--json", default=None)
    p.add_argument("--almabridge", default=os.path.join(ROOT, "build", "almabridge"),
                   help="the daemon's binary (build/almabridge), e.g. a build of another commit")
    p.add_argument("--no-callgrind", action="store_true")
    p.add_argument("--callgrind-requests", type=int, default=2000)
    p.add_argument("--content-mode", default="binary",
                   help="the http sink's --content-mode, or both (binary,structured): one http "
                        "daemon per target and mode (binary)")
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
    ab = os.path.realpath(a.almabridge)
    redis = None
    targets = {}
    daemons = {}
    res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip(),
           "args": vars(a), "runs": []}
    try:
        redis = RedisServer().start()
        kinds = [k for k in a.targets.split(",") if k != "nginx" or nginx_binary()]
        if kinds != a.targets.split(","):
            log("nginx is not at hand: the evhttp target only")
        targets = {f"http-{k}": Target(k, tmpdir, a.target_threads) for k in kinds}
        peers = {"redis": redis._proc.pid, **{n: t.proc.pid for n, t in targets.items()}}
        common = ["--threads", str(a.threads), "--drain-grace", "0", "--log-level", "warn"]
        sinks = {"redis": ["--sink", "redis", "--redis", redis.url, "--route", "alma"]}
        modes = a.content_mode.split(",")
        for tn, t in targets.items():
            for mode in modes:
                n = tn if len(modes) == 1 else f"{tn}-{mode}"
                peers[n] = t.proc.pid
                sinks[n] = ["--sink", "http", "--http-url", f"http://127.0.0.1:{t.port}/",
                            "--content-mode", mode,
                            "--dead-letter-file", os.path.join(tmpdir, f"dl-{n}.jsonl")]
        res["sinks"] = list(sinks)
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
                    posts0 = d.gauge("almabridge_http_posts_total") or 0
                    busy0, cpu0 = benchrun.machine_busy_s(), d.cpu_seconds()
                    sys0 = sys_cpu_s(d.pid)
                    peer0 = benchrun.proc_cpu_s(peers[name])
                    w = benchrun.wrk(d.url, c, a.duration, a.sample, sig)
                    busy, cpu = benchrun.machine_busy_s() - busy0, d.cpu_seconds() - cpu0
                    peer = benchrun.proc_cpu_s(peers[name]) - peer0
                    dsys = sys_cpu_s(d.pid) - sys0
                    ok1, bad1 = d.counts()
                    posts = (d.gauge("almabridge_http_posts_total") or 0) - posts0
                    run = {"round": r, "conns": c, "sink": name, "rps": w["rps"],
                           "non200": bad1 - bad0, "errors": w.get("errors", 0),
                           "daemon_cores": cpu / a.duration, "peer_cores": peer / a.duration,
                           "daemon_sys_cores": dsys / a.duration,
                           "wrk_cores": w["wrk_cpu_s"] / a.duration,
                           "other_cores": max(0.0, (busy - cpu - peer - w["wrk_cpu_s"]) / a.duration),
                           "events_per_post": (ok1 - ok0) / posts if posts else None}
                    res["runs"].append(run)
                    us = lambda cores: cores * 1e6 / max(w["rps"], 1)
                    log(f"round {r} c={c} {name}: {w['rps']:.0f} req/s, non-200 {run['non200']}, "
                        f"CPU µs/request daemon {us(run['daemon_cores']):.1f} peer "
                        f"{us(run['peer_cores']):.1f} wrk {us(run['wrk_cores']):.1f}, "
                        f"other processes {run['other_cores']:.2f} cores"
                        + (f", {run['events_per_post']:.1f} events/POST" if posts else ""))
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
        for t in targets.values():
            t.stop()
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
    a = res["args"]
    https = [n for n in res.get("sinks", ["redis", "http"]) if n != "redis"]
    binary = a.get("almabridge", "")
    built = "" if binary.endswith(os.path.join("build", "almabridge")) else f" ({binary})"
    L = [f"commit {res['commit']}{built}, {res['date']}, almabridge --threads {a['threads']}, "
         f"http --content-mode {a['content_mode']}, {a['rounds']} rounds of {a['duration']} s; "
         "peer: redis-server, or the daemon's HTTP target",
         "",
         "| c | sink | req/s mean (rounds) | / redis | CPU µs per request: daemon (of it in the kernel) + peer + wrk = all | bound | events per POST | non-200 | other processes (cores, mean) |",
         "|---|---|---|---|---|---|---|---|---|"]
    cpu = {}
    for c in conns:
        mean = {}
        for s in ["redis", *https]:
            runs = [r for r in res["runs"] if r["conns"] == c and r["sink"] == s]
            if not runs:
                continue
            mean[s] = statistics.mean(r["rps"] for r in runs)
            us = {k: statistics.mean(r[k] / r["rps"] * 1e6 for r in runs)
                  for k in ("daemon_cores", "peer_cores", "wrk_cores")}
            ksys = statistics.mean(r["daemon_sys_cores"] / r["rps"] * 1e6 for r in runs)
            cpu[c, s] = dict(us, sys=ksys)
            ratio = f"**{mean[s] / mean['redis']:.2f}**" if s != "redis" and "redis" in mean else ""
            bound = ""
            if s != "redis" and (c, "redis") in cpu:
                # this sink's CPU per request with its daemon's user-space time replaced by
                # the Redis daemon's: what is left is the kernel's and the target's share
                r = cpu[c, "redis"]
                floor = (r["daemon_cores"] - r["sys"]) + ksys + us["peer_cores"] + r["wrk_cores"]
                bound = f"{sum(r[k] for k in ('daemon_cores', 'peer_cores', 'wrk_cores')) / floor:.2f}"
            each = ", ".join(f"{r['rps']:.0f}" for r in runs)
            epp = [r["events_per_post"] for r in runs if r.get("events_per_post")]
            epp = f"{statistics.mean(epp):.1f}" if epp else ""
            L.append(f"| {c} | {s} | {mean[s]:.0f} ({each}) | "
                     f"{ratio} | {us['daemon_cores']:.1f} ({ksys:.1f}) + {us['peer_cores']:.1f} + "
                     f"{us['wrk_cores']:.1f} = {sum(us.values()):.1f} | {bound} | {epp} | "
                     f"{sum(r['non200'] for r in runs)} | "
                     f"{statistics.mean(r['other_cores'] for r in runs):.2f} |")
    L += ["", "bound: the ratio to expect if the http daemon's user-space CPU per request were "
          "the Redis daemon's (libcurl and the sink free), its kernel time and its target's "
          "CPU as measured, wrk's as with Redis: all / (redis daemon user + http daemon "
          "kernel + http target + redis wrk) of the Redis rows."]
    cg = res.get("callgrind")
    if cg and all(v["per_webhook"] for v in cg.values()):
        names = list(cg)
        L += ["", "| instructions per webhook (callgrind, --threads 1) | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names),
              "| all threads of the daemon | " + " | ".join(f"{cg[n]['per_webhook']:,}" for n in names) + " |"]
        fmt = lambda v: f"{v:,}" if v is not None else "-"
        for part in sorted({p for n in names for p in cg[n]["parts"]}):
            L.append(f"| {part} (inclusive) | " +
                     " | ".join(fmt(cg[n]["parts"].get(part)) for n in names) + " |")
    return "\n".join(L)

if __name__ == "__main__":
    main()
