#!/usr/bin/env python3
"""A real Redis server (Debian's redis-server) for the end-to-end tests.

    from server import RedisServer

    with RedisServer(password="s3cret", appendonly=True) as redis:
        run_daemon(redis.url)                  # redis://:s3cret@127.0.0.1:PORT
        assert redis.cli("XLEN", "alma") == "1"
        redis.kill(); redis.restart()          # AOF data survives

Each server runs in its own temporary directory (config, log, AOF) on a free
loopback port, is stopped at interpreter exit (atexit), and is killed by the
kernel if the Python process that started it dies (PR_SET_PDEATHSIG); that
part, and the life cycle (stop, kill, restart, close), is tests/harness.py's
ServerProcess, which KafkaBroker shares.

CLI: python3 tests/redis/server.py [--password PW] [--appendonly]
     starts one, prints its URL, waits for Ctrl-C.

Environment: ALMABRIDGE_KEEP_TMP=1 keeps the directories after close().
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # for harness

from harness import ServerProcess, free_port  # noqa: E402

REDIS_SERVER = os.environ.get("ALMABRIDGE_REDIS_SERVER", "redis-server")
REDIS_CLI = os.environ.get("ALMABRIDGE_REDIS_CLI", "redis-cli")


class RedisServer(ServerProcess):
    """One redis-server on a free loopback port.

    RedisServer(password=None, appendonly=False, appendfsync=None, extra_conf=None)
      password     requirepass for the default user (also used by cli() and url)
      appendonly   turn the AOF on ("appendonly yes"); off means no persistence
                   at all (save "")
      appendfsync  "always" | "everysec" | "no" (Redis' default: everysec)
      extra_conf   list of redis.conf lines (or one string), appended last,
                   e.g. ["user alice on >pw ~* &* +@all"]

    Attributes: port, host ("127.0.0.1"), url, workdir (Path), log_path, pid.

    stop(timeout=10.0) (SIGTERM: Redis flushes the AOF and exits), kill()
    (SIGKILL: what reached the AOF file stays), restart(timeout=10.0,
    kill=False), close(), is_running() and the with-statement come from
    ServerProcess (tests/harness.py).
    """

    host = "127.0.0.1"
    kind = "Redis"
    log_name = "redis.log"
    tmp_prefix = "almabridge-redis-"
    stop_timeout = 10.0

    def __init__(self, password=None, appendonly=False, appendfsync=None, extra_conf=None):
        super().__init__()
        self.password = password
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        if isinstance(extra_conf, str):
            extra_conf = extra_conf.splitlines()
        self.extra_conf = list(extra_conf or [])

    # -- properties

    @property
    def url(self):
        """redis://[:password@]127.0.0.1:PORT"""
        if self.port is None:
            raise RuntimeError("RedisServer not started")
        auth = ":%s@" % self.password if self.password else ""
        return "redis://%s%s:%d" % (auth, self.host, self.port)

    def log_tail(self, lines=30):
        """The last lines of redis.log; "" while there is none (redis-server
        exits before it opens its log when the config is wrong)."""
        log = self.log_path
        return super().log_tail(lines) if log and log.is_file() else ""

    # -- life cycle

    def start(self, timeout=10.0):
        """Start the server (the first time: pick a port, write the config)
        and wait until it answers PING. Returns self; raises RuntimeError
        with the log's tail if it exits or does not answer in time."""
        if self.is_running():
            return self
        if self.workdir is None:
            self.port = free_port()
            self._make_workdir()
            self._write_conf()
        self._spawn([REDIS_SERVER, str(self.workdir / "redis.conf")])
        deadline = time.monotonic() + timeout
        while not self._ping():
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._reap()
                raise RuntimeError("redis-server exited with %s; log:\n%s"
                                   % (code, self.log_tail()))
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("redis-server not ready in time; log:\n" + self.log_tail())
            time.sleep(0.02)
        return self

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
