"""What the real servers of the end-to-end tests share (tests/kafka/broker.py's
KafkaBroker, tests/redis/server.py's RedisServer): free loopback ports, a child
process that the kernel kills with the Python process that started it, a
temporary directory with the server's log, and the life cycle around them.

    class MyServer(ServerProcess):
        kind = "My server"          # "kept My server directory ..." on close()
        log_name = "my.log"         # the log in workdir: log_path, log_tail()
        tmp_prefix = "almabridge-my-"

        def start(self, timeout=10.0):
            if self.is_running():
                return self
            if self.workdir is None:
                self.port = free_port()
                self._make_workdir()        # also stopped at interpreter exit
                ...write the config...
            self._spawn([...])
            ...wait until it answers; on failure self.kill() or self._reap()...
            return self

ServerProcess gives pid, log_path, is_running(), log_tail(), stop(), kill(),
restart(), close() and the with-statement; a subclass with more to release
when its process ends extends _reap().

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
import weakref
from pathlib import Path


def free_ports(n):
    """Return n distinct free TCP ports on 127.0.0.1 (held open together while
    choosing so they differ; racy by nature, like every port-0 trick)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port():
    """A free TCP port on 127.0.0.1 (racy by nature, like every port-0 trick)."""
    return free_ports(1)[0]


def die_with_parent():
    """preexec_fn: have the kernel SIGKILL the child when the parent dies.
    The 'parent' is the thread that forked, so start servers from the main
    thread (as pytest fixtures are)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def log_tail(path, lines=40):
    """The last lines of the file at path (read from its last 64 KiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
        return "\n".join(data.splitlines()[-lines:])
    except OSError:
        return "(no log at %s)" % path


# Instances with a directory or a live process, closed at interpreter exit.
_live = weakref.WeakSet()


@atexit.register
def _close_all():
    for obj in list(_live):
        try:
            obj.close()
        except Exception:
            pass


class ServerProcess:
    """One server process in its own temporary directory (see the module's
    docstring). Subclasses set the class attributes below and write start().

    Attributes: port, workdir (Path, None before the first start and after
    close()), log_path, pid.
    """

    kind = "server"              # what close() calls it when it keeps the directory
    log_name = None              # the server's log, a file name in workdir
    tmp_prefix = "almabridge-"   # of the temporary directory
    stop_timeout = 10.0          # stop()'s default: SIGTERM, SIGKILL after that long

    def __init__(self):
        self.port = None
        self.workdir = None
        self._proc = None

    # -- properties

    @property
    def log_path(self):
        return self.workdir / self.log_name if self.workdir else None

    @property
    def pid(self):
        return self._proc.pid if self._proc else None

    def is_running(self):
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines=40):
        """The last lines of the server's log, for assertion messages."""
        return log_tail(self.log_path, lines) if self.workdir else ""

    # -- life cycle

    def start(self, timeout=None):
        raise NotImplementedError

    def stop(self, timeout=None):
        """Stop the server: SIGTERM (clean shutdown), SIGKILL after timeout
        seconds (default: the class's stop_timeout). Keeps the directory for
        restart(). No-op if stopped."""
        if self._proc is None:
            return
        if timeout is None:
            timeout = self.stop_timeout
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reap()

    def kill(self):
        """Crash the server: SIGKILL, no clean shutdown. Data on disk stays
        (the page cache survives a process crash); restart() recovers it."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._reap()

    def restart(self, timeout=None, kill=False):
        """stop() (or kill() with kill=True) and start again on the same
        port(s) in the same directory, so data persists. timeout goes to
        start() (default: start()'s). Returns self."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start() if timeout is None else self.start(timeout)

    def close(self):
        """stop() and remove the temporary directory (kept if
        ALMABRIDGE_KEEP_TMP=1). A later start() begins afresh: new ports, no data."""
        self.stop()
        if self.workdir is not None:
            if os.environ.get("ALMABRIDGE_KEEP_TMP") == "1":
                sys.stderr.write("kept %s directory %s\n" % (self.kind, self.workdir))
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        _live.discard(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    # -- for subclasses

    def _make_workdir(self):
        """Create a new temporary directory (workdir) and have close() called
        at interpreter exit, so the directory goes even if start() fails."""
        self.workdir = Path(tempfile.mkdtemp(prefix=self.tmp_prefix))
        _live.add(self)

    def _spawn(self, cmd, output=subprocess.DEVNULL):
        """Start cmd in workdir, in a session of its own, killed with this
        process (die_with_parent); stdout and stderr go to output (a file
        object, or the default DEVNULL)."""
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=output,
                                      stderr=subprocess.STDOUT, cwd=self.workdir,
                                      start_new_session=True, preexec_fn=die_with_parent)
        _live.add(self)

    def _reap(self):
        """Forget the process once it has exited; extend to release more."""
        self._proc = None
