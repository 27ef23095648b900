#!/usr/bin/env python3
"""A Kafka consumer group for almabridge's events: confluent-kafka + the CloudEvents SDK 2.x.

    pip install -r examples/requirements.txt   # confluent-kafka==2.6.1 cloudevents==2.2.0
    python3 kafka_consumer.py --brokers k1:9092 --group loan-sync alma.loan alma.job_end

What it shows:
  * a consumer group (run several copies with the same --group to share the partitions);
  * each message parsed by the SDK's from_kafka_event(), which detects the content mode
    (binary, almabridge's default: ce_ headers; structured: the JSON event as value), so it
    works with either --content-mode; the key is the record (partitionkey): one record's
    events arrive in order;
  * gzip-compressed batches (almabridge's default) need no extra package;
  * deduplication by the CloudEvent id: almabridge delivers at least once (Alma retries a
    webhook whose answer was lost, with the same id);
  * offsets committed only AFTER an event was processed (enable.auto.commit=false), so a
    crash re-delivers what was not finished instead of losing it.

The "seen" set lives in memory here; a real service keeps it where its results go (a
unique key in its database, or Redis SET NX with an expiry), so that it survives restarts.
"""
import argparse
import json
import signal
import sys

from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka_event
from confluent_kafka import Consumer, KafkaError


def handle(event):
    """The application's work. Here: one JSON line per event on stdout."""
    data = event.get_data() or {}
    print(json.dumps({"id": event.get_id(), "type": event.get_type(),
                      "source": event.get_source(), "subject": event.get_subject(),
                      "record": event.get_extension("partitionkey"),
                      "action": data.get("action")}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("topics", nargs="+", help="e.g. alma.loan alma.job_end")
    ap.add_argument("--brokers", default="localhost:9092")
    ap.add_argument("--group", required=True, help="consumer group id")
    ap.add_argument("--max", type=int, default=0, help="stop after N new events (0: never)")
    ap.add_argument("--idle-exit", type=float, default=0,
                    help="stop after this many seconds without a message, counted once "
                         "partitions are assigned (0: never)")
    args = ap.parse_args()

    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "enable.auto.commit": False,      # commit ourselves, after processing
        "auto.offset.reset": "earliest",  # a new group starts at the beginning
    })
    assigned = []   # --idle-exit counts only once the group gave us partitions
    consumer.subscribe(args.topics, on_assign=lambda c, parts: assigned.append(parts))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    seen, processed, idle = set(), 0, 0.0
    try:
        while not stop and (args.max == 0 or processed < args.max):
            msg = consumer.poll(0.5)
            if msg is None:
                idle += 0.5 if assigned else 0
                if args.idle_exit and idle >= args.idle_exit:
                    break
                continue
            idle = 0.0
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    print("kafka: %s" % msg.error(), file=sys.stderr)
                continue
            headers = {k: v for k, v in (msg.headers() or [])}
            event = from_kafka_event(KafkaMessage(headers=headers, key=msg.key(),
                                                  value=msg.value()))
            if event.get_id() not in seen:   # a redelivery of an event already handled
                handle(event)
                seen.add(event.get_id())
                processed += 1
            consumer.commit(message=msg, asynchronous=False)  # after processing
    finally:
        consumer.close()   # leaves the group: its partitions go to the others at once
    return 0


if __name__ == "__main__":
    sys.exit(main())
