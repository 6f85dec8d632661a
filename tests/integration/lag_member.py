"""A consumer-group member that reads up to given offsets, commits exactly them, and then
stays in the group (paused, heartbeating) until SIGTERM: a *running* group with known lag.

Prints one JSON line {"committed": {partition: offset}, "member": client id} once committed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from confluent_kafka import Consumer, TopicPartition


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--stop", required=True, help='JSON {"partition": offset}')
    args = ap.parse_args()
    stop = {int(p): int(o) for p, o in json.loads(args.stop).items()}
    running = True

    def on_term(*_: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, on_term)
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                         "client.id": "fk-lag-member", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "session.timeout.ms": 10000,
                         "heartbeat.interval.ms": 1000})
    consumer.subscribe([args.topic])
    read = dict.fromkeys(stop, 0)
    deadline = time.monotonic() + 120
    while running and any(read[p] < stop[p] for p in stop):
        if time.monotonic() > deadline:
            print(json.dumps({"error": f"read only {read}"}), flush=True)
            sys.exit(1)
        m = consumer.poll(0.5)
        if m is None or m.error() or m.partition() not in stop:
            continue
        if m.offset() < stop[m.partition()]:
            read[m.partition()] = m.offset() + 1
    consumer.commit(offsets=[TopicPartition(args.topic, p, o) for p, o in stop.items()],
                    asynchronous=False)
    consumer.pause(consumer.assignment())
    print(json.dumps({"committed": stop}), flush=True)
    while running:
        consumer.poll(0.5)
    consumer.close()


if __name__ == "__main__":
    main()
