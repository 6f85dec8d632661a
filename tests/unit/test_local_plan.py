"""Planning a local federation: ids, ports, KRaft voters (no processes started)."""

from __future__ import annotations

import pytest

from federation.core.errors import ConfigError
from federation.tooling.local import broker_properties, new_cluster_id, plan_clusters


def test_cluster_ids_never_look_like_options() -> None:
    ids = {new_cluster_id() for _ in range(20000)}
    assert len(ids) == 20000
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)


def test_ports_and_voters() -> None:
    plans = plan_clusters(2, 4, 19092)
    assert [p.name for p in plans] == ["c1", "c2"]
    assert [b.port for b in plans[0].brokers] == [19192, 19194, 19196, 19198]
    assert plans[1].bootstrap.startswith("127.0.0.1:19292")
    # At most three KRaft voters, and every voter has a controller port.
    assert plans[0].voters == "1@127.0.0.1:19193,2@127.0.0.1:19195,3@127.0.0.1:19197"
    assert plans[0].brokers[3].controller_port is None
    props = broker_properties(plans[0], plans[0].brokers[3], __import__("pathlib").Path("/d"))
    assert "process.roles=broker\n" in props
    assert "default.replication.factor=3\n" in props
    assert plans[0].cluster_id != plans[1].cluster_id


@pytest.mark.parametrize(("args", "flag"), [((0, 1, 19092), "--clusters"),
                                            ((61, 1, 19092), "--clusters"),
                                            ((1, 0, 19092), "--brokers-per-cluster"),
                                            ((2, 1, 80), "--base-port")])
def test_bad_plans_name_the_option(args: tuple[int, int, int], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        plan_clusters(*args)
