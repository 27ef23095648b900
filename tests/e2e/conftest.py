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
    for d in started:
        if d.proc and d.proc.poll() is None:
            d.stop()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()
