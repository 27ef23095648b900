"""Damage to the spool and the event log is detected, isolated, reported and skipped, never
a stall (issue 23): a middle spool segment cut short, one overwritten with random bytes and
a flipped byte in a third, with real Redis behind the spool; a flipped byte in the file
sink's log. Every other acknowledged event is forwarded; no damaged byte is."""
import json
import os
import random
import re
import subprocess

from daemon import BIN, samples, wait_until, with_id
from services import RedisServer
from test_spool import metric, redis_ids

LOAN = dict(samples())["loan_created"]


def verify(path):
    return subprocess.run([BIN, "verify", str(path)], capture_output=True, text=True,
                          timeout=30)


def segment_ids(path):
    return [json.loads(l)["id"] for l in path.read_bytes().splitlines() if l.strip()]


def test_damaged_spool_segments_are_skipped_not_stalled(daemon_factory, tmp_path):
    spool = tmp_path / "spool"
    with RedisServer(appendonly=True, appendfsync="always") as redis:
        redis.stop()
        d = daemon_factory(["--sink", "redis", "--redis", redis.url, "--spool", str(spool),
                            "--spool-segment-bytes", "3000"])
        ids = ["integrity-%d" % i for i in range(20)]
        for w in ids:
            assert d.post(with_id(LOAN, w)).status == 200  # spooled: Redis is down
        d.stop()
        segs = sorted(spool.glob("*.seg"))
        assert len(segs) >= 5, segs
        per = {s.name: segment_ids(s) for s in segs}
        assert sum(len(v) for v in per.values()) == len(ids)
        assert verify(spool).returncode == 0
        # damage three middle segments: cut one short, overwrite one with random bytes of
        # the same size, flip one byte in the second record of a third
        cut, rnd, flip = segs[1], segs[2], segs[3]
        data = cut.read_bytes()
        keep = len(data) // 2
        cut.write_bytes(data[:keep])
        ends, pos = [], 0
        for line in data.splitlines(keepends=True):
            pos += len(line)
            ends.append(pos)
        lost_cut = {w for w, end in zip(per[cut.name], ends) if end > keep}
        assert lost_cut and len(lost_cut) < len(per[cut.name])  # a record survives the cut
        rnd.write_bytes(random.Random(23).randbytes(rnd.stat().st_size))
        data = bytearray(flip.read_bytes())
        second = data.index(b"\n") + 1
        data[second + 40] ^= 0x20
        flip.write_bytes(bytes(data))
        lost_flip = per[flip.name][1]
        lost = lost_cut | set(per[rnd.name]) | {lost_flip}
        v = verify(spool)
        assert v.returncode == 1, v.stdout + v.stderr
        assert cut.name in v.stdout and rnd.name in v.stdout and flip.name in v.stdout
        assert "checksum mismatch" in v.stdout and "cut short" in v.stdout

        redis.start()
        d = daemon_factory(["--sink", "redis", "--redis", redis.url, "--spool", str(spool),
                            "--spool-segment-bytes", "3000"])
        expected = set(ids) - lost
        wait_until(lambda: expected <= set(redis_ids(redis)), 30,
                   "every undamaged event forwarded")
        wait_until(lambda: metric(d, "almabridge_spool_events") == 0, 30, "an empty spool")
        got = redis_ids(redis)
        assert not lost & set(got), "a damaged record was forwarded"
        assert len(got) == len(expected)  # and nothing else (no garbage)
        assert metric(d, "almabridge_damaged_records_total") >= len(lost)
        err = d.stderr()
        assert "damaged record(s) in segment" in err
        for s in (cut, rnd, flip):
            assert s.name in err
        assert re.search(r"at offset \d+: checksum mismatch", err)
        ready = d.get("/readyz")
        assert ready.status == 200 and "damaged record(s) skipped" in ready.body.decode()
        # the damaged bytes were kept aside, the forwarded segments removed
        assert (spool / (flip.name + ".damaged")).exists()
        # new events still flow
        assert d.post(with_id(LOAN, "integrity-after")).status == 200
        wait_until(lambda: "integrity-after" in redis_ids(redis), 20, "a new event")


def test_flipped_byte_in_the_event_log_is_detected(daemon_factory, tmp_path):
    d = daemon_factory()
    for i in range(4):
        assert d.post(with_id(LOAN, "log-%d" % i)).status == 200
    d.stop()
    log = d.file
    assert os.path.exists(log + ".crc")
    lines = open(log, "rb").read().splitlines()
    assert [json.loads(l)["id"] for l in lines] == ["log-%d" % i for i in range(4)]  # plain
    v = verify(log)
    assert v.returncode == 0 and "4 record(s) intact, 0 damaged" in v.stdout, v.stdout
    data = bytearray(open(log, "rb").read())
    off = len(lines[0]) + 1 + len(lines[1]) + 1 + 60  # inside the third record
    data[off] ^= 0x01
    open(log, "wb").write(bytes(data))
    v = verify(log)
    assert v.returncode == 1
    assert "offset %d: checksum mismatch" % (len(lines[0]) + len(lines[1]) + 2) in v.stdout
    assert "3 record(s) intact, 1 damaged" in v.stdout
    # the daemon opens the damaged log as it is (damage is not its to repair) and goes on
    d2 = daemon_factory(file_path=log)
    assert d2.post(with_id(LOAN, "log-after")).status == 200
    d2.stop()
    v = verify(log)
    assert v.returncode == 1 and "4 record(s) intact, 1 damaged" in v.stdout
    assert verify(str(log) + ".missing").returncode == 2
