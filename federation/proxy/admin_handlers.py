"""Kafka admin requests through the proxy act on *logical* topics (via federation.admin).

CreateTopics lays the topic out with its mapping strategy (config key
``fedkafka.strategy``, default ``contiguous``), creates the physical and shadow topics,
publishes the map, and answers once this proxy serves the new map, so the client can use
the topic at once. DeleteTopics and CreatePartitions likewise; DescribeConfigs describes
a logical topic's own config.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from federation import admin
from federation.protocol import codec
from federation.protocol.errors import ErrorCode, to_kio
from federation.protocol.versions import ApiKey
from federation.proxy.routing import build, resp_module

if TYPE_CHECKING:
    from federation.proxy.server import ProxyState

log = logging.getLogger("fedkafka.proxy.admin")
STRATEGY_CONFIG = "fedkafka.strategy"
TOPIC_RESOURCE = 2


def _ms(value: int) -> Any:
    import datetime

    return datetime.timedelta(milliseconds=value)


async def _refresh(state: ProxyState) -> None:
    fmap = state.backend.load()
    if fmap is not None:
        state.set_map(fmap)


async def create_topics(state: ProxyState, req: codec.Request) -> Any:
    body: Any = req.entity
    mod = resp_module(ApiKey.CREATE_TOPICS, req.header.api_version)
    results = []
    for t in body.topics:
        configs = {c.name: c.value for c in t.configs if c.value is not None}
        strategy = configs.pop(STRATEGY_CONFIG, "contiguous")
        partitions = int(t.num_partitions)
        if partitions == -1:
            partitions = int(configs.pop("num.partitions", "1"))
        code, message, topic_id = 0, None, None
        try:
            if body.validate_only:
                admin.plan_create_topic(state.fmap, t.name, partitions, strategy, configs,
                                        plugins=state.plugins)
            else:
                topic = await admin.create_topic(state.backend, t.name, partitions, strategy,
                                                 configs, plugins=state.plugins)
                topic_id = topic.topic_id
                log.info("created logical topic %s (%d partitions, %s)", t.name, partitions,
                         strategy)
        except admin.AdminError as e:
            code, message = e.error_code, str(e)
        except ValueError as e:
            code, message = ErrorCode.INVALID_REQUEST, str(e)
        results.append(build(mod.CreatableTopicResult, name=t.name, topic_id=topic_id,
                             error_code=to_kio(code), error_message=message,
                             topic_config_error_code=0,
                             num_partitions=partitions if code == 0 else -1,
                             replication_factor=-1, configs=None))
    await _refresh(state)
    return build(mod.CreateTopicsResponse, throttle_time=_ms(0), topics=tuple(results))


async def delete_topics(state: ProxyState, req: codec.Request) -> Any:
    body: Any = req.entity
    mod = resp_module(ApiKey.DELETE_TOPICS, req.header.api_version)
    if hasattr(body, "topic_names"):
        items = [(n, None) for n in body.topic_names]
    else:
        items = []
        for t in body.topics:
            name = t.name
            if name is None and t.topic_id is not None:
                found = state.fmap.topic_by_id(t.topic_id)
                name = found.name if found else None
            items.append((name, t.topic_id))
    results = []
    for name, topic_id in items:
        code, message = 0, None
        try:
            if name is None:
                raise admin.UnknownTopicError("unknown topic id")
            await admin.delete_topic(state.backend, name, plugins=state.plugins)
        except admin.AdminError as e:
            code, message = e.error_code, str(e)
        results.append(build(mod.DeletableTopicResult, name=name, topic_id=topic_id,
                             error_code=to_kio(code), error_message=message))
    await _refresh(state)
    return build(mod.DeleteTopicsResponse, throttle_time=_ms(0), responses=tuple(results))


async def create_partitions(state: ProxyState, req: codec.Request) -> Any:
    body: Any = req.entity
    mod = resp_module(ApiKey.CREATE_PARTITIONS, req.header.api_version)
    results = []
    for t in body.topics:
        code, message = 0, None
        try:
            if body.validate_only:
                admin.plan_add_partitions(state.fmap, t.name, int(t.count),
                                          plugins=state.plugins)
            else:
                await admin.add_partitions(state.backend, t.name, int(t.count),
                                           plugins=state.plugins)
        except admin.AdminError as e:
            code, message = e.error_code, str(e)
        except ValueError as e:
            code, message = ErrorCode.INVALID_PARTITIONS, str(e)
        results.append(build(mod.CreatePartitionsTopicResult, name=t.name,
                             error_code=to_kio(code), error_message=message))
    await _refresh(state)
    return build(mod.CreatePartitionsResponse, throttle_time=_ms(0), results=tuple(results))


async def describe_configs(state: ProxyState, req: codec.Request) -> Any:
    body: Any = req.entity
    mod = resp_module(ApiKey.DESCRIBE_CONFIGS, req.header.api_version)
    results = []
    for r in body.resources:
        configs: list[Any] = []
        code, message = 0, None
        if int(r.resource_type) == TOPIC_RESOURCE:
            topic = state.fmap.topics.get(r.resource_name)
            if topic is None:
                code, message = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "unknown topic"
            else:
                wanted = set(r.configuration_keys) if r.configuration_keys else None
                values = {**topic.config, STRATEGY_CONFIG: topic.strategy}
                for k, v in sorted(values.items()):
                    if wanted is None or k in wanted:
                        configs.append(build(mod.DescribeConfigsResourceResult, name=k,
                                             value=v, read_only=k == STRATEGY_CONFIG,
                                             config_source=1, is_sensitive=False,
                                             is_default=False, synonyms=(), config_type=2,
                                             documentation=None))
        results.append(build(mod.DescribeConfigsResult, error_code=to_kio(code),
                             error_message=message, resource_type=r.resource_type,
                             resource_name=r.resource_name, configs=tuple(configs)))
    return build(mod.DescribeConfigsResponse, throttle_time=_ms(0), results=tuple(results))
