"""Default name-service routing and group coordination, both read from the map.

- A client goes to the pool of the first routing rule whose regex matches its whole
  ``client.id``, else to the map's default pool.
- Every consumer group is coordinated by the map's ``coordination_cluster``.
"""

from __future__ import annotations

from federation.core.model import FederationMap
from federation.plugin import hookimpl


@hookimpl(trylast=True)
def fedkafka_route_client(client_id: str | None, federation_map: FederationMap) -> str | None:
    for rule in federation_map.routing:
        if rule.matches(client_id):
            return rule.pool
    return federation_map.default_pool


@hookimpl(trylast=True)
def fedkafka_choose_coordination_cluster(group_id: str,
                                         federation_map: FederationMap) -> str | None:
    return federation_map.coordination_cluster
