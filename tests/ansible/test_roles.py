"""Offline checks of the Ansible roles (ansible/roles/).

Static checks (role layout, argument specs, templates) need only PyYAML. The
playbook checks run tests/ansible/checks.yml with connection=local: each
role's preflight against an inventory, then its templates rendered to a
temporary directory. Nothing is installed or started and no host is
contacted. They need ansible-playbook, from $FEDKAFKA_ANSIBLE_VENV
(default /opt/fedkafka-ansible-venv, made by .ci/molecule.sh) or PATH.
The converge-and-produce test of the roles is Molecule's
(ansible/molecule/kafka_clusters, run by .ci/molecule.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

pytestmark = pytest.mark.ansible

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
ROLES = sorted(p for p in (ANSIBLE / "roles").iterdir() if p.is_dir())
CHECKS = Path(__file__).with_name("checks.yml")
TASK_FILES = ("main", "preflight", "install", "configure", "run")
FAKE_SHA512 = "sha512:" + "0" * 128


def _load(path: Path) -> object:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_has_the_house_layout(role: Path) -> None:
    for name in TASK_FILES:
        assert (role / "tasks" / f"{name}.yml").is_file(), f"{role.name}: tasks/{name}.yml"
    for name in (
        "defaults/main.yml",
        "meta/main.yml",
        "meta/argument_specs.yml",
        "handlers/main.yml",
    ):
        assert (role / name).is_file(), f"{role.name}: {name}"
    for handler in _load(role / "handlers" / "main.yml"):
        assert "listen" in handler, f"{role.name}: handler {handler['name']!r} has no listen:"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_is_described_in_the_argument_specs(role: Path) -> None:
    defaults = set(_load(role / "defaults" / "main.yml") or {})
    options = _load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert defaults - set(options) == set(), f"{role.name}: defaults missing from argument_specs"
    assert set(options) - defaults == set(), (
        f"{role.name}: argument_specs options without a default"
    )
    for name, spec in options.items():
        assert spec.get("description"), f"{role.name}: {name} has no description"
        assert name.startswith(role.name + "_"), f"{role.name}: {name} lacks the role prefix"


@pytest.mark.parametrize(
    "template", sorted((ANSIBLE / "roles").glob("*/templates/*.j2")), ids=lambda p: p.name
)
def test_templates_carry_the_managed_marker(template: Path) -> None:
    lines = template.read_text().splitlines()
    if template.name.endswith(".json.j2"):
        # JSON has no comments: the marker is the "_comment" key.
        assert "'_comment': ansible_managed" in template.read_text()
        return
    first = lines[1] if lines[0].startswith("#!") else lines[0]
    assert first == "{{ ansible_managed | comment }}", template


# --- playbook checks ---------------------------------------------------------


@pytest.fixture(scope="module")
def ansible_playbook() -> Path:
    venv = Path(os.environ.get("FEDKAFKA_ANSIBLE_VENV", "/opt/fedkafka-ansible-venv"))
    found = venv / "bin" / "ansible-playbook"
    if not found.exists():
        on_path = shutil.which("ansible-playbook")
        if on_path is None:
            pytest.skip("ansible-playbook not found (run .ci/molecule.sh --prepare-only)")
        found = Path(on_path)
    return found


@pytest.fixture
def artifacts(tmp_path: Path) -> dict[str, str]:
    """Stand-ins for the control-node artifacts the preflights look for."""
    kafka = tmp_path / "kafka-4.1.1"
    (kafka / "libs").mkdir(parents=True)
    (kafka / "libs" / "kafka_2.13-4.1.1.jar").touch()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "fedkafka-0.1.0-py3-none-any.whl").touch()
    return {"kafka_artifact_dir": str(kafka), "fedkafka_wheel_dir": str(wheels)}


def run_checks(
    ansible_playbook: Path, inventory: Path, out: Path, extra_vars: dict[str, object]
) -> subprocess.CompletedProcess[str]:
    out.mkdir(exist_ok=True)
    extra = {
        "out": str(out),
        "ansible_connection": "local",
        "ansible_python_interpreter": str(ansible_playbook.parent / "python")
        if (ansible_playbook.parent / "python").exists()
        else "auto_silent",
        **extra_vars,
    }
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
    }
    return subprocess.run(
        [str(ansible_playbook), "-i", str(inventory), str(CHECKS), "-e", json.dumps(extra)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_example_inventory_passes_preflight_and_renders(
    ansible_playbook: Path, artifacts: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_checks(
        ansible_playbook,
        REPO / "inventories" / "example",
        out,
        {
            "kafka_tarball_checksum": FAKE_SHA512,
            "fedkafka_wheel_dir": artifacts["fedkafka_wheel_dir"],
        },
    )
    assert result.returncode == 0, result.stdout[-4000:]

    props = (out / "kafka-a2.example.net.server.properties").read_text().splitlines()
    assert "node.id=2" in props
    assert "controller.quorum.voters=1@10.0.2.11:9093,2@10.0.2.12:9093,3@10.0.2.13:9093" in props
    assert "advertised.listeners=PLAINTEXT://10.0.2.12:9092" in props
    assert "default.replication.factor=3" in props and "min.insync.replicas=2" in props

    zoo = (out / "zk2.example.net.zoo.cfg").read_text().splitlines()
    assert [line for line in zoo if line.startswith("server.")] == [
        f"server.{i}=10.0.1.1{i}:2888:3888" for i in (1, 2, 3)
    ]

    controller = json.loads((out / "ctl1.example.net.controller.json").read_text())
    assert controller["metadata"] == {
        "backend": "zookeeper",
        "hosts": "10.0.1.11:2181,10.0.1.12:2181,10.0.1.13:2181",
        "root": "/fedkafka",
    }
    assert [c["name"] for c in controller["clusters"]] == ["a", "b"]
    assert len({c["cluster_id"] for c in controller["clusters"]}) == 2
    assert controller["clusters"][1]["bootstrap"] == "10.0.3.11:9092,10.0.3.12:9092,10.0.3.13:9092"

    pproxy = json.loads((out / "pproxy1.example.net.proxy.json").read_text())
    cproxy = json.loads((out / "cproxy2.example.net.proxy.json").read_text())
    assert pproxy["roles"] == ["produce"] and cproxy["roles"] == ["consume"]
    for config in (pproxy, cproxy, controller):
        assert {"metadata", "listen", "advertised", "metrics_port"} <= config.keys()
    unit = (out / "ns1.example.net.fedkafka-nameservice.service").read_text()
    assert "fedkafka nameservice --config /etc/fedkafka/nameservice.json" in unit


def test_local_inventory_passes_preflight_and_renders(
    ansible_playbook: Path, artifacts: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_checks(ansible_playbook, REPO / "inventories" / "local", out, artifacts)
    assert result.returncode == 0, result.stdout[-4000:]
    a = (out / "kafka-a-local.server.properties").read_text().splitlines()
    b = (out / "kafka-b-local.server.properties").read_text().splitlines()
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:19092" in a
    assert "controller.quorum.voters=1@127.0.0.1:19193" in b
    ports = {
        json.loads((out / f"{host}.{c}.json").read_text())["listen"]
        for host, c in [
            ("controller-local", "controller"),
            ("nameservice-local", "nameservice"),
            ("proxy-local", "proxy"),
        ]
    }
    assert len(ports) == 3, ports


def _inventory(clusters: dict[str, dict[str, object]], zookeeper: int = 1) -> dict[str, object]:
    children: dict[str, object] = {}
    for group, spec in clusters.items():
        hosts = spec.pop("hosts")
        children[group] = {"hosts": hosts, "vars": spec}
    return {
        "all": {
            "children": {
                "zookeeper": {"hosts": {f"zk{i}": {} for i in range(1, zookeeper + 1)}},
                "kafka": {"children": children},
            }
        }
    }


GOOD_A = {
    "hosts": {"a1": {}},
    "kafka_cluster_name": "a",
    "kafka_cluster_id": "LoE4yDjNRsi14yBSaMVXQg",
}
GOOD_B = {
    "hosts": {"b1": {}},
    "kafka_cluster_name": "b",
    "kafka_cluster_id": "L-3yolEQQsCPsbkRH_RTzA",
}

PREFLIGHT_FAILURES = {
    "host in no cluster": (
        {
            "all": {
                "children": {"zookeeper": {"hosts": {"zk1": {}}}, "kafka": {"hosts": {"stray": {}}}}
            }
        },
        {},
        "Kafka host stray is in no physical cluster group",
    ),
    "missing cluster id": (
        _inventory({"kafka_cluster_a": {**GOOD_A, "kafka_cluster_id": ""}}),
        {},
        "kafka_cluster_id is missing for host a1 (cluster a)",
    ),
    "malformed cluster id": (
        _inventory({"kafka_cluster_a": {**GOOD_A, "kafka_cluster_id": "not-an-id"}}),
        {},
        "kafka_cluster_id is not a KRaft cluster id (not-an-id)",
    ),
    "two clusters with one id": (
        _inventory(
            {
                "kafka_cluster_a": dict(GOOD_A),
                "kafka_cluster_b": {**GOOD_B, "kafka_cluster_id": GOOD_A["kafka_cluster_id"]},
            }
        ),
        {},
        "Two physical clusters share a kafka_cluster_id",
    ),
    "duplicate node ids": (
        _inventory(
            {
                "kafka_cluster_a": {
                    **GOOD_A,
                    "hosts": {"a1": {"kafka_node_id": 7}, "a2": {"kafka_node_id": 7}},
                }
            }
        ),
        {},
        "needs unique kafka_node_id values",
    ),
    "no controller": (
        _inventory({"kafka_cluster_a": {**GOOD_A, "kafka_process_roles": "broker"}}),
        {},
        "at least one controller and one broker",
    ),
    "tarball without checksum": (
        _inventory({"kafka_cluster_a": dict(GOOD_A)}),
        {"kafka_install_source": "tarball", "kafka_artifact_dir": ""},
        "kafka_tarball_checksum is not 'sha512:<128 hex digits>'",
    ),
    "missing artifact dir": (
        _inventory({"kafka_cluster_a": dict(GOOD_A)}),
        {"kafka_install_source": "artifact_dir", "kafka_artifact_dir": "/nonexistent/kafka"},
        "has no libs/kafka_2.13-4.1.1.jar",
    ),
    "two zookeeper servers": (
        _inventory({"kafka_cluster_a": dict(GOOD_A)}, zookeeper=2),
        {},
        "a ZooKeeper ensemble needs 1, 3 or 5",
    ),
}


@pytest.mark.parametrize("case", PREFLIGHT_FAILURES, ids=str)
def test_preflight_rejects_bad_inventories(
    case: str, ansible_playbook: Path, artifacts: dict[str, str], tmp_path: Path
) -> None:
    inventory, extra_vars, message = PREFLIGHT_FAILURES[case]
    path = tmp_path / "hosts.yml"
    path.write_text(json.dumps(inventory))
    extra = {"kafka_install_source": "artifact_dir", **artifacts, **extra_vars}
    result = run_checks(ansible_playbook, path, tmp_path / "out", extra)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output[-3000:]
    assert message in output, output[-3000:]
