"""Session-wide fixtures: real physical Kafka clusters, started once, torn down at the end.

The clusters come from the same code as ``fedkafka local up``. Environment knobs:

* ``FEDKAFKA_TEST_KAFKA_VERSION`` (default: fedkafka's default Kafka release)
* ``FEDKAFKA_TEST_BASE_PORT`` (default 29092, away from a developer's own ``local up``)
* ``FEDKAFKA_TEST_CLUSTERS`` (default 2)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.tooling.kafka_dist import DEFAULT_KAFKA_VERSION, KafkaDist, install_kafka
from federation.tooling.local import LocalFederation

# The built-in plugins are the package fedkafka_builtin in plugins/fedkafka_builtin/
# (ADR 0022). An installed checkout finds it through its install; a worktree run with
# PYTHONPATH=$PWD against another checkout's venv must test its own copy, in this process
# and in the proxies and CLIs the tests start.
_PLUGINS = str(Path(__file__).resolve().parents[1] / "plugins")
if _PLUGINS not in sys.path:
    sys.path.insert(0, _PLUGINS)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [_PLUGINS, *filter(None, [os.environ.get("PYTHONPATH")])])

KAFKA_VERSION = os.environ.get("FEDKAFKA_TEST_KAFKA_VERSION", DEFAULT_KAFKA_VERSION)
BASE_PORT = int(os.environ.get("FEDKAFKA_TEST_BASE_PORT", "29092"))
CLUSTERS = int(os.environ.get("FEDKAFKA_TEST_CLUSTERS", "2"))


@pytest.fixture(scope="session")
def kafka_dist() -> KafkaDist:
    dist, _ = install_kafka(KAFKA_VERSION)
    return dist


@pytest.fixture(scope="session")
def local_federation(
    tmp_path_factory: pytest.TempPathFactory, kafka_dist: KafkaDist
) -> Iterator[dict[str, Any]]:
    """A running local federation (physical clusters) shared by the whole session."""
    workdir: Path = tmp_path_factory.mktemp("federation")
    fed = LocalFederation(workdir)
    state = fed.up(clusters=CLUSTERS, kafka_version=kafka_dist.version, base_port=BASE_PORT,
                   heap="256m", proxies=2)
    state["_fed"] = fed
    try:
        yield state
    finally:
        fed.down(grace=15)


@pytest.fixture(scope="session")
def clusters(local_federation: dict[str, Any]) -> list[dict[str, Any]]:
    return list(local_federation["clusters"])


# A real ZooKeeper shared by the session (started only by tests that ask for it).
from tests.integration.zk_fixture import zookeeper  # noqa: E402, F401
