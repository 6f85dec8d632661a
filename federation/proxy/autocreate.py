"""Automatic topic creation: Kafka's ``auto.create.topics.enable`` as a federation policy.

The policy lives in the map (``FederationMap.auto_create``, ADR 0013): one setting for
every proxy and the name service, changed without restarts (``fedkafka topic
auto-create``). A Metadata request (v4+ with ``allow_auto_topic_creation``; v0-3 always,
as Kafka) naming an unknown, valid, non-internal topic, from a client allowed to create
it, starts the creation of a logical topic with the policy's partitions, strategy and
replication factor through :func:`federation.clusters.admin.create_topic` (the path CreateTopics
takes) and is answered LEADER_NOT_AVAILABLE, as Kafka answers it: the client retries and
sees the topic once the map that holds it is served. With the policy off the answer is
UNKNOWN_TOPIC_OR_PARTITION and nothing is created.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from federation.clusters import admin
from federation.controller import intents
from federation.core.model import CLUSTER_RESOURCE, Operation, ResourceType

if TYPE_CHECKING:
    from federation.proxy.handlers import Session
    from federation.proxy.server import ProxyState

log = logging.getLogger("fedkafka.proxy.autocreate")

#: Creations a proxy runs at once (a client asking for many new names waits for its turn).
CONCURRENT_CREATIONS = 4
#: After a failed creation, the same name is not tried again for this long (seconds).
RETRY_AFTER = 1.0
#: Creations waiting or running at once; further names are retried by their clients later.
MAX_PENDING = 1000
#: Kafka's prefix for internal topics, never created on demand.
INTERNAL_PREFIX = "__"


class AutoCreator:
    """One proxy's topic creations in progress (one per name)."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failed_until: dict[str, float] = {}
        self._slots = asyncio.Semaphore(CONCURRENT_CREATIONS)

    def wanted(self, session: Session, request: Any, name: str) -> bool:
        """Whether a Metadata request's unknown topic ``name`` is to be created (and its
        creation is started); the caller answers LEADER_NOT_AVAILABLE then."""
        if not self.should_create(session, request, name):
            return False
        self.start(name)
        return True

    def should_create(self, session: Session, request: Any, name: str) -> bool:
        """Whether a Metadata request's unknown topic ``name`` is to be created (a decision
        only: the core then asks its driver to :meth:`start` it)."""
        if not self.state.fmap.auto_create.enabled:
            return False
        if not getattr(request, "allow_auto_topic_creation", True):  # v0-3: always
            return False
        if name.startswith(INTERNAL_PREFIX) or admin.topic_name_error(name) is not None:
            return False
        # as Kafka: Create on the cluster, or on the topic
        return (session.authorized(ResourceType.CLUSTER, CLUSTER_RESOURCE, Operation.CREATE)
                or session.allowed(Operation.CREATE, name))

    def start(self, name: str) -> None:
        if name in self._tasks or len(self._tasks) >= MAX_PENDING:
            return  # (names come from clients: at most MAX_PENDING wait for a slot)
        loop = asyncio.get_running_loop()
        if self._failed_until.get(name, 0.0) > loop.time():
            return
        task = loop.create_task(self._create(name))
        self._tasks[name] = task
        task.add_done_callback(lambda _: self._tasks.pop(name, None))

    async def _create(self, name: str) -> None:
        from federation.proxy.admin_handlers import submitter

        async with self._slots:
            # The policy as stored now (this proxy may not serve its latest change yet).
            stored = await asyncio.to_thread(self.state.backend.load)
            current = stored if stored is not None else self.state.fmap
            policy = current.auto_create
            if name in current.topics or not policy.enabled:
                return
            try:
                await intents.create_topic(self.state.backend, name, policy.partitions,
                                           policy.strategy, None, policy.replication_factor,
                                           via=submitter(self.state),
                                           plugins=self.state.plugins)
                log.info("auto-created topic %s (%d partitions, %s)", name,
                         policy.partitions, policy.strategy)
            except admin.TopicExistsError:
                pass  # created meanwhile (another proxy won the claim, or CreateTopics)
            except Exception as e:  # noqa: BLE001 - logged; the client is told to retry
                log.warning("could not auto-create topic %s: %s", name, e)
                self._failed_until[name] = asyncio.get_running_loop().time() + RETRY_AFTER
                if len(self._failed_until) > 10_000:
                    self._failed_until.clear()
                return
        fmap = await asyncio.to_thread(self.state.backend.load)
        if fmap is not None:
            self.state.set_map(fmap)
