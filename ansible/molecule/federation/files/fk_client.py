"""A real Kafka client (aiokafka, from the fedkafka venv) for the federation scenario.

  produce   --bootstrap B --topic T --count N --prefix P      N keyed records, acks=all
  produce-until-stopped --bootstrap B --topic T --prefix P --stop-file F --out F
            keeps producing (acks=all) until F exists; writes every acknowledged value
            (and the failures) to --out as JSON
  consume   --bootstrap B --topic T --expect N --timeout S     from the beginning, no group
  consume-group-until-stopped --bootstrap B --topic T --group G --stop-file F --acked F --out F
            a consumer group member from the earliest offset, committing after every batch;
            once F exists, stops when it has every value of --acked (a produce-until-stopped
            result) or --timeout seconds later; writes the values read (and errors) to --out
  end-offsets --bootstrap B --topic T                          of a physical topic
Each prints one JSON object.

Security (every mode): --cafile CA turns TLS on (the server's certificate must chain to CA
and name the host); --sasl-user U --sasl-mechanism M --password-file F authenticate with
SASL (SCRAM-SHA-256/512 or PLAIN): SASL_SSL with --cafile, else SASL_PLAINTEXT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

SECURITY: dict[str, Any] = {}  # aiokafka security arguments, from the command line


def _security(a: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if a.cafile:
        kw["ssl_context"] = ssl.create_default_context(cafile=a.cafile)
    if a.sasl_user:
        with open(a.password_file) as f:
            password = f.read().rstrip("\n")
        kw.update(sasl_mechanism=a.sasl_mechanism, sasl_plain_username=a.sasl_user,
                  sasl_plain_password=password)
    kw["security_protocol"] = (("SASL_" if a.sasl_user else "")
                               + ("SSL" if a.cafile else "PLAINTEXT"))
    return kw


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", client_id="fk-molecule",
                            metadata_max_age_ms=2000, request_timeout_ms=30000, **SECURITY)


async def produce(a: argparse.Namespace) -> dict:
    producer = _producer(a.bootstrap)
    await producer.start()
    try:
        futures = [await producer.send(a.topic, f"{a.prefix}-{i}".encode(), key=f"k{i}".encode())
                   for i in range(a.count)]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    partitions: dict[int, int] = {}
    for m in metas:
        partitions[m.partition] = partitions.get(m.partition, 0) + 1
    return {"acked": len(metas), "partitions": dict(sorted(partitions.items()))}


async def produce_until_stopped(a: argparse.Namespace) -> dict:
    producer = _producer(a.bootstrap)
    await producer.start()
    acked: list[list] = []  # [value, partition, time]
    failed: list[str] = []
    i = 0
    pending: set[asyncio.Future] = set()

    def done(value: str, fut: asyncio.Future) -> None:
        pending.discard(fut)
        if fut.exception() is None:
            acked.append([value, fut.result().partition, round(time.time(), 3)])
        else:
            failed.append(f"{value}: {fut.exception()!r}")

    try:
        while not os.path.exists(a.stop_file):
            value = f"{a.prefix}-{i}"
            fut = await producer.send(a.topic, value.encode(), key=f"k{i}".encode())
            pending.add(fut)
            fut.add_done_callback(lambda f, v=value: done(v, f))
            i += 1
            if i % 20 == 0:
                with open(a.out + ".progress", "w") as f:
                    json.dump({"sent": i, "acked": len(acked), "failed": len(failed)}, f)
            await asyncio.sleep(1 / a.rate)
        await producer.flush()
        if pending:
            await asyncio.wait(pending, timeout=30)
    finally:
        await producer.stop()
    result = {"sent": i, "acked": acked, "failed": failed}
    with open(a.out, "w") as f:
        json.dump(result, f)
    return {"sent": i, "acked": len(acked), "failed": len(failed)}


async def consume(a: argparse.Namespace) -> dict:
    consumer = AIOKafkaConsumer(a.topic, bootstrap_servers=a.bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                client_id="fk-molecule", metadata_max_age_ms=2000, **SECURITY)
    await consumer.start()
    values: list[str] = []
    deadline = time.monotonic() + a.timeout
    try:
        while len(values) < a.expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                values.extend(r.value.decode() for r in records)
    finally:
        await consumer.stop()
    out = {"count": len(values), "distinct": len(set(values))}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(values, f)
    else:
        out["values"] = values
    return out


async def consume_group_until_stopped(a: argparse.Namespace) -> dict:
    consumer = AIOKafkaConsumer(a.topic, bootstrap_servers=a.bootstrap, group_id=a.group,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                client_id="fk-molecule-group", metadata_max_age_ms=2000,
                                **SECURITY)
    await consumer.start()
    values: list[str] = []
    errors: list[str] = []
    wanted: set[str] | None = None
    deadline = 0.0
    last_progress = 0.0
    try:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    values.extend(r.value.decode() for r in records)
                if batches:
                    await consumer.commit()
            except KafkaError as e:  # retried: partitions roll, the group may rebalance
                errors.append(repr(e))
                await asyncio.sleep(0.5)
            now = time.monotonic()
            if now - last_progress >= 1:
                last_progress = now
                with open(a.out + ".progress", "w") as f:
                    json.dump({"consumed": len(values), "errors": len(errors)}, f)
            if wanted is None and os.path.exists(a.stop_file):
                with open(a.acked) as f:
                    wanted = {v for v, *_ in json.load(f)["acked"]}
                deadline = now + a.timeout
            if wanted is not None and (wanted <= set(values) or now > deadline):
                break
    finally:
        await consumer.stop()
    with open(a.out, "w") as f:
        json.dump({"values": values, "errors": errors}, f)
    return {"consumed": len(values), "distinct": len(set(values)), "errors": len(errors)}


async def end_offsets(a: argparse.Namespace) -> dict:
    consumer = AIOKafkaConsumer(bootstrap_servers=a.bootstrap, group_id=None, **SECURITY)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(a.topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(a.topic) or set()
        tps = [TopicPartition(a.topic, p) for p in sorted(parts)]
        ends = await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    per = {str(tp.partition): off for tp, off in ends.items()}
    return {"partitions": per, "total": sum(per.values())}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["produce", "produce-until-stopped", "consume",
                                    "consume-group-until-stopped", "end-offsets"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--prefix", default="v")
    p.add_argument("--stop-file")
    p.add_argument("--out")
    p.add_argument("--group")
    p.add_argument("--acked")
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--expect", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--cafile")
    p.add_argument("--sasl-user")
    p.add_argument("--sasl-mechanism", default="SCRAM-SHA-512")
    p.add_argument("--password-file")
    a = p.parse_args()
    SECURITY.update(_security(a))
    fn = {"produce": produce, "produce-until-stopped": produce_until_stopped,
          "consume": consume, "consume-group-until-stopped": consume_group_until_stopped,
          "end-offsets": end_offsets}[a.mode]
    print(json.dumps(asyncio.run(fn(a))))


if __name__ == "__main__":
    main()
