"""Proxy configuration: a JSON file, validated with errors that name the field and the fix."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation.core.errors import ConfigError
from federation.plugin import parse_store
from federation.proxy.limits import Limits
from federation.security.tls import ListenerTls

ROLES = frozenset({"producer", "consumer"})


def parse_hostport(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} {value!r} is not HOST:PORT; write e.g. \"127.0.0.1:9092\"")
    return host, int(port)


def _tls(data: dict[str, Any], key: str) -> ListenerTls | None:
    return None if data.get(key) is None else ListenerTls.from_dict(data[key], key)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    node_id: int
    listen: tuple[str, int]
    advertised: tuple[str, int]
    store: str
    roles: frozenset[str] = ROLES
    pool: str = "default"
    metrics: tuple[str, int] | None = None
    request_timeout: float = 30.0
    max_frame_size: int = 100 << 20
    federation_name: str = "fedkafka"
    route_by_client_id: bool = False  # the name service (counts its routing decisions)
    shutdown_grace: float = 10.0  # seconds in-flight requests get after SIGTERM
    sasl_required: bool = False  # refuse clients that do not authenticate with SASL
    http: tuple[str, int] | None = None  # the name service's HTTP API
    limits: Limits = field(default_factory=Limits)
    #: processes serving the listener together (SO_REUSEPORT), each a full proxy
    #: (docs/adr/0018-proxy-worker-processes-and-raw-fetch.md); ``worker``: its index
    workers: int = 1
    worker: int = 0
    tls: ListenerTls | None = None  # TLS on the client listener (docs/security.md)
    http_tls: ListenerTls | None = None  # TLS on the name service's HTTP API
    metrics_tls: ListenerTls | None = None  # TLS on the Prometheus endpoint
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProxyConfig:
        known = {"node_id", "listen", "advertised", "store", "roles", "pool", "metrics",
                 "request_timeout", "max_frame_size", "federation_name", "route_by_client_id",
                 "shutdown_grace", "sasl_required", "workers", "tls", "http_tls", "metrics_tls",
                 "http", "limits", "_comment"}  # "_comment": e.g. Ansible's managed marker, ignored
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"proxy config has unknown field(s) {', '.join(unknown)}; "
                              f"known fields are {', '.join(sorted(known))}")
        for required in ("node_id", "listen", "store"):
            if required not in data:
                raise ConfigError(f"proxy config is missing {required!r}")
        node_id = data["node_id"]
        if not isinstance(node_id, int) or node_id < 0:
            raise ConfigError(f"node_id {node_id!r} must be a non-negative integer")
        listen = parse_hostport(str(data["listen"]), "listen")
        advertised = parse_hostport(str(data.get("advertised", data["listen"])), "advertised")
        roles = frozenset(data.get("roles", sorted(ROLES)))
        if not roles or not roles <= ROLES:
            raise ConfigError(f"roles {sorted(roles)} must be a non-empty subset of "
                              "[\"producer\", \"consumer\"]")
        metrics = parse_hostport(str(data["metrics"]), "metrics") if data.get("metrics") else None
        parse_store(str(data["store"]), "store")
        workers = data.get("workers", 1)
        if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 64:
            raise ConfigError(f"workers {workers!r} must be an integer from 1 to 64 (worker "
                              "processes sharing the listener; e.g. one per core)")
        timeout = float(data.get("request_timeout", 30.0))
        if timeout <= 0:
            raise ConfigError("request_timeout must be a positive number of seconds")
        return cls(node_id=node_id, listen=listen, advertised=advertised,
                   store=str(data["store"]), roles=roles, pool=str(data.get("pool", "default")),
                   metrics=metrics, request_timeout=timeout,
                   max_frame_size=int(data.get("max_frame_size", 100 << 20)),
                   federation_name=str(data.get("federation_name", "fedkafka")),
                   route_by_client_id=bool(data.get("route_by_client_id", False)),
                   shutdown_grace=float(data.get("shutdown_grace", 10.0)),
                   sasl_required=bool(data.get("sasl_required", False)),
                   http=parse_hostport(str(data["http"]), "http") if data.get("http") else None,
                   workers=workers,
                   limits=Limits.from_dict(data.get("limits")),
                   tls=_tls(data, "tls"), http_tls=_tls(data, "http_tls"),
                   metrics_tls=_tls(data, "metrics_tls"))

    @classmethod
    def load(cls, path: Path) -> ProxyConfig:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"proxy config {path} does not exist; pass --config FILE") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"proxy config {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"proxy config {path} must be a JSON object")
        return cls.from_dict(data)
