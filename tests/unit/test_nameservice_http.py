"""The name service's HTTP API, sans-IO (no sockets)."""

from __future__ import annotations

import json

from federation.core.model import FederationMap, PhysicalCluster, ProxyEndpoint, RoutingRule
from federation.nameservice.service import handle
from federation.proxy.config import ProxyConfig
from federation.proxy.server import ProxyState


class _NoBackend:
    def close(self) -> None:
        pass


def state() -> ProxyState:
    fmap = FederationMap(
        version=4, clusters={"a": PhysicalCluster("a", "127.0.0.1:1")},
        pools={"default": (ProxyEndpoint(node_id=1, host="p1", port=9092),
                           ProxyEndpoint(node_id=2, host="p2", port=9092)),
               "writers": (ProxyEndpoint(node_id=1, host="p1", port=9092),)},
        routing=(RoutingRule(pattern="orders-.*", pool="writers"),))
    cfg = ProxyConfig.from_dict({"node_id": 9, "listen": "127.0.0.1:1",
                                 "store": "file:/nonexistent/map.json",
                                 "route_by_client_id": True})
    return ProxyState(cfg, fmap, backend=_NoBackend())  # type: ignore[arg-type]


def test_proxies_for_a_client_id() -> None:
    st = state()
    code, ctype, body = handle(st, "GET", "/v1/proxies?client_id=orders-1")
    assert (code, ctype) == (200, "application/json")
    answer = json.loads(body)
    assert answer["pool"] == "writers" and [p["node_id"] for p in answer["proxies"]] == [1]
    answer = json.loads(handle(st, "GET", "/v1/proxies?client_id=other")[2])
    assert answer["pool"] == "default" and len(answer["proxies"]) == 2
    metrics = handle(st, "GET", "/metrics")[2].decode()
    assert 'fedkafka_nameservice_routing_decisions_total{pool="writers"} 1.0' in metrics


def test_health_and_errors() -> None:
    st = state()
    code, _, body = handle(st, "GET", "/health")
    assert code == 200 and json.loads(body)["map_version"] == 4
    st.store_ok = False
    assert handle(st, "GET", "/health")[0] == 503
    assert handle(st, "POST", "/v1/proxies")[0] == 405
    assert handle(st, "GET", "/nope")[0] == 404


def test_proxy_info_and_upstream_errors_per_cluster_are_exported() -> None:
    from prometheus_client import generate_latest

    st = state()
    st.cluster("a").invalidate()  # what a NOT_LEADER answer or a failed connection does
    st.cluster("a").invalidate()
    text = generate_latest(st.metrics.registry).decode()
    assert 'fedkafka_proxy_upstream_errors_total{cluster="a"} 2.0' in text
    assert 'fedkafka_proxy_info{node_id="9",pool="default",roles="consumer,producer"} 1.0' in text
