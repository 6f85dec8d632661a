"""Idempotent producers through the proxy: producer ids and retries across upstream drops."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Producer

from federation.mapstore import update
from federation.model import FederationMap, ProxyEndpoint, RoutingRule
from federation.proxy.config import ProxyConfig
from federation.proxy.server import ProxyState, serve
from federation.testing.clients import ConfluentClient, KafkaPythonClient

from .fedtopics import backend_of, create_logical_topic

pytestmark = pytest.mark.integration


class InProcessProxy:
    """A proxy on its own event loop thread, so the test can reach into its connections."""

    def __init__(self, store: str, port: int, pool: str = "chaos", node_id: int = 1900
                 ) -> None:
        self.config = ProxyConfig.from_dict({"node_id": node_id,
                                             "listen": f"127.0.0.1:{port}",
                                             "store": store, "pool": pool})
        self.state: ProxyState | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready = asyncio.Event()

            def got(state: ProxyState) -> None:
                self.state = state

            task = asyncio.create_task(serve(self.config, ready, self._stop, on_state=got))
            await ready.wait()
            self._ready.set()
            await task
        asyncio.run(main())

    def __enter__(self) -> InProcessProxy:
        self.thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)

    def drop_upstream(self) -> int:
        """Abort every upstream connection that has requests in flight; returns how many."""
        assert self.loop is not None and self.state is not None
        done = threading.Event()
        count = [0]

        def drop() -> None:
            for session in list(self.state.sessions):  # type: ignore[union-attr]
                for conn in list(session._lanes.values()):
                    if conn.alive and conn.in_flight and conn._transport is not None:
                        count[0] += 1
                        conn._transport.abort()
            done.set()
        self.loop.call_soon_threadsafe(drop)
        done.wait(5)
        return count[0]


def test_retries_after_upstream_drops_are_deduplicated(local_federation: dict[str, Any]) -> None:
    name = "idempotent-chaos"
    create_logical_topic(local_federation, name, 4)
    port = int(local_federation["bootstrap"].split(",")[0].rsplit(":", 1)[1]) + 9
    # Clients named fk-chaos are served by the in-process proxy alone.
    backend = backend_of(local_federation)
    try:
        def change(fmap: FederationMap | None) -> FederationMap:
            assert fmap is not None
            return dataclasses.replace(
                fmap, pools={**fmap.pools, "chaos": (ProxyEndpoint(
                    node_id=1900, host="127.0.0.1", port=port),)},
                routing=(*fmap.routing, RoutingRule(pattern="fk-chaos", pool="chaos")))
        update(backend, change)
    finally:
        backend.close()
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
