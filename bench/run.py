#!/usr/bin/env python3
"""almabridge benchmark: group commit, threads, memory, per-request CPU cost.

Run from anywhere:  python3 bench/run.py            (about 3 minutes)
                    python3 bench/run.py --help

Everything is measured in ONE run against build/almabridge on a free loopback port, with the
file sink in a fresh temporary directory. The machine is expected to be small and noisy, so
the interesting outputs are RATIOS taken within the same run (c=64 vs c=1, threads 2 vs 1,
requests per fdatasync), not absolute numbers.

Phases (see bench/README.md):
  a  group commit: c=1, 8, 64 with fsync (default), c=64 with --file-fsync=false;
     fdatasync/writev counted with `perf stat -e syscalls:sys_enter_*` (strace fallback)
  e  the same fsync runs with fdatasync made 2 ms slower (LD_PRELOAD tests/shim/slowsync.c)
  b  threads: --threads 1 vs 2, c=64, --file-fsync=false, interleaved 1,2,2,1,1,2
  c  memory: VmRSS/VmHWM idle, after 30 s at c=64 (fsync on), with 1000 idle connections
  d  callgrind: instructions per request for N requests at c=4, --threads 1, no fsync

Tools it needs (installed with apt-get when missing and running as root): wrk, perf
(linux-perf), valgrind, openssl.
"""
import argparse
import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECRET = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, **kw)


# ---------------------------------------------------------------------------- tools

APT_PKG = {"wrk": "wrk", "perf": "linux-perf", "valgrind": "valgrind", "openssl": "openssl"}


def ensure_tools(names):
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    pkgs = [APT_PKG[n] for n in missing]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log(f"missing {missing}; install {pkgs} (apt-get) and rerun")
        return
    log(f"installing {pkgs} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", *pkgs], env=env, capture_output=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", *pkgs], env=env, capture_output=True)
    still = [n for n in missing if shutil.which(n) is None]
    if still:
        log(f"could not install {still}")


# ---------------------------------------------------------------------------- daemon

def make_daemon():
    """`make build/almabridge` in the checkout; exits with make's output when it fails."""
    r = subprocess.run(["make", "-C", ROOT, "build/almabridge"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"make failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def signature(body_bytes):
    """X-Exl-Signature for these body bytes: base64 of their HMAC-SHA256 with SECRET."""
    return base64.b64encode(hmac.new(SECRET.encode(), body_bytes, hashlib.sha256).digest()
                            ).decode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_cpu_s(pid):
    """CPU-seconds (utime + stime) a process has used so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


class DaemonProcess:
    """An almabridge process listening on 127.0.0.1:port: started in its own session with
    its output in logfile, waited for until GET ready_path answers 200, stopped with SIGTERM.
    Daemon (file sink, below) and kafka_bench.py's KafkaDaemon build the command line."""

    def __init__(self, port, args, logfile, wrapper=None, env=None, ready_path="/healthz",
                 ready_timeout=10.0, not_ready="almabridge did not become healthy"):
        self.port = port
        self.logfile = logfile
        env = dict(os.environ, ALMABRIDGE_SECRET=SECRET, **(env or {}))
        self.logfh = open(self.logfile, "wb")
        self.proc = subprocess.Popen((wrapper or []) + args, env=env, stdout=self.logfh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + ready_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"almabridge exited: {open(self.logfile).read()[-2000:]}")
            try:
                if self.get(ready_path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(not_ready)

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()

    def counts(self):
        """(answered 200, answered other) from /metrics."""
        ok = other = 0
        for line in self.get("/metrics")[1].splitlines():
            m = re.match(r'almabridge_requests_total\{status="(\d+)"[^}]*\}\s+([0-9.e+]+)', line)
            if m:
                if m.group(1) == "200":
                    ok += float(m.group(2))
                else:
                    other += float(m.group(2))
        return int(ok), int(other)

    def gauge(self, name):
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.split()[-1])
        return None

    def cpu_seconds(self):
        return proc_cpu_s(self.pid)

    def mem(self):
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])
        return out

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.logfh.close()


class Daemon(DaemonProcess):
    """build/almabridge with the file sink, in tmpdir/name."""

    def __init__(self, binary, tmpdir, threads, fsync, name, wrapper=None, ready_timeout=10.0,
                 env=None):
        port = free_port()
        self.dir = os.path.join(tmpdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.events = os.path.join(self.dir, "events.jsonl")
        args = [binary, "--listen", f"127.0.0.1:{port}", "--file", self.events,
                "--threads", str(threads), f"--file-fsync={'true' if fsync else 'false'}",
                "--drain-grace", "0"]
        super().__init__(port, args, os.path.join(self.dir, "almabridge.log"), wrapper=wrapper,
                         env=env, ready_timeout=ready_timeout)

    def sink_fd(self):
        """The daemon's file descriptor for the event file, or None."""
        d = f"/proc/{self.pid}/fd"
        for fd in os.listdir(d):
            try:
                if os.readlink(os.path.join(d, fd)) == self.events:
                    return int(fd)
            except OSError:
                pass
        return None

    def stop(self):
        super().stop()
        # the event files of a phase can be hundreds of MB: drop them
        try:
            os.unlink(self.events)
        except OSError:
            pass


# ---------------------------------------------------------------------------- syscall counting

class SyscallCounter:
    """Counts, over a window, a running daemon's fdatasync calls, its writev calls on the
    sink file (one per batch of up to 64 events) and all its writev calls (libevent also
    sends HTTP answers with writev).

    perf stat on the syscall tracepoints costs next to nothing; the strace fallback stops the
    process on every syscall and so slows it down (reported as method=strace)."""

    method = None
    KEYS = ("fdatasync", "sink_writev", "writev_all", "task_clock_ms")

    @classmethod
    def probe(cls):
        if shutil.which("perf"):
            r = sh(["perf", "stat", "-x,", "-e", "syscalls:sys_enter_fdatasync", "true"])
            if r.returncode == 0 and "fdatasync" in r.stderr and "not supported" not in r.stderr:
                cls.method = "perf"
                return
        if shutil.which("strace"):
            cls.method = "strace"
            return
        cls.method = None

    def __init__(self, daemon, tmpdir):
        pid = daemon.pid
        self.out = os.path.join(tmpdir, f"sys.{pid}.{time.monotonic_ns()}.txt")
        self.proc = None
        if self.method == "perf":
            # task-clock: CPU time as the scheduler accounts it, over exactly this window
            # (/proc/PID/stat's utime+stime, kept as a cross-check, are tick-sampled).
            cmd = ["perf", "stat", "-x,", "-o", self.out, "-p", str(pid),
                   "-e", "task-clock", "-e", "syscalls:sys_enter_fdatasync"]
            fd = daemon.sink_fd()
            if fd is not None:  # kernel-side filter: only writev on the event file
                cmd += ["-e", "syscalls:sys_enter_writev", "--filter", f"fd == {fd}"]
            self.has_sink = fd is not None
            cmd += ["-e", "syscalls:sys_enter_writev"]
        elif self.method == "strace":
            cmd = ["strace", "-f", "-c", "-e", "trace=fdatasync,writev", "-p", str(pid),
                   "-o", self.out]
        else:
            return
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let it attach

    def stop(self):
        counts = {k: None for k in self.KEYS}
        if self.proc is None:
            return counts
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        text = open(self.out).read()
        if self.method == "perf":
            vals = []
            for line in text.splitlines():
                if line.strip() and not line.startswith("#"):
                    try:
                        vals.append(float(line.split(",")[0]))
                    except ValueError:  # <not counted> / <not supported>
                        vals.append(None)
            keys = ("task_clock_ms", "fdatasync", "sink_writev", "writev_all") \
                if self.has_sink else ("task_clock_ms", "fdatasync", "writev_all")
            counts.update(zip(keys, vals))
            for k in ("fdatasync", "sink_writev", "writev_all"):
                if counts[k] is not None:
                    counts[k] = int(counts[k])
        else:  # strace -c table: % time, seconds, usecs/call, calls, errors, syscall
            for s, k in (("fdatasync", "fdatasync"), ("writev", "writev_all")):
                m = re.search(r"^\s*[0-9.]+\s+[0-9.]+\s+[0-9]+\s+([0-9]+)\s+(?:[0-9]+\s+)?"
                              + s + r"\s*$", text, re.M)
                counts[k] = int(m.group(1)) if m else 0
        return counts


# ---------------------------------------------------------------------------- load

def machine_busy_s():
    """CPU-seconds the whole machine spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK  # user..steal; guest is already in user


def wrk(url, conns, duration, body, sig, threads=None):
    threads = threads or max(1, min(2, conns))
    env = dict(os.environ, BENCH_BODY=body, BENCH_SIG=sig)
    perf_out = None
    cmd = []
    if SyscallCounter.method == "perf":
        perf_out = os.path.join(tempfile.gettempdir(), f"wrk-perf.{os.getpid()}.txt")
        cmd = ["perf", "stat", "-x,", "-e", "task-clock", "-o", perf_out, "--"]
    cmd += ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s", "--timeout", "10s",
           "-s", os.path.join(HERE, "post.lua"), url + "/webhook"]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = re.search(r"^BENCH_JSON (\{.*\})$", r.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk failed: {r.stdout}\n{r.stderr}")
    res = json.loads(m.group(1))
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["wrk_cpu_s"] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if perf_out:
        with open(perf_out) as f:
            for line in f:
                if ",task-clock" in line:
                    res["wrk_cpu_s"] = float(line.split(",")[0]) / 1000
        os.unlink(perf_out)
    return res


def measured_phase(d, conns, duration, body, sig, tmpdir, label):
    """wrk at `conns` for `duration` s, with syscall counting, CPU and /metrics deltas."""
    ok0, other0 = d.counts()
    cpu0 = d.cpu_seconds()
    counter = SyscallCounter(d, tmpdir)
    busy0 = machine_busy_s()
    w = wrk(d.url, conns, duration, body, sig)
    busy1 = machine_busy_s()
    calls = counter.stop()
    cpu1 = d.cpu_seconds()
    ok1, other1 = d.counts()
    ok, other = ok1 - ok0, other1 - other0
    # CPU: perf's task-clock over the window when perf is there, else /proc ticks
    cpu_s = calls["task_clock_ms"] / 1000 if calls["task_clock_ms"] else cpu1 - cpu0
    win_s = w["duration_us"] / 1e6
    res = {
        "label": label, "conns": conns, "rps": round(w["rps"], 1),
        "p50_ms": w["lat_p50_us"] / 1000, "p90_ms": w["lat_p90_us"] / 1000,
        "p99_ms": w["lat_p99_us"] / 1000, "max_ms": w["lat_max_us"] / 1000,
        "wrk_requests": w["requests"], "answered_200": ok, "answered_other": other,
        "wrk_errors": {k[4:]: w[k] for k in w if k.startswith("err_") and w[k]},
        "fdatasync": calls["fdatasync"], "sink_writev": calls["sink_writev"],
        "writev_all": calls["writev_all"],
        "daemon_cpu_s": round(cpu_s, 2), "daemon_cpu_s_proc_ticks": round(cpu1 - cpu0, 2),
        # CPU cores busy over the run: 2.0 means both cores of this machine. The perf
        # window opens 0.5 s before wrk starts; the daemon is idle then.
        "daemon_cores": round(cpu_s / win_s, 2),
        "wrk_cores": round(w["wrk_cpu_s"] / win_s, 2),
        # the whole machine's busy cores during wrk, and what neither the daemon nor wrk
        # used (other processes on this shared machine, kernel work not charged to either):
        # the noise indicator. Tick-sampled, so approximate.
        "machine_cores": round((busy1 - busy0) / win_s, 2),
    }
    res["other_cores"] = round(res["machine_cores"] - res["daemon_cores"] - res["wrk_cores"], 2)
    res["cpu_us_per_req"] = round(1e6 * res["daemon_cpu_s"] / ok, 1) if ok else None
    if calls["fdatasync"]:
        res["req_per_fsync"] = round(ok / calls["fdatasync"], 2)
    if calls["sink_writev"]:
        res["req_per_sink_writev"] = round(ok / calls["sink_writev"], 2)
    if other or res["wrk_errors"]:
        log(f"WARNING {label}: {other} non-200 answers, wrk errors {res['wrk_errors']}")
    log(f"{label}: {res['rps']:.0f} req/s p50 {res['p50_ms']:.2f} ms p99 {res['p99_ms']:.2f} ms "
        f"fdatasync {res['fdatasync']} req/fsync {res.get('req_per_fsync')} "
        f"sink writev {res['sink_writev']} cpu {res['cpu_us_per_req']} us/req "
        f"cores daemon {res['daemon_cores']} wrk {res['wrk_cores']} "
        f"other {res['other_cores']}")
    return res


def post_n(port, body_bytes, sig, total, conns):
    """Send exactly `total` signed POSTs over `conns` keep-alive connections; returns #200."""
    ok = [0] * conns
    headers = {"Content-Type": "application/json", "X-Exl-Signature": sig}

    def worker(i, n):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            for _ in range(n):
                c.request("POST", "/webhook", body=body_bytes, headers=headers)
                r = c.getresponse()
                r.read()
                ok[i] += r.status == 200
        except OSError:
            pass  # not listening yet, or gone: what was not answered 200 does not count
        finally:
            c.close()

    per = [total // conns + (1 if i < total % conns else 0) for i in range(conns)]
    ts = [threading.Thread(target=worker, args=(i, per[i])) for i in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(ok)


# ---------------------------------------------------------------------------- phases

def fsync_probe(tmpdir, nbytes, seconds=2.0):
    """The disk under tmpdir by itself: append nbytes + fdatasync in a loop, one thread."""
    path = os.path.join(tmpdir, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    data = b"x" * (nbytes - 1) + b"\n"
    lat = []
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            os.write(fd, data)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    res = {"n": len(lat), "seconds": seconds, "bytes": nbytes,
           "mean_us": round(1e6 * statistics.mean(lat), 1),
           "p50_us": round(1e6 * lat[len(lat) // 2], 1),
           "p99_us": round(1e6 * lat[int(len(lat) * 0.99)], 1),
           "syncs_per_s": round(len(lat) / seconds)}
    log(f"fdatasync probe: {res}")
    return res


def phase_group_commit(a, binary, tmpdir, body, sig):
    out = {"fsync": [], "nofsync": [],
           "fsync_probe": fsync_probe(tmpdir, os.path.getsize(body) + 300)}
    d = Daemon(binary, tmpdir, threads=2, fsync=True, name="a-fsync")
    try:
        wrk(d.url, 8, 2, body, sig)  # warm-up
        for c in (1, 8, 64):
            out["fsync"].append(measured_phase(d, c, a.duration, body, sig, tmpdir,
                                               f"fsync c={c}"))
    finally:
        d.stop()
    d = Daemon(binary, tmpdir, threads=2, fsync=False, name="a-nofsync")
    try:
        wrk(d.url, 8, 2, body, sig)
        out["nofsync"].append(measured_phase(d, 64, a.duration, body, sig, tmpdir,
                                             "no-fsync c=64"))
    finally:
        d.stop()
    f = {r["conns"]: r for r in out["fsync"]}
    out["ratios"] = {
        "rps_c8_over_c1": round(f[8]["rps"] / f[1]["rps"], 2),
        "rps_c64_over_c1": round(f[64]["rps"] / f[1]["rps"], 2),
        "rps_nofsync_over_fsync_c64": round(out["nofsync"][0]["rps"] / f[64]["rps"], 2),
    }
    return out


THREAD_ORDER = (1, 2, 2, 1, 1, 2)  # ABBAAB: a linear drift of the machine cancels out


def phase_slowdisk(a, binary, tmpdir, body, sig):
    """Phase a's fsync runs again with fdatasync made a.slow_fsync_ms slower (LD_PRELOAD)."""
    so = os.path.join(tmpdir, "slowsync.so")  # the test suite's fault-injection shim
    r = sh(["cc", "-shared", "-fPIC", "-O2", "-o", so,
            os.path.join(HERE, "..", "tests", "shim", "slowsync.c"), "-ldl"])
    if r.returncode != 0:
        log(f"cannot build slowsync.so, phase e skipped: {r.stderr}")
        return None
    out = {"added_ms": a.slow_fsync_ms, "fsync": []}
    d = Daemon(binary, tmpdir, threads=2, fsync=True, name="e-slowdisk",
               env={"LD_PRELOAD": so, "SLOWSYNC_DELAY_US": str(int(a.slow_fsync_ms * 1000))})
    try:
        wrk(d.url, 8, 2, body, sig)
        for c in (1, 8, 64):
            out["fsync"].append(measured_phase(d, c, a.duration, body, sig, tmpdir,
                                               f"fsync +{a.slow_fsync_ms:g} ms c={c}"))
    finally:
        d.stop()
    f = {r["conns"]: r for r in out["fsync"]}
    out["ratios"] = {"rps_c8_over_c1": round(f[8]["rps"] / f[1]["rps"], 2),
                     "rps_c64_over_c1": round(f[64]["rps"] / f[1]["rps"], 2)}
    return out


def phase_threads(a, binary, tmpdir, body, sig):
    runs = []
    for i, t in enumerate(THREAD_ORDER):
        d = Daemon(binary, tmpdir, threads=t, fsync=False, name=f"b-{i}-t{t}")
        try:
            wrk(d.url, 8, 1, body, sig)
            r = measured_phase(d, 64, a.threads_duration, body, sig, tmpdir,
                               f"threads={t} (run {i + 1}/{len(THREAD_ORDER)}) c=64 no-fsync")
            r["threads"] = t
            runs.append(r)
        finally:
            d.stop()
    t1 = [r["rps"] for r in runs if r["threads"] == 1]
    t2 = [r["rps"] for r in runs if r["threads"] == 2]
    return {
        "runs": runs,
        "rps_threads1_mean": round(statistics.mean(t1), 1),
        "rps_threads2_mean": round(statistics.mean(t2), 1),
        "ratio_t2_over_t1": round(statistics.mean(t2) / statistics.mean(t1), 2),
        # each adjacent (1, 2) pair of runs: the spread shows the noise
        "ratio_per_pair": [round(next(r for r in runs[i:i + 2] if r["threads"] == 2)["rps"]
                                 / next(r for r in runs[i:i + 2] if r["threads"] == 1)["rps"], 2)
                           for i in range(0, len(runs) - 1, 2)],
        "cpu_us_per_req_threads1_mean": round(statistics.mean(
            r["cpu_us_per_req"] for r in runs if r["threads"] == 1), 1),
        "cpu_us_per_req_threads2_mean": round(statistics.mean(
            r["cpu_us_per_req"] for r in runs if r["threads"] == 2), 1),
    }


def open_idle(port, n):
    """n keep-alive connections, each answered one GET /healthz and then left idle."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
        socks.append(s)
    answered = 0
    for s in socks:
        try:
            answered += s.recv(4096).startswith(b"HTTP/1.1 200")
        except OSError:
            pass
    return socks, answered


def phase_memory(a, binary, tmpdir, body, sig):
    d = Daemon(binary, tmpdir, threads=2, fsync=True, name="c-mem")
    out = {}
    try:
        time.sleep(1)
        out["idle"] = d.mem()
        log(f"memory idle: {out['idle']}")
        w = wrk(d.url, 64, a.mem_duration, body, sig)
        out["after_load"] = d.mem()
        out["load"] = {"conns": 64, "seconds": a.mem_duration, "rps": round(w["rps"], 1),
                       "requests": w["requests"], "fsync": True}
        log(f"memory after {a.mem_duration} s at c=64 ({w['rps']:.0f} req/s): "
            f"{out['after_load']}")
        time.sleep(2)
        out["after_load_settled_2s"] = d.mem()
        socks, answered = open_idle(d.port, a.idle_conns)
        time.sleep(1)
        out["idle_conns"] = {"n": a.idle_conns, "answered": answered,
                             "daemon_reports": d.gauge("almabridge_connections"), **d.mem()}
        out["idle_conns"]["rss_delta_kb"] = (out["idle_conns"]["VmRSS"]
                                             - out["after_load_settled_2s"]["VmRSS"])
        out["idle_conns"]["kb_per_conn"] = round(out["idle_conns"]["rss_delta_kb"]
                                                 / a.idle_conns, 2)
        log(f"memory with {a.idle_conns} idle connections: {out['idle_conns']}")
        for s in socks:
            s.close()
    finally:
        d.stop()
    # the same idle-connection measure on a fresh daemon that never saw load
    d = Daemon(binary, tmpdir, threads=2, fsync=True, name="c-mem-fresh")
    try:
        time.sleep(0.5)
        before = d.mem()
        socks, answered = open_idle(d.port, a.idle_conns)
        time.sleep(1)
        after = d.mem()
        out["idle_conns_fresh"] = {"n": a.idle_conns, "answered": answered,
                                   "before": before, "after": after,
                                   "rss_delta_kb": after["VmRSS"] - before["VmRSS"],
                                   "kb_per_conn": round((after["VmRSS"] - before["VmRSS"])
                                                        / a.idle_conns, 2)}
        log(f"fresh daemon, {a.idle_conns} idle connections: {out['idle_conns_fresh']}")
        for s in socks:
            s.close()
    finally:
        d.stop()
    return out


def callgrind_total(path):
    """The dump's `summary:` (= callgrind_annotate's PROGRAM TOTALS)."""
    totals = None
    with open(path) as f:
        for line in f:
            if line.startswith("summary:"):
                return int(line.split()[1])
            if line.startswith("totals:"):
                totals = int(line.split()[1])
    return totals


def phase_callgrind(a, binary, tmpdir, body, sig):
    body_bytes = open(body, "rb").read()
    binary = os.path.realpath(binary)
    outbase = os.path.join(tmpdir, "callgrind.out")
    d = Daemon(binary, tmpdir, threads=1, fsync=False, name="d-callgrind",
               wrapper=["valgrind", "--tool=callgrind", f"--callgrind-out-file={outbase}"],
               ready_timeout=60)
    try:
        warm = post_n(d.port, body_bytes, sig, 200, a.callgrind_conns)
        # the valgrind process is d.pid (valgrind execs into the tool)
        r = sh(["callgrind_control", "-z", str(d.pid)])
        if r.returncode != 0:
            raise RuntimeError(f"callgrind_control -z: {r.stdout} {r.stderr}")
        t0 = time.time()
        ok = post_n(d.port, body_bytes, sig, a.callgrind_requests, a.callgrind_conns)
        secs = time.time() - t0
        before = set(os.listdir(tmpdir))
        r = sh(["callgrind_control", "-d", str(d.pid)])
        dumps = sorted(f for f in set(os.listdir(tmpdir)) - before
                       if f.startswith("callgrind.out"))
        if not dumps:
            raise RuntimeError(f"no callgrind dump: {r.stdout} {r.stderr}")
        dump = os.path.join(tmpdir, dumps[-1])
        total = callgrind_total(dump)
    finally:
        d.stop()
    res = {"requests": a.callgrind_requests, "answered_200": ok, "warmup_200": warm,
           "conns": a.callgrind_conns, "threads": 1, "fsync": False, "seconds": round(secs, 1),
           "instructions": total,
           "instructions_per_request": round(total / a.callgrind_requests) if total else None}
    # top functions by self cost (inclusive of nothing), for the interpretation
    if shutil.which("callgrind_annotate"):
        res["top_self"] = annotate(dump, False, a.callgrind_top, binary)
        res["top_inclusive"] = annotate(dump, True, a.callgrind_top + 8, binary)
    log(f"callgrind: {res['instructions_per_request']} instructions/request "
        f"({ok}/{a.callgrind_requests} answered 200)")
    return res


def annotate(dump, inclusive, n, binary=None):
    """Top n functions of a callgrind dump, by self or inclusive cost."""
    r = sh(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
            "--threshold=100", dump])
    top, seen = [], set()
    for line in r.stdout.splitlines():
        m = re.match(r"^\s*([0-9,]+)\s+\(\s*([0-9.]+)%\)\s+(.*)$", line)
        # Frames that were on the stack when the counters were zeroed (clone, start_thread,
        # event_base_dispatch, the worker loop) show as ~100% even as "self" cost in a dump
        # taken after `callgrind_control -z`: an artifact, left out.
        if m and "PROGRAM TOTALS" not in line and float(m.group(2)) < 90:
            # the inclusive listing names some functions twice ("file:fn [object]" and
            # "/abs/file:fn"): keep the first
            key = m.group(3).split(" [")[0].rsplit(":", 1)[-1]
            if not key.startswith("0x") and key in seen:
                continue
            seen.add(key)
            top.append({"Ir": int(m.group(1).replace(",", "")), "pct": float(m.group(2)),
                        "fn": m.group(3).strip().replace(binary or "\0", "almabridge")[:110]})
        if len(top) >= n:
            break
    return top


# ---------------------------------------------------------------------------- report

def cpu_model():
    """The first "model name" of /proc/cpuinfo, or ""."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def environment(tmpdir):
    cpu = cpu_model()
    git = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = sh(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]).stdout
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
        "tmpdir": tmpdir, "df_T": sh(["df", "-T", tmpdir]).stdout.strip(),
        "wrk": (sh(["wrk", "-v"]).stdout or "").splitlines()[0:1],
        "git": git + (" (dirty)" if dirty.strip() else ""),
        "syscall_counter": SyscallCounter.method,
    }


def commit_table(L, rows):
    L.append("| phase | req/s | p50 ms | p99 ms | answered 200 | fdatasync | req/fsync "
             "| sink writev | req/writev | daemon CPU µs/req | cores daemon / wrk / other "
             "| non-200 |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        L.append(f"| {r['label']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                 f"| {r['answered_200']} | {r['fdatasync']} | {r.get('req_per_fsync', '–')} "
                 f"| {r['sink_writev']} | {r.get('req_per_sink_writev', '–')} "
                 f"| {r['cpu_us_per_req']} | {r['daemon_cores']} / {r['wrk_cores']} "
                 f"/ {r['other_cores']} | {r['answered_other']} |")


def markdown(res):
    L = []
    e = res["env"]
    L.append(f"Run {e['date']}, {e['host_cpus']} CPUs ({e['cpu']}), kernel {e['kernel']}, "
             f"commit {e['git']}, binary sha256 {e.get('binary_sha256')} (built "
             f"{e.get('binary_mtime')}), syscalls counted with {e['syscall_counter']}.")
    L.append("")
    L.append("```\n" + e["df_T"] + "\n```")
    if "group_commit" in res:
        g = res["group_commit"]
        fp = g["fsync_probe"]
        L.append("\n### a) group commit (--threads 2)\n")
        L.append(f"The disk alone (one thread appending {fp['bytes']} B + fdatasync for "
                 f"{fp['seconds']:.0f} s): fdatasync p50 {fp['p50_us']} µs, p99 {fp['p99_us']} "
                 f"µs, {fp['syncs_per_s']} syncs/s.\n")
        commit_table(L, g["fsync"] + g["nofsync"])
        L.append("")
        L.append("Ratios: " + ", ".join(f"{k} = {v}" for k, v in g["ratios"].items()))
    if res.get("slowdisk"):
        g = res["slowdisk"]
        L.append(f"\n### e) group commit, fdatasync made {g['added_ms']:g} ms slower "
                 f"(LD_PRELOAD tests/shim/slowsync.c; --threads 2)\n")
        commit_table(L, g["fsync"])
        L.append("")
        L.append("Ratios: " + ", ".join(f"{k} = {v}" for k, v in g["ratios"].items()))
    if "threads" in res:
        t = res["threads"]
        L.append(f"\n### b) threads (c=64, --file-fsync=false, one fresh daemon per run, "
                 f"order {','.join(map(str, THREAD_ORDER))})\n")
        L.append("| run | threads | req/s | p50 ms | p99 ms | daemon CPU µs/req "
                 "| cores daemon / wrk / other |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for i, r in enumerate(t["runs"]):
            L.append(f"| {i + 1} | {r['threads']} | {r['rps']:.0f} | {r['p50_ms']:.2f} "
                     f"| {r['p99_ms']:.2f} | {r['cpu_us_per_req']} "
                     f"| {r['daemon_cores']} / {r['wrk_cores']} / {r['other_cores']} |")
        L.append("")
        L.append(f"Mean req/s: threads 1 = {t['rps_threads1_mean']:.0f}, threads 2 = "
                 f"{t['rps_threads2_mean']:.0f}; ratio 2/1 = {t['ratio_t2_over_t1']} "
                 f"(per adjacent pair: {t['ratio_per_pair']}); daemon CPU µs/req: threads 1 = "
                 f"{t['cpu_us_per_req_threads1_mean']}, threads 2 = "
                 f"{t['cpu_us_per_req_threads2_mean']}")
    if "memory" in res:
        m = res["memory"]
        L.append("\n### c) memory (--threads 2, fsync on), kB\n")
        L.append("| state | VmRSS | VmHWM |")
        L.append("|---|---:|---:|")
        L.append(f"| idle after start | {m['idle']['VmRSS']} | {m['idle']['VmHWM']} |")
        L.append(f"| right after {m['load']['seconds']} s at c=64 "
                 f"({m['load']['rps']:.0f} req/s) | {m['after_load']['VmRSS']} "
                 f"| {m['after_load']['VmHWM']} |")
        L.append(f"| 2 s later | {m['after_load_settled_2s']['VmRSS']} "
                 f"| {m['after_load_settled_2s']['VmHWM']} |")
        ic = m["idle_conns"]
        L.append(f"| + {ic['n']} idle keep-alive connections | {ic['VmRSS']} | {ic['VmHWM']} |")
        f = m["idle_conns_fresh"]
        L.append(f"| fresh daemon, before {f['n']} idle connections | {f['before']['VmRSS']} "
                 f"| {f['before']['VmHWM']} |")
        L.append(f"| fresh daemon, {f['n']} idle connections | {f['after']['VmRSS']} "
                 f"| {f['after']['VmHWM']} |")
        L.append("")
        L.append(f"Idle connections: {ic['kb_per_conn']} kB each after load, "
                 f"{f['kb_per_conn']} kB each on a fresh daemon "
                 f"(daemon counted {ic['daemon_reports']} connections).")
    if "callgrind" in res:
        c = res["callgrind"]
        L.append(f"\n### d) callgrind ({c['requests']} requests, c={c['conns']}, --threads 1, "
                 f"no fsync)\n")
        L.append(f"{c['instructions']:,} instructions in total, "
                 f"**{c['instructions_per_request']:,} instructions/request** "
                 f"({c['answered_200']} answered 200; all threads, including the writer).")
        for key, title in (("top_self", "self"), ("top_inclusive", "inclusive")):
            if c.get(key):
                L.append(f"\n| {title} Ir % | Ir/request | function |")
                L.append("|---:|---:|---|")
                for t in c[key]:
                    L.append(f"| {t['pct']} | {t['Ir'] // c['requests']:,} | `{t['fn']}` |")
    return "\n".join(L) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per phase a (default 10)")
    p.add_argument("--threads-duration", type=int, default=7,
                   help="seconds per run of phase b, 4 runs (default 7)")
    p.add_argument("--mem-duration", type=int, default=30, help="load before the RSS (30)")
    p.add_argument("--idle-conns", type=int, default=1000)
    p.add_argument("--callgrind-requests", type=int, default=2000)
    p.add_argument("--callgrind-conns", type=int, default=4)
    p.add_argument("--callgrind-top", type=int, default=12)
    p.add_argument("--phases", default="aebcd", help="subset of aebcd to run (default all)")
    p.add_argument("--slow-fsync-ms", type=float, default=2.0,
                   help="phase e: added fdatasync latency (default 2)")
    p.add_argument("--sample", default=os.path.join(ROOT, "tests", "fixtures", "alma", "loan_created.json"))
    p.add_argument("--binary", default=os.path.join(ROOT, "build", "almabridge"))
    p.add_argument("--no-build", action="store_true", help="do not run `make` first")
    p.add_argument("--tmpdir", default=None, help="parent of the temp dir (default $TMPDIR)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--md", default=None, help="also write the Markdown summary here")
    a = p.parse_args()

    t_start = time.time()
    ensure_tools(["wrk", "openssl", "perf"] + (["valgrind"] if "d" in a.phases else []))
    if not a.no_build:
        make_daemon()
    body = os.path.realpath(a.sample)
    # X-Exl-Signature: base64 of HMAC-SHA256 over the exact body bytes, computed with openssl
    sig = sh(f"openssl dgst -sha256 -hmac '{SECRET}' -binary '{body}' | openssl base64 -A"
             ).stdout.strip()
    body_bytes = open(body, "rb").read()
    expect = signature(body_bytes)
    if sig != expect:
        sys.exit(f"openssl signature {sig!r} differs from {expect!r}")
    SyscallCounter.probe()
    if SyscallCounter.method == "strace":
        log("perf unavailable: counting syscalls with strace, which slows the daemon down")

    tmpdir = tempfile.mkdtemp(prefix="almabridge-bench-", dir=a.tmpdir)
    # run a private copy: a `make` elsewhere during the run must not swap the binary between
    # phases
    binary = os.path.join(tmpdir, "almabridge")
    shutil.copy2(a.binary, binary)
    a.binary = binary
    res = {"env": environment(tmpdir), "sample": os.path.relpath(body, ROOT),
           "sample_bytes": len(body_bytes)}
    with open(binary, "rb") as f:
        res["env"]["binary_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]
    res["env"]["binary_mtime"] = datetime.datetime.fromtimestamp(
        os.path.getmtime(binary)).isoformat(timespec="seconds")
    log(f"temp dir {tmpdir}\n{res['env']['df_T']}")

    # sanity: one signed POST must be answered 200, or every number below is meaningless
    d = Daemon(a.binary, tmpdir, threads=1, fsync=True, name="sanity")
    try:
        if post_n(d.port, body_bytes, sig, 1, 1) != 1:
            sys.exit("the signed sample POST was not answered 200; see " + d.logfile)
    finally:
        d.stop()

    try:
        if "a" in a.phases:
            res["group_commit"] = phase_group_commit(a, a.binary, tmpdir, body, sig)
        if "e" in a.phases:
            res["slowdisk"] = phase_slowdisk(a, a.binary, tmpdir, body, sig)
        if "b" in a.phases:
            res["threads"] = phase_threads(a, a.binary, tmpdir, body, sig)
        if "c" in a.phases:
            res["memory"] = phase_memory(a, a.binary, tmpdir, body, sig)
        if "d" in a.phases:
            if shutil.which("valgrind"):
                res["callgrind"] = phase_callgrind(a, a.binary, tmpdir, body, sig)
            else:
                log("valgrind missing: phase d skipped")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    res["elapsed_s"] = round(time.time() - t_start, 1)
    md = markdown(res) + f"\nWhole run: {res['elapsed_s']} s.\n"
    print(md)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    if a.md:
        with open(a.md, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
