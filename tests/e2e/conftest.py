import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

from daemon import Daemon  # noqa: E402


@pytest.fixture
def daemon_factory(tmp_path):
    """daemon_factory(args=[...], **kw) starts a daemon that is stopped after the test."""
    started = []

    def make(args=(), start=True, **kw):
        kw.setdefault("tmpdir", str(tmp_path))
        d = Daemon(args, **kw)
        started.append(d)
        return d.start() if start else d

    yield make
    problems = []
    for d in started:
        if d.proc and d.proc.poll() is None:
            d.stop()
        err = d.stderr()
        # sanitizer builds (make SANITIZER=...) report here; a clean run exits 0
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                       "WARNING: ThreadSanitizer"):
            if marker in err:
                problems.append(f"{marker} in daemon stderr:\n{err[-4000:]}")
        if d.proc and d.proc.returncode not in (0, None) and not getattr(d, "expect_failure", False):
            problems.append(f"daemon exited with {d.proc.returncode}:\n{err[-2000:]}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


@pytest.fixture(scope="module")
def kafka_broker():
    """One Apache Kafka broker (tests/kafka) for the tests of a module."""
    from services import KafkaBroker
    broker = KafkaBroker()
    try:
        broker.start()
    except RuntimeError as e:
        pytest.fail("cannot start Apache Kafka: %s" % e)
    yield broker
    broker.close()
