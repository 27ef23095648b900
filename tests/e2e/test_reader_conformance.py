"""The read side of the sink contract (core/sink.h), one shared conformance test for every
backend that has one, against the real servers: build/tools/reader_conformance writes events
with the backend's own writer, reads them back from a time and from a saved position, and
follows new ones (see its header). Plus what the commands built on it promise: a password
holding '@' works in the daemon, `wait` and `replay` alike (one URL parser), and the
commands refuse, with exit 2 and a clear message, what they cannot read."""
import json
import os
import subprocess

import pytest

from daemon import BUILD, ROOT
from jobs import bridge, job_end_json, kafka, new_id, post_ok, redis, run  # noqa: F401
from services import RedisServer

TOOL = os.path.join(BUILD, "tools", "reader_conformance")


def conformance(*args):
    p = subprocess.run([TOOL, *[str(a) for a in args]], capture_output=True, text=True,
                       timeout=240)
    assert p.returncode == 0 and "PASSED" in p.stdout, p.stdout + p.stderr
    for check in ("read from a time: 40 events", "resumed after a position: 23 events",
                  "followed while waiting: 5 events"):
        assert check in p.stdout, p.stdout
    return p.stdout


def test_file_reader(tmp_path):
    out = conformance("--sink", "file", "--file", tmp_path / "events.jsonl")
    assert "ids only in the events" in out


def test_redis_reader(redis):
    out = conformance("--sink", "redis", "--redis", redis.url, "--route", "conf-%s" % new_id())
    assert "ids beside the events right" in out


def test_kafka_reader(kafka):
    out = conformance("--sink", "kafka", "--kafka-brokers", kafka.bootstrap,
                      "--route", "conf-%s" % new_id())
    assert "ids beside the events right" in out


def test_spool_directory_reader(tmp_path):
    """The spool's read side is a directory of segments: replayed in order from a saved
    position by `replay`, checked in test_replay.py; here, damage is reported by `spool
    inspect` (exit 1) and random bytes are not taken for events."""
    d = tmp_path / "spool"
    d.mkdir()
    (d / ("%020d.seg" % 1)).write_bytes(b'{"specversion":"1.0","id":"1","type":"t"}\n'
                                        b'\x00\xff garbage \x13\n')
    p = subprocess.run([os.path.join(BUILD, "almabridge"), "spool", "inspect", str(d)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "events    1 not yet forwarded" in p.stdout and "damaged   1 line" in p.stdout
    rnd = tmp_path / "random"
    rnd.mkdir()
    (rnd / "blob").write_bytes(os.urandom(4096).replace(b"\n", b"x") + b"\n")
    p = subprocess.run([os.path.join(BUILD, "almabridge"), "spool", "inspect", str(rnd)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "is it a spool?" in p.stderr, p.stdout + p.stderr


def test_password_with_at_sign_in_daemon_wait_and_replay(tmp_path):
    """redis://:p@ss@host: the user-info runs to the last '@', in every command."""
    with RedisServer(password="p@ss") as server, \
            bridge(tmp_path, "--sink", "redis", "--redis", server.url) as d:
        assert "p@ss@" in server.url
        inst = new_id()
        post_ok(d, job_end_json(inst))
        rc, out, err = run("wait", "--job-instance", inst, "--timeout", "30s", "--sink",
                           "redis", "--redis", server.url)
        assert rc == 0, err
        ev = json.loads(out)
        log = tmp_path / "one.jsonl"
        log.write_text(json.dumps(ev) + "\n")
        rc, _, err = run("replay", "--from", log, "--sink", "redis", "--redis", server.url,
                         "--route", "again:{action}", "--rate", "0")
        assert rc == 0 and "1 acknowledged" in err, err
        rc, _, err = run("replay", "--from", log, "--sink", "redis", "--redis", server.url,
                         "--route", "again:{action}", "--rate", "0")
        assert rc == 0 and "1 already there" in err, err  # read back through the reader


def test_replay_exit_codes(tmp_path, redis):
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n{\"no\":\"id\"}\n")
    rc, _, err = run("replay", "--from", junk, "--sink", "redis", "--redis", redis.url,
                     "--rate", "0")
    assert rc == 1 and "nothing delivered" in err, err
    good = tmp_path / "good.jsonl"
    good.write_text('{"specversion":"1.0","id":"%s","type":"t","almaaction":"LOAN"}\n' % new_id())
    rc, _, err = run("replay", "--from", good, "--sink", "redis", "--redis",
                     "redis://127.0.0.1:1", "--rate", "0", "--no-dedup", timeout=90)
    assert rc == 2 and "resume with --start-line 1" in err, err
