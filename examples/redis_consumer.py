#!/usr/bin/env python3
"""A Redis Streams consumer group for almabridge's events: XREADGROUP, XACK, XAUTOCLAIM.

    pip install -r examples/requirements.txt   # redis==5.2.1
    python3 redis_consumer.py --redis redis://127.0.0.1:6379 --group loan-sync \
        --consumer worker-1 alma:loan

What it shows:
  * a consumer group created once (XGROUP CREATE ... MKSTREAM); run several consumers with
    different --consumer names to share the stream;
  * after a restart, a consumer first finishes its own pending entries (ID 0), then reads
    new ones (ID >);
  * entries a dead consumer had read but never acknowledged are taken over with XAUTOCLAIM
    once they have been idle for --claim-idle-ms;
  * deduplication by the CloudEvent id (almabridge delivers at least once), with a
    "seen" key per id that expires after a week;
  * XACK only after the event was processed;
  * both content modes (--content-mode): binary entries hold one field per CloudEvents
    attribute plus "data" (the default), structured ones a single "event" field.
"""
import argparse
import json
import os
import sys
import time

import redis

SEEN_TTL = 7 * 24 * 3600


def event_of(fields):
    """The CloudEvent of an entry as a dict (attributes and "data"), in either mode."""
    if "event" in fields:                       # structured: the JSON event
        return json.loads(fields["event"])
    event = {k: v for k, v in fields.items() if k != "data"}   # binary
    event["data"] = json.loads(fields["data"]) if "data" in fields else None
    return event


def handle(event):
    """The application's work. Here: one JSON line per event on stdout."""
    data = event.get("data") or {}
    print(json.dumps({"id": event["id"], "type": event["type"], "action": data.get("action")}),
          flush=True)


def process(r, stream, group, entries):
    """Handle each entry once per id, then acknowledge it."""
    for entry_id, fields in entries:
        if fields is None:   # trimmed away (XTRIM/MAXLEN) while pending: just acknowledge
            r.xack(stream, group, entry_id)
            continue
        event = event_of(fields)
        seen = "alma:seen:%s:%s" % (group, event["id"])
        if not r.exists(seen):
            handle(event)    # make this idempotent too: a crash right here repeats it
            r.set(seen, 1, ex=SEEN_TTL)
        r.xack(stream, group, entry_id)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stream", help="e.g. alma:loan")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379")
    ap.add_argument("--group", required=True)
    ap.add_argument("--consumer", required=True, help="this worker's name within the group")
    ap.add_argument("--claim-idle-ms", type=int, default=60000,
                    help="take over other consumers' entries idle this long")
    ap.add_argument("--idle-exit", type=float, default=0,
                    help="stop after this many seconds without an entry (0: never)")
    ap.add_argument("--die-after-reading", type=int, default=0,
                    help="testing: read N entries, then exit without acknowledging them")
    args = ap.parse_args()

    r = redis.Redis.from_url(args.redis, decode_responses=True)
    try:
        r.xgroup_create(args.stream, args.group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    if args.die_after_reading:
        r.xreadgroup(args.group, args.consumer, {args.stream: ">"}, count=args.die_after_reading)
        os._exit(1)  # as if the worker crashed: the entries stay pending, unacknowledged

    own = "0"        # first our own pending entries (after a restart), then new ones
    idle_since = time.monotonic()
    while True:
        _, claimed, *_ = r.xautoclaim(args.stream, args.group, args.consumer,
                                      min_idle_time=args.claim_idle_ms, start_id="0-0",
                                      count=100)
        process(r, args.stream, args.group, claimed)
        reply = r.xreadgroup(args.group, args.consumer, {args.stream: own}, count=100,
                             block=None if own == "0" else 1000)
        entries = reply[0][1] if reply else []
        if own == "0" and not entries:
            own = ">"
        process(r, args.stream, args.group, entries)
        if entries or claimed:
            idle_since = time.monotonic()
        elif args.idle_exit and time.monotonic() - idle_since >= args.idle_exit:
            return 0


if __name__ == "__main__":
    sys.exit(main())
