"""Consumer groups on the coordination cluster, read over the Kafka protocol with our codec.

ListGroups (every broker), DescribeGroups and OffsetFetch (each group's coordinator), on a
:class:`~federation.clusters.upstream.ClusterClient`. Used by drain progress, lag and the
``fedkafka group`` commands. Our own codec rather than a client library's admin client:
aiokafka's decoders fail on some groups that Kafka 4 reports (``Buffer underrun decoding
string``), and one such group must not make a drain or a lag report impossible.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kio.index import load_request_schema

from federation.clusters.upstream import ClusterClient, UpstreamError
from federation.protocol.errors import ErrorCode

__all__ = ["committed", "describe", "list_groups"]

LIST_GROUPS_VERSION = 4
DESCRIBE_GROUPS_VERSION = 5
OFFSET_FETCH_VERSION = 7
_RETRIABLE = {ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, ErrorCode.COORDINATOR_NOT_AVAILABLE,
              ErrorCode.NOT_COORDINATOR}


def _version(client: ClusterClient, api_key: int, ours: int) -> int:
    lo, hi = client.api_versions.get(api_key, (0, ours))
    return max(lo, min(ours, hi))


async def list_groups(client: ClusterClient, timeout: float = 10.0
                      ) -> list[tuple[str, str, str]]:
    """(group id, protocol type, state) of every group of the cluster, sorted by id."""
    view = await client.refresh()
    schema: Any = load_request_schema(16, _version(client, 16, LIST_GROUPS_VERSION))
    fields = getattr(schema, "__dataclass_fields__", {})
    req = schema(**({"states_filter": ()} if "states_filter" in fields else {}))
    if "types_filter" in fields:
        req = schema(states_filter=(), types_filter=())
    out: dict[str, tuple[str, str, str]] = {}

    async def one(node: int) -> None:
        conn = await client.connection(node, "admin")
        resp = await conn.request(req, timeout)
        if int(resp.error_code):
            raise UpstreamError(f"{client.id}: ListGroups on broker {node}: error "
                                f"{int(resp.error_code)}", int(resp.error_code))
        for g in resp.groups:
            out[str(g.group_id)] = (str(g.group_id), str(g.protocol_type),
                                    str(getattr(g, "group_state", "")))

    await asyncio.gather(*(one(node) for node in view.brokers))
    return [out[k] for k in sorted(out)]


async def _to_coordinator(client: ClusterClient, group: str, req: Any, timeout: float,
                          code_of: Any) -> Any:
    """Send ``req`` to ``group``'s coordinator, retrying coordinator errors for a while."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        node = await client.coordinator(group)
        conn = await client.connection(node, "admin")
        resp = await conn.request(req, timeout)
        code = int(code_of(resp))
        if code not in _RETRIABLE:
            return resp
        client.forget_coordinator(group)
        if loop.time() > deadline:
            raise UpstreamError(f"{client.id}: group {group!r}: coordinator error {code}", code)
        await asyncio.sleep(0.2)


async def describe(client: ClusterClient, group: str, timeout: float = 10.0) -> Any:
    """DescribeGroups of one group: the response's group entity (state, members…)."""
    schema: Any = load_request_schema(15, _version(client, 15, DESCRIBE_GROUPS_VERSION))
    req = schema(groups=(group,), include_authorized_operations=False)
    resp = await _to_coordinator(client, group, req, timeout,
                                 lambda r: r.groups[0].error_code if r.groups else 0)
    described = resp.groups[0]
    if int(described.error_code):
        raise UpstreamError(f"{client.id}: DescribeGroups {group!r}: error "
                            f"{int(described.error_code)}", int(described.error_code))
    return described


async def committed(client: ClusterClient, group: str, timeout: float = 10.0
                    ) -> dict[tuple[str, int], int]:
    """(topic, partition) → committed offset of every partition ``group`` committed on."""
    schema: Any = load_request_schema(9, _version(client, 9, OFFSET_FETCH_VERSION))
    req = schema(group_id=group, topics=None, require_stable=False)
    resp = await _to_coordinator(client, group, req, timeout,
                                 lambda r: getattr(r, "error_code", 0))
    if int(getattr(resp, "error_code", 0)):
        raise UpstreamError(f"{client.id}: OffsetFetch {group!r}: error "
                            f"{int(resp.error_code)}", int(resp.error_code))
    out = {}
    for t in resp.topics:
        for p in t.partitions:
            if int(p.error_code) == 0 and int(p.committed_offset) >= 0:
                out[(str(t.name), int(p.partition_index))] = int(p.committed_offset)
    return out
