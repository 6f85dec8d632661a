"""Idempotent producers through the proxy: producer ids and retries across upstream drops."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Producer

from federation.tooling.testing.clients import ConfluentClient, KafkaPythonClient

from .fedtopics import create_logical_topic, route_to_proxy
from .inprocess import InProcessProxy

pytestmark = pytest.mark.integration


def test_retries_after_upstream_drops_are_deduplicated(local_federation: dict[str, Any]) -> None:
    name = "idempotent-chaos"
    create_logical_topic(local_federation, name, 4)
    port = int(local_federation["bootstrap"].split(",")[0].rsplit(":", 1)[1]) + 9
    # Clients named fk-chaos are served by the in-process proxy alone.
    route_to_proxy(local_federation, "chaos", 1900, port, "fk-chaos")
    with InProcessProxy(local_federation["store"], port) as proxy:
        bootstrap = f"127.0.0.1:{port}"
        acked: list[bytes] = []
        errors: list[str] = []
        p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                      "acks": "all", "linger.ms": 2, "client.id": "fk-chaos",
                      "message.timeout.ms": 120000, "retry.backoff.ms": 50})

        def cb(err: Any, msg: Any) -> None:
            (errors if err else acked).append(str(err) if err else msg.value())

        dropped_in_flight = 0
        producing = threading.Event()
        producing.set()

        def chaos() -> None:
            nonlocal dropped_in_flight
            while producing.is_set():
                n = proxy.drop_upstream()
                dropped_in_flight += n
                time.sleep(0.05 if n else 0.002)

        monkey = threading.Thread(target=chaos)
        monkey.start()
        try:
            for i in range(20000):
                p.produce(name, key=f"k{i % 11}".encode(), value=f"v-{i:06d}".encode(),
                          on_delivery=cb)
                if i % 200 == 0:
                    p.poll(0.005)
            assert p.flush(180) == 0
        finally:
            producing.clear()
            monkey.join()
    assert not errors, errors[:3]
    assert len(acked) == 20000
    assert dropped_in_flight > 0, "the test dropped connections with requests in flight"
    assert proxy.state is not None
    produced = sum(s.value for m in proxy.state.metrics.requests.collect() for s in m.samples
                   if s.labels.get("api") == "Produce" and s.name.endswith("_total"))
    assert produced > 0, "the chaos proxy served the produce requests"
    got = ConfluentClient().consume(local_federation["bootstrap"], name, 20000, timeout=120)
    counts = Counter(r.value for r in got)
    assert len(counts) == 20000
    assert max(counts.values()) == 1, "every retried batch was de-duplicated by the broker"


def test_producer_ids_are_unique_across_the_federation(local_federation: dict[str, Any]
                                                       ) -> None:
    """Producer ids come from one allocator: two producers never share one on any cluster."""
    from kafka import KafkaProducer

    create_logical_topic(local_federation, "pids", 8)
    bootstrap = local_federation["bootstrap"]
    pids = set()
    for _ in range(6):
        prod = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
        prod.send("pids", b"x").get(timeout=30)
        pids.add(prod._transaction_manager.producer_id_and_epoch.producer_id)
        prod.close()
    assert len(pids) == 6
    KafkaPythonClient().consume(bootstrap, "pids", 6, timeout=30)
