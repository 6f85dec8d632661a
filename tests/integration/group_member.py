"""A consumer-group member as a real, separate client process (confluent-kafka).

Writes JSON lines to --out: {"assigned": [partitions]} on every assignment change and
{"p": partition, "o": offset, "v": value} per record; commits synchronously after each
batch. Stops (closing cleanly, so it leaves the group) on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from confluent_kafka import Consumer, KafkaException


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    running = True

    def stop(*_: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    out = open(args.out, "a", buffering=1)
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap, "group.id": args.group,
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "client.id": f"fk-group-member-{args.out.rsplit('/', 1)[-1]}",
        "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000,
        "partition.assignment.strategy": "range",
    })
    assigned: set[int] = set()

    def on_assign(_c: Any, parts: Any) -> None:
        assigned.clear()
        assigned.update(p.partition for p in parts)
        out.write(json.dumps({"assigned": sorted(assigned)}) + "\n")

    def on_revoke(c: Any, parts: Any) -> None:
        try:
            c.commit(asynchronous=False)
        except KafkaException:
            pass
        assigned.difference_update(p.partition for p in parts)
        out.write(json.dumps({"assigned": sorted(assigned)}) + "\n")

    consumer.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke)
    try:
        while running:
            msgs = consumer.consume(num_messages=500, timeout=0.5)
            got = False
            for m in msgs:
                if m.error():
                    continue
                got = True
                out.write(json.dumps({"p": m.partition(), "o": m.offset(),
                                      "v": m.value().decode()}) + "\n")
            if got:
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException as e:
                    out.write(json.dumps({"commit_error": str(e)}) + "\n")
    finally:
        consumer.close()
        out.write(json.dumps({"closed": True}) + "\n")
        out.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
