#!/usr/bin/env python3
"""Reads a Kafka topic from its beginning to its end with confluent-kafka and the CloudEvents
Python SDK 2.x's auto-detecting from_kafka_event() (binary when a ce_ header is there, else
structured), and prints each event as one JSON line {"key", "attributes", "data"} (time in
ISO 8601), for tests/e2e/test_sdks.py. Runs in .cache/venv-examples (examples/requirements.txt).

    ce2_read.py BROKER TOPIC"""
import json
import sys
import time

from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka_event
from confluent_kafka import Consumer, TopicPartition


def main():
    broker, topic = sys.argv[1:3]
    c = Consumer({"bootstrap.servers": broker, "group.id": "ce2-read", "enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    tps, left = [], 0
    for p in parts:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        left += hi - lo
        tps.append(TopicPartition(topic, p, lo))
    c.assign(tps)
    deadline = time.monotonic() + 60
    while left > 0 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        left -= 1
        ev = from_kafka_event(KafkaMessage(headers={k: v for k, v in (m.headers() or [])},
                                           key=m.key(), value=m.value()))
        attrs = {k: (v.isoformat() if hasattr(v, "isoformat") else v)
                 for k, v in ev.get_attributes().items()}
        print(json.dumps({"key": m.key().decode() if m.key() else None, "attributes": attrs,
                          "data": ev.get_data()}), flush=True)
    c.close()
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
