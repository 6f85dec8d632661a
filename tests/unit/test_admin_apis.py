"""Pure parts of the admin APIs: DeleteRecords plans over segments, the physical topics a
config change goes to, the auto-creation policy in the map, topic configs in the store."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from fedkafka_builtin.file_backend import FileBackend

from federation.clusters import admin
from federation.core.model import (
    AutoCreatePolicy,
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    PhysicalCluster,
    Segment,
    new_topic_id,
)
from federation.proxy.admin_apis import Deletion, plan_delete_records
from federation.proxy.configs import physical_topics
from federation.store import mapstore

from .test_admin_plan import Fleet


def _map(*topics: LogicalTopic) -> FederationMap:
    clusters = {c: PhysicalCluster(c, f"127.0.0.1:{9092 + i}") for i, c in enumerate("ab")}
    return FederationMap(version=1, clusters=clusters, coordination_cluster="a",
                         topics={t.name: t for t in topics})


def _topic(name: str, *partitions: tuple[Segment, ...]) -> LogicalTopic:
    return LogicalTopic(name, new_topic_id(name), tuple(
        LogicalPartition(i, segs) for i, segs in enumerate(partitions)))


SEALED = Segment("a", "t.fk", 0, 0, 0, sealed_end=10)
ACTIVE = Segment("b", "t.fk", 0, 10, 0)
ROLLED = _topic("t", (SEALED, ACTIVE))


def test_delete_records_in_the_active_segment_deletes_the_sealed_one() -> None:
    plan = plan_delete_records(_map(ROLLED), ROLLED.partitions[0], 15)
    assert plan.final == Deletion(ACTIVE, 5)
    assert plan.earlier == (Deletion(SEALED, -1),)  # to its high watermark: nothing after it


def test_delete_records_in_a_sealed_segment() -> None:
    plan = plan_delete_records(_map(ROLLED), ROLLED.partitions[0], 4)
    assert (plan.final, plan.earlier) == (Deletion(SEALED, 4), ())
    at_seal = plan_delete_records(_map(ROLLED), ROLLED.partitions[0], 10)
    assert at_seal.final == Deletion(ACTIVE, 0)  # the seal is the next segment's start
    assert at_seal.earlier == (Deletion(SEALED, -1),)


def test_delete_records_to_the_high_watermark() -> None:
    plan = plan_delete_records(_map(ROLLED), ROLLED.partitions[0], -1)
    assert plan.final == Deletion(ACTIVE, -1)
    assert plan.earlier == (Deletion(SEALED, -1),)


def test_delete_records_before_the_first_segment_deletes_nothing() -> None:
    trimmed = _topic("t", (Segment("a", "t.fk", 0, 100, 40, sealed_end=110),
                           Segment("b", "t.fk", 0, 110, 0)))
    plan = plan_delete_records(_map(trimmed), trimmed.partitions[0], 50)
    assert (plan.final, plan.earlier) == (Deletion(trimmed.partitions[0].segments[0], 40), ())


def test_delete_records_never_deletes_another_partitions_records() -> None:
    # Logical partition 1 of another topic holds physical a/t.fk/0 from offset 10 on, after
    # t's sealed segment: deleting t's segment stops at its end, not at the high watermark.
    other = _topic("u", (Segment("a", "t.fk", 0, 0, 10),))
    plan = plan_delete_records(_map(ROLLED, other), ROLLED.partitions[0], 15)
    assert plan.earlier == (Deletion(SEALED, 10),)
    # And records before a segment that starts mid-partition belong to someone else.
    before = _topic("v", (Segment("b", "v.fk", 0, 0, 0, sealed_end=5),))
    late = _topic("w", (Segment("b", "v.fk", 0, 0, 5),))
    plan = plan_delete_records(_map(before, late), late.partitions[0], 3)
    assert plan.final == Deletion(late.partitions[0].segments[0], 0)  # capped at v's start
    plan = plan_delete_records(_map(before, late), late.partitions[0], -1)
    assert plan.final.physical_offset == 0


def test_physical_topics_of_a_rolled_topic() -> None:
    grown = _topic("t", (SEALED, ACTIVE), (Segment("b", "t.fk", 1, 0, 0),))
    assert physical_topics(grown) == {"a": ["t.fk"], "b": ["t.fk"]}


def test_auto_create_policy_round_trips_and_is_written_only_when_set() -> None:
    fmap = _map()
    assert "auto_create" not in fmap.to_dict()  # older readers keep reading default maps
    off = dataclasses.replace(fmap, auto_create=AutoCreatePolicy(False, 3, "round_robin", 1))
    assert FederationMap.from_dict(off.to_dict()).auto_create == off.auto_create
    assert mapstore.loads(mapstore.dumps(off)).auto_create == off.auto_create
    for bad in (AutoCreatePolicy(partitions=0), AutoCreatePolicy(replication_factor=0)):
        with pytest.raises(ValueError, match="auto_create"):
            dataclasses.replace(fmap, auto_create=bad).validate()
    with pytest.raises(ValueError, match="unknown keys"):
        FederationMap.from_dict({**off.to_dict(), "auto_create": {"enabled": True, "x": 1}})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileBackend]:
    backend = FileBackend(tmp_path / "map.json")
    backend.publish(_map(), 0)
    yield backend
    backend.close()


async def test_topic_config_is_recorded_and_given_to_new_physical_topics(
        store: FileBackend) -> None:
    fleet = Fleet("a", "b")
    await admin.create_topic(store, "t", 1, "round_robin", config={"retention.ms": "1"},
                             connect=fleet.connect)
    assert fleet.clusters["a"].configs["t.fk"] == {"retention.ms": "1"}
    await admin.set_topic_config(store, "t", {"retention.ms": "2", "cleanup.policy": "compact"})
    stored = store.load()
    assert stored is not None
    assert dict(stored.topics["t"].config) == {"retention.ms": "2", "cleanup.policy": "compact"}
    version = stored.version
    await admin.set_topic_config(store, "t", {"retention.ms": "2", "cleanup.policy": "compact"})
    assert store.load().version == version  # type: ignore[union-attr]  # nothing to publish
    # A physical topic created later for it (here: growing onto cluster b) gets the config.
    await admin.add_partitions(store, "t", 3, connect=fleet.connect)
    assert fleet.clusters["b"].configs["t.fk"] == {"retention.ms": "2",
                                                   "cleanup.policy": "compact"}
    with pytest.raises(admin.UnknownTopicError):
        await admin.set_topic_config(store, "nope", {})



async def test_two_creators_of_one_topic_one_wins_and_keeps_its_topics(
        store: FileBackend) -> None:
    """Two proxies auto-creating the same topic at once: the shadow topic is the claim."""
    import asyncio

    fleet = Fleet("a", "b")
    results = await asyncio.gather(
        *(admin.create_topic(store, "t", 4, connect=fleet.connect) for _ in range(2)),
        return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["LogicalTopic", "TopicExistsError"]
    assert fleet.clusters["a"].topics == {"t.fk": 2, "t": 4}
    assert fleet.clusters["b"].topics == {"t.fk": 2}
    stored = store.load()
    assert stored is not None and "t" in stored.topics


def test_cli_topic_auto_create(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from .test_admin_plan import _cli

    path = tmp_path / "map.json"
    backend = FileBackend(path)
    backend.publish(_map(), 0)
    backend.close()
    store = f"file:{path}"
    runner = CliRunner()
    result = runner.invoke(_cli(), ["topic", "auto-create", "--store", store, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == AutoCreatePolicy().to_dict()
    result = runner.invoke(_cli(), ["topic", "auto-create", "--disable", "--partitions", "6",
                                    "--store", store])
    assert result.exit_code == 0, result.output
    assert "automatic topic creation off: 6 partition(s)" in result.output
    stored = FileBackend(path)
    try:
        fmap = stored.load()
        assert fmap is not None
        assert fmap.auto_create == AutoCreatePolicy(enabled=False, partitions=6)
    finally:
        stored.close()
    result = runner.invoke(_cli(), ["topic", "auto-create", "--strategy", "nope",
                                    "--store", store])
    assert result.exit_code != 0
    assert isinstance(result.exception, admin.InvalidRequestError)
    assert "unknown mapping strategy 'nope'" in str(result.exception)
