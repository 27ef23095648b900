"""Smoke tests of the test harness itself: the real Redis and Kafka servers
start, take data, give it back, and keep it across a restart."""

import pytest

from services import KafkaBroker, RedisServer


@pytest.fixture(scope="module")
def kafka():
    with KafkaBroker() as broker:
        yield broker


def test_redis_set_get_and_aof_survives_crash():
    with RedisServer(password="pw", appendonly=True, appendfsync="always",
                     extra_conf=["user alice on >alicepw ~* &* +@all"]) as redis:
        assert redis.url == "redis://:pw@127.0.0.1:%d" % redis.port
        assert redis.cli("SET", "greeting", "hello") == "OK"
        assert redis.cli("GET", "greeting", user="alice", password="alicepw") == "hello"
        assert redis.cli("GET", "greeting", password="wrong").startswith("NOAUTH")
        redis.restart(kill=True)
        assert redis.cli("GET", "greeting") == "hello"


def test_kafka_produce_consume_and_restart(kafka):
    assert kafka.bootstrap == "127.0.0.1:%d" % kafka.port
    kafka.produce("smoke", b'{"id": 1}\n', key="inst-1", headers={"ce-type": "alma.user"})

    msgs = kafka.consume("smoke", count=1, timeout=15)
    assert len(msgs) == 1, kafka.log_tail()
    m = msgs[0]
    assert m["key"] == "inst-1"
    assert m["value"] == b'{"id": 1}\n'
    assert m["headers"] == {"ce-type": "alma.user"}
    assert (m["partition"], m["offset"]) == (0, 0)

    kafka.restart()
    assert kafka.bootstrap == "127.0.0.1:%d" % kafka.port
    assert [x["value"] for x in kafka.consume("smoke", count=1)] == [b'{"id": 1}\n']


def test_kafka_create_topic_with_partitions(kafka):
    kafka.create_topic("smoke.multi", partitions=3)
    for p in range(3):
        kafka.produce("smoke.multi", "v%d" % p, partition=p)
    msgs = kafka.consume("smoke.multi", count=3)
    assert [(x["partition"], x["value"]) for x in msgs] == [(0, b"v0"), (1, b"v1"), (2, b"v2")]
