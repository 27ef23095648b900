#!/usr/bin/env python3
"""A real Redis server (Debian's redis-server) for the end-to-end tests.

    from server import RedisServer

    with RedisServer(password="s3cret", appendonly=True) as redis:
        run_daemon(redis.url)                  # redis://:s3cret@127.0.0.1:PORT
        assert redis.cli("XLEN", "alma") == "1"
        redis.kill(); redis.restart()          # AOF data survives

Each server runs in its own temporary directory (config, log, AOF) on a free
loopback port, is stopped at interpreter exit (atexit), and is killed by the
kernel if the Python process that started it dies (PR_SET_PDEATHSIG).

CLI: python3 tests/redis/server.py [--password PW] [--appendonly]
     starts one, prints its URL, waits for Ctrl-C.

Environment: ALMABRIDGE_KEEP_TMP=1 keeps the directories after close().
"""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

REDIS_SERVER = os.environ.get("ALMABRIDGE_REDIS_SERVER", "redis-server")
REDIS_CLI = os.environ.get("ALMABRIDGE_REDIS_CLI", "redis-cli")


def free_port():
    """A free TCP port on 127.0.0.1 (racy by nature, like every port-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    """preexec_fn: have the kernel SIGKILL the child when the thread that
    started it dies (start servers from the main thread)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


_live = weakref.WeakSet()


@atexit.register
def _close_all():
    for obj in list(_live):
        try:
            obj.close()
        except Exception:
            pass


class RedisServer:
    """One redis-server on a free loopback port.

    RedisServer(password=None, appendonly=False, appendfsync=None, extra_conf=None)
      password     requirepass for the default user (also used by cli() and url)
      appendonly   turn the AOF on ("appendonly yes"); off means no persistence
                   at all (save "")
      appendfsync  "always" | "everysec" | "no" (Redis' default: everysec)
      extra_conf   list of redis.conf lines (or one string), appended last,
                   e.g. ["user alice on >pw ~* &* +@all"]

    Attributes: port, host ("127.0.0.1"), url, workdir (Path), log_path, pid.
    """

    host = "127.0.0.1"

    def __init__(self, password=None, appendonly=False, appendfsync=None, extra_conf=None):
        self.password = password
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        if isinstance(extra_conf, str):
            extra_conf = extra_conf.splitlines()
        self.extra_conf = list(extra_conf or [])
        self.port = None
        self.workdir = None
        self._proc = None

    # -- properties

    @property
    def url(self):
        """redis://[:password@]127.0.0.1:PORT"""
        if self.port is None:
            raise RuntimeError("RedisServer not started")
        auth = ":%s@" % self.password if self.password else ""
        return "redis://%s%s:%d" % (auth, self.host, self.port)

    @property
    def log_path(self):
        return self.workdir / "redis.log" if self.workdir else None

    @property
    def pid(self):
        return self._proc.pid if self._proc else None

    def is_running(self):
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines=30):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return ""

    # -- life cycle

    def start(self, timeout=10.0):
        """Start the server (the first time: pick a port, write the config)
        and wait until it answers PING. Returns self; raises RuntimeError
        with the log's tail if it exits or does not answer in time."""
        if self.is_running():
            return self
        if self.workdir is None:
            self.port = free_port()
            self.workdir = Path(tempfile.mkdtemp(prefix="almabridge-redis-"))
            self._write_conf()
            _live.add(self)
        self._proc = subprocess.Popen(
            [REDIS_SERVER, str(self.workdir / "redis.conf")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=self.workdir, start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while not self._ping():
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError("redis-server exited with %s; log:\n%s"
                                   % (code, self.log_tail()))
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("redis-server not ready in time; log:\n" + self.log_tail())
            time.sleep(0.02)
        return self

    def stop(self, timeout=10.0):
        """SIGTERM (Redis flushes the AOF and exits), SIGKILL after timeout.
        Keeps the directory for restart(). No-op if stopped."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self):
        """Crash the server: SIGKILL. What reached the AOF file stays."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def restart(self, timeout=10.0, kill=False):
        """stop() (or kill() with kill=True) and start again on the same port
        in the same directory, so AOF data persists. Returns self."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout)

    def close(self):
        """stop() and remove the directory (kept if ALMABRIDGE_KEEP_TMP=1)."""
        self.stop()
        if self.workdir is not None:
            if os.environ.get("ALMABRIDGE_KEEP_TMP") == "1":
                sys.stderr.write("kept Redis directory %s\n" % self.workdir)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        _live.discard(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    # -- talking to it

    def cli(self, *args, user=None, password=None, check=False):
        """Run redis-cli against the server and return its stdout, without the
        final newline. Authenticates as the default user with the server's
        password, or as user/password when given (ACL users). Error replies
        come back as text ("ERR ...", "NOAUTH ..."); with check=True they
        raise RuntimeError instead."""
        cmd = [REDIS_CLI, "-h", self.host, "-p", str(self.port)]
        if user is not None:
            cmd += ["--user", user]
        pw = password if password is not None else (self.password if user is None else None)
        if pw is not None:
            cmd += ["-a", pw, "--no-auth-warning"]
        proc = subprocess.run(cmd + [str(a) for a in args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=30)
        out = proc.stdout.rstrip("\n")
        if check and (proc.returncode != 0 or out.startswith(("ERR", "WRONGPASS", "NOAUTH",
                                                              "NOPERM", "WRONGTYPE"))):
            raise RuntimeError("redis-cli %s: %s%s" % (" ".join(map(str, args)), out,
                                                       proc.stderr))
        return out

    def _write_conf(self):
        lines = [
            "port %d" % self.port,
            "bind 127.0.0.1",
            "protected-mode no",
            "daemonize no",
            "dir %s" % self.workdir,
            "logfile %s" % (self.workdir / "redis.log"),
            "save \"\"",
            "appendonly %s" % ("yes" if self.appendonly else "no"),
        ]
        if self.appendfsync:
            lines.append("appendfsync %s" % self.appendfsync)
        if self.password:
            lines.append("requirepass %s" % self.password)
        lines += self.extra_conf
        (self.workdir / "redis.conf").write_text("\n".join(lines) + "\n")

    def _ping(self):
        """True once the server answers PING (NOAUTH also proves it is up;
        LOADING, while it replays the AOF, does not)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH", b"-ERR AUTH", b"-AUTH"))


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description="start a throw-away redis-server")
    ap.add_argument("--password")
    ap.add_argument("--appendonly", action="store_true")
    args = ap.parse_args(argv[1:])
    # Ctrl-C even when started in the background (where SIGINT is ignored),
    # and a clean stop on SIGTERM.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with RedisServer(password=args.password, appendonly=args.appendonly) as r:
        print(r.url, flush=True)
        sys.stderr.write("dir %s; Ctrl-C stops it\n" % r.workdir)
        try:
            while r.is_running():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
