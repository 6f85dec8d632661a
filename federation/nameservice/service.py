"""The name service: where clients bootstrap, and a small HTTP API.

Its Kafka endpoint is a proxy whose Metadata lists the proxies of the pool that the
client's ``client.id`` routes to (``fedkafka_route_client`` hook; rules in the map), so a
client only ever talks to its own pool. Because librdkafka may send any request to a
bootstrap broker it keeps, the endpoint serves every API a proxy serves.

HTTP (GET only): ``/v1/proxies?client_id=ID`` → the pool and its proxies,
``/health`` → map version and store health, ``/metrics`` → Prometheus text.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from federation.core.model import ROLE_CONSUMER, ROLE_PRODUCER, FederationMap, ProxyEndpoint

MAX_REQUEST = 16 << 10


class _Metrics(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


class NameServiceState(Protocol):
    """What the name service reads of the process it runs in (a proxy's state): the map,
    the store's health, the pools. The name service never imports the proxy."""

    @property
    def fmap(self) -> FederationMap: ...

    @property
    def store_ok(self) -> bool: ...

    @property
    def metrics(self) -> _Metrics: ...

    def pool_name(self, client_id: str | None) -> str: ...

    def pool_members(self, name: str) -> tuple[ProxyEndpoint, ...]: ...

    def pool(self, client_id: str | None = None, role: str | None = None
             ) -> tuple[ProxyEndpoint, ...]: ...


def serving(pool: tuple[ProxyEndpoint, ...], role: str | None) -> tuple[ProxyEndpoint, ...]:
    """The proxies of ``pool`` a client of ``role`` may be sent to.

    A producer only to proxies with the producer role, a consumer only to proxies with the
    consumer role; a client of unknown role to proxies with both roles. If the pool has
    none that fit, all of it (a misconfigured pool still answers; the proxies' ApiVersions
    then refuse what they do not serve).
    """
    if role is not None:
        fit = tuple(p for p in pool if role in p.roles)
    else:
        fit = tuple(p for p in pool if ROLE_PRODUCER in p.roles and ROLE_CONSUMER in p.roles)
    return fit or pool


def route(state: NameServiceState, client_id: str | None) -> dict[str, Any]:
    name = state.pool_name(client_id)
    role = state.fmap.client_role(client_id)
    return {"client_id": client_id, "pool": name, "role": role,
            "map_version": state.fmap.version,
            "proxies": [{"node_id": p.node_id, "host": p.host, "port": p.port,
                         "roles": sorted(p.roles)}
                        for p in serving(state.pool_members(name), role)]}


def handle(state: NameServiceState, method: str, target: str) -> tuple[int, str, bytes]:
    """Sans-IO: (method, target) → (status, content type, body)."""
    if method != "GET":
        return 405, "application/json", b'{"error": "only GET is supported"}'
    url = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(url.query)
    if url.path == "/v1/proxies":
        client_id = query.get("client_id", [None])[0]
        return 200, "application/json", json.dumps(route(state, client_id)).encode()
    if url.path == "/health":
        body = {"ok": state.store_ok and bool(state.pool()), "map_version": state.fmap.version,
                "store_ok": state.store_ok, "pools": sorted(state.fmap.pools)}
        return (200 if body["ok"] else 503), "application/json", json.dumps(body).encode()
    if url.path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, generate_latest(state.metrics.registry)
    return 404, "application/json", b'{"error": "not found; try /v1/proxies?client_id=ID"}'


async def start_http(state: NameServiceState, host: str, port: int, **server_options: Any
                     ) -> asyncio.Server:
    """The HTTP API on ``host:port`` (``server_options``: e.g. TLS, federation.security.tls)."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_REQUEST:
                raise ValueError("request too large")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, ctype, body = handle(state, method, target)
        except (ValueError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            status, ctype, body = 400, "application/json", b'{"error": "bad request"}'
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  503: "Service Unavailable"}.get(status, "")
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + body)
        try:
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(on_client, host, port, **server_options)
