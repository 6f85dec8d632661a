"""Offline checks of the Ansible roles (ansible/roles/).

Static checks (role layout, argument specs, templates) need only PyYAML. The
playbook checks run tests/ansible/checks.yml with connection=local: each
role's preflight against an inventory, then its templates rendered to a
temporary directory. Nothing is installed or started and no host is
contacted. They need ansible-playbook, from $FEDKAFKA_ANSIBLE_VENV
(default /opt/fedkafka-ansible-venv, made by .ci/molecule.sh) or PATH.
The preflight tests also run playbooks/preflight.yml (what site.yml,
add_cluster.yml and migrate_cluster.yml check before any change), and the
request checks of add_cluster.yml and migrate_cluster.yml. The
converge-and-produce test of the roles is Molecule's
(ansible/molecule/federation, run by .ci/molecule.sh).
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
    assert controller["member_id"] == "ctl1.example.net"
    assert controller["metrics_port"] == 9308
    assert controller["health_interval"] == 2.0 and controller["down_after"] == 3
    assert controller["failover_after"] == 10.0 and controller["fence_timeout"] == 5.0

    federation = json.loads((out / "federation.json").read_text())
    assert [c["id"] for c in federation["clusters"]] == ["a", "b"]
    assert federation["clusters"][1]["bootstrap"] == "10.0.3.11:9092,10.0.3.12:9092,10.0.3.13:9092"
    assert sorted(e["node_id"] for e in federation["pools"]["default"]) == [1001, 1002, 1003, 1004]
    assert {e["host"]: e["roles"] for e in federation["pools"]["default"]}["10.0.5.21"] == [
        "consumer"
    ]

    pproxy = json.loads((out / "pproxy1.example.net.proxy.json").read_text())
    cproxy = json.loads((out / "cproxy2.example.net.proxy.json").read_text())
    assert pproxy["roles"] == ["producer"] and cproxy["roles"] == ["consumer"]
    assert pproxy["node_id"] == 1001 and cproxy["node_id"] == 1004
    assert pproxy["advertised"] == "10.0.5.11:9192"
    store = "zookeeper:10.0.1.11:2181,10.0.1.12:2181,10.0.1.13:2181/fedkafka"
    assert pproxy["store"] == cproxy["store"] == store
    nameservice = json.loads((out / "ns2.example.net.nameservice.json").read_text())
    assert nameservice["node_id"] == 902 and nameservice["http"] == "10.0.4.22:8080"
    # Every listener binds to the host's address, none to every interface.
    assert nameservice["listen"] == "10.0.4.22:9092" and nameservice["metrics"] == "10.0.4.22:9102"
    assert pproxy["listen"] == "10.0.5.11:9192" and pproxy["metrics"] == "10.0.5.11:9101"
    assert pproxy["sasl_required"] is False and "tls" not in pproxy
    assert pproxy["workers"] == 1 and cproxy["workers"] == 2  # group_vars/cproxy.yml
    assert "listeners=PLAINTEXT://10.0.2.12:9092,CONTROLLER://10.0.2.12:9093" in props
    assert "clientPortAddress=10.0.1.12" in zoo and "quorumListenOnAllIPs=false" in zoo
    assert controller["metrics_host"] == "10.0.4.11"
    assert federation["clusters"][0]["security"] == {}
    unit = (out / "ns1.example.net.fedkafka-nameservice.service").read_text()
    assert "fedkafka nameservice --config /etc/fedkafka/nameservice.json" in unit
    _assert_the_processes_accept(out)


def _assert_the_processes_accept(out: Path) -> None:
    """The rendered files load with the processes' own configuration loaders, when importable."""
    try:
        from federation.controller.service import load_config
        from federation.proxy.config import ProxyConfig
    except ImportError:  # the Ansible venv has no fedkafka: the full test run covers this
        return
    for path in out.glob("*.proxy.json"):
        ProxyConfig.load(path)
    for path in out.glob("*.nameservice.json"):
        ProxyConfig.load(path)
    for path in out.glob("*.controller.json"):
        load_config(path)


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
            ("nameservice-local", "nameservice"),
            ("proxy-local", "proxy"),
        ]
    } | {json.loads((out / "controller-local.controller.json").read_text())["metrics_port"]}
    assert len(ports) == 3, ports
    proxy = json.loads((out / "proxy-local.proxy.json").read_text())
    assert proxy["store"] == "zookeeper:127.0.0.1:2181/fedkafka"
    assert proxy["listen"] == "127.0.0.1:9192" and proxy["node_id"] == 1001
    _assert_the_processes_accept(out)


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


def _federation(
    proxy_vars: dict[str, object] | None = None, proxies: int = 1, controller: bool = True
) -> dict[str, object]:
    """Clusters a and b, one ZooKeeper server and federation hosts."""
    inventory = _inventory({"kafka_cluster_a": dict(GOOD_A), "kafka_cluster_b": dict(GOOD_B)})
    if proxy_vars is None:
        proxy_vars = {"fedkafka_proxy_node_id": 1001}
    children = inventory["all"]["children"]  # type: ignore[index]
    children["fedkafka_proxy"] = {
        "hosts": {f"p{i}": dict(proxy_vars) for i in range(1, proxies + 1)}
    }
    children["fedkafka_nameservice"] = {"hosts": {"ns1": {}}}
    if controller:
        children["fedkafka_controller"] = {"hosts": {"ctl1": {}}}
    return inventory


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

CERT = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHtest\n-----END PRIVATE KEY-----\n"
PEMS = {
    role: {
        f"{role}_tls_certificate": CERT,
        f"{role}_tls_private_key": KEY,
        f"{role}_tls_ca_certificate": CERT,
    }
    for role in ("kafka", "fedkafka")
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
    "proxy without node id": (
        _federation(proxy_vars={}),
        {},
        "fedkafka_proxy_node_id is missing for proxy host p1",
    ),
    "two proxies with one node id": (
        _federation(proxy_vars={"fedkafka_proxy_node_id": 1001}, proxies=2),
        {},
        "Every proxy needs a distinct integer fedkafka_proxy_node_id",
    ),
    "federation without a controller": (
        _federation(controller=False),
        {},
        "group fedkafka_controller is empty",
    ),
    "no fedkafka wheel": (
        _federation(),
        {"fedkafka_wheel_dir": "/nonexistent/wheels"},
        "holds no fedkafka-*.whl",
    ),
    "proxy on every interface": (
        _federation(
            proxy_vars={"fedkafka_proxy_node_id": 1001, "fedkafka_proxy_listen_address": "0.0.0.0"}
        ),
        {},
        "must each name one interface's address, not every interface",
    ),
    "kafka on every interface": (
        _inventory({"kafka_cluster_a": {**GOOD_A, "kafka_listen_address": "0.0.0.0"}}),
        {},
        "kafka_listen_address ('0.0.0.0') and kafka_controller_listen_address",
    ),
    "kafka TLS without a certificate": (
        _inventory({"kafka_cluster_a": {**GOOD_A, "kafka_security_protocol": "SSL"}}),
        {},
        "kafka_tls_certificate, kafka_tls_ca_certificate (PEM certificates) "
        "or kafka_tls_private_key",
    ),
    "kafka SASL without users": (
        _inventory(
            {"kafka_cluster_a": {**GOOD_A, "kafka_security_protocol": "SASL_SSL", **PEMS["kafka"]}}
        ),
        {},
        "kafka_sasl_users must list users [{name, password}]",
    ),
    "SASL proxy without users": (
        _federation(
            proxy_vars={"fedkafka_proxy_node_id": 1001, "fedkafka_proxy_sasl_required": True}
        ),
        {},
        "fedkafka_proxy_sasl_required is true on host p1 but fedkafka_sasl_users is empty",
    ),
    "TLS proxy without a certificate": (
        _federation(proxy_vars={"fedkafka_proxy_node_id": 1001, "fedkafka_proxy_tls": True}),
        {},
        "but fedkafka_tls_certificate or fedkafka_tls_private_key (PEM contents) is missing",
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


# --- preflight.yml: what site.yml and add_cluster.yml check before any change --


PREFLIGHT = ANSIBLE / "playbooks" / "preflight.yml"


def run_preflight(
    ansible_playbook: Path,
    inventory: dict[str, object],
    tmp_path: Path,
    extra: dict[str, object],
    playbook: Path = PREFLIGHT,
) -> subprocess.CompletedProcess[str]:
    """playbooks/preflight.yml (or another playbook); hosts connect as the inventory says
    (local unless set)."""
    path = tmp_path / "hosts.yml"
    all_vars = inventory["all"].setdefault("vars", {})  # type: ignore[union-attr,index]
    all_vars.setdefault("ansible_connection", "local")
    all_vars.setdefault("ansible_python_interpreter", str(ansible_playbook.parent / "python"))
    path.write_text(json.dumps(inventory))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
    }
    return subprocess.run(
        [str(ansible_playbook), "-i", str(path), str(playbook), "-e", json.dumps(extra)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


def test_preflight_passes_a_consistent_inventory(
    ansible_playbook: Path, artifacts: dict[str, str], tmp_path: Path
) -> None:
    extra = {"kafka_install_source": "artifact_dir", **artifacts}
    result = run_preflight(ansible_playbook, _federation(), tmp_path, extra)
    assert result.returncode == 0, _output(result)[-3000:]


def test_preflight_stops_on_an_inconsistent_inventory_before_any_change(
    ansible_playbook: Path, artifacts: dict[str, str], tmp_path: Path
) -> None:
    inventory = _federation()
    kafka = inventory["all"]["children"]["kafka"]  # type: ignore[index]
    kafka["hosts"] = {"stray": {}}
    extra = {"kafka_install_source": "artifact_dir", **artifacts}
    result = run_preflight(ansible_playbook, inventory, tmp_path, extra)
    output = _output(result)
    assert result.returncode != 0
    assert "Kafka host stray is in no physical cluster group" in output, output[-3000:]
    # any_errors_fatal: the reachability play (and so any later play) never starts.
    assert "Check that every host answers" not in output, output[-3000:]


def test_preflight_names_an_unreachable_host(
    ansible_playbook: Path, artifacts: dict[str, str], tmp_path: Path
) -> None:
    inventory = _federation()
    controllers = inventory["all"]["children"]["fedkafka_controller"]  # type: ignore[index]
    controllers["hosts"]["ctl1"] = {
        "ansible_connection": "ssh",
        "ansible_host": "127.0.0.1",
        "ansible_port": 1,
        "ansible_ssh_common_args": "-o ConnectTimeout=3",
    }
    extra = {"kafka_install_source": "artifact_dir", **artifacts}
    result = run_preflight(ansible_playbook, inventory, tmp_path, extra)
    output = _output(result)
    assert result.returncode != 0
    assert "Host ctl1 is unreachable" in output and "nothing was changed" in output, output[-3000:]


def test_preflight_names_an_unreachable_metadata_store(
    ansible_playbook: Path, artifacts: dict[str, str], tmp_path: Path
) -> None:
    extra = {
        "kafka_install_source": "artifact_dir",
        **artifacts,
        "preflight_running_federation": True,
        "fedkafka_metadata_hosts": "127.0.0.1:1",
    }
    result = run_preflight(ansible_playbook, _federation(), tmp_path, extra)
    output = _output(result)
    assert result.returncode != 0
    assert (
        "The metadata store (zookeeper:127.0.0.1:1/fedkafka) is unreachable from "
        "controller host ctl1" in output
    ), output[-3000:]


# --- the request checks of add_cluster.yml and migrate_cluster.yml -------------


MIGRATE = ANSIBLE / "playbooks" / "migrate_cluster.yml"
ADD_CLUSTER = ANSIBLE / "playbooks" / "add_cluster.yml"

BAD_REQUESTS = {
    "migrate without a cluster": (MIGRATE, {}, "Pass -e migrate_cluster_name=<name>"),
    "migrate an unknown cluster": (
        MIGRATE,
        {"migrate_cluster_name": "z"},
        "(got z; cluster groups: a, b)",
    ),
    "migrate with a bad timeout": (
        MIGRATE,
        {"migrate_cluster_name": "b", "migrate_cluster_timeout": 0},
        "migrate_cluster_timeout and migrate_cluster_interval as seconds > 0",
    ),
    "rebalance neither true nor false": (
        ADD_CLUSTER,
        {"new_cluster_group": "kafka_cluster_b", "add_cluster_rebalance": "maybe"},
        "add_cluster_rebalance as true or false (got maybe)",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_playbooks_refuse_a_bad_request_before_contacting_a_host(
    case: str, ansible_playbook: Path, artifacts: dict[str, str], tmp_path: Path
) -> None:
    playbook, request, message = BAD_REQUESTS[case]
    extra = {"kafka_install_source": "artifact_dir", **artifacts, **request}
    result = run_preflight(ansible_playbook, _federation(), tmp_path, extra, playbook)
    output = _output(result)
    assert result.returncode != 0, output[-3000:]
    assert message in output, output[-3000:]
    assert "Check the inventory before anything changes" not in output, output[-3000:]


def test_a_secure_inventory_renders_tls_and_sasl_without_a_secret_in_the_map(
    ansible_playbook: Path, artifacts: dict[str, str], tmp_path: Path
) -> None:
    """TLS and SASL everywhere: SASL_SSL brokers, TLS + SASL proxy and name service."""
    secure_cluster = {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_users": [
            {"name": "broker", "password": "broker-pw"},
            {"name": "fedkafka", "password": "fed-pw"},
        ],
        "kafka_federation_sasl_user": "fedkafka",
        **PEMS["kafka"],
    }
    inventory = _federation()
    kafka = inventory["all"]["children"]["kafka"]["children"]  # type: ignore[index]
    kafka["kafka_cluster_a"]["vars"].update(secure_cluster)
    extra = {
        **artifacts,
        "kafka_install_source": "artifact_dir",
        **PEMS["fedkafka"],
        "fedkafka_proxy_tls": True,
        "fedkafka_proxy_sasl_required": True,
        "fedkafka_nameservice_tls": True,
        "fedkafka_nameservice_http_tls": True,
        "fedkafka_tls_client_auth": "required",
        "fedkafka_sasl_users": [{"name": "app", "password": "app-pw"}],
    }
    path = tmp_path / "hosts.yml"
    path.write_text(json.dumps(inventory))
    out = tmp_path / "out"
    result = run_checks(ansible_playbook, path, out, extra)
    assert result.returncode == 0, _output(result)[-4000:]

    props = (out / "a1.server.properties").read_text()
    assert "listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL" in props
    assert "advertised.listeners=SASL_SSL://a1:9092" in props
    assert "ssl.keystore.type=PEM" in props and "ssl.truststore.certificates=" in props
    assert 'user_fedkafka="fed-pw"' in props and "sasl.enabled.mechanisms=PLAIN" in props
    plain_b = (out / "b1.server.properties").read_text()
    assert "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT" in plain_b

    proxy = json.loads((out / "p1.proxy.json").read_text())
    assert proxy["sasl_required"] is True
    assert proxy["tls"] == {
        "cert": "/etc/fedkafka/tls/cert.pem",
        "key": "/etc/fedkafka/tls/key.pem",
        "ca": "/etc/fedkafka/tls/ca.pem",
        "client_auth": "required",
        "min_version": "TLSv1.2",
        "principal_mapping_rules": "DEFAULT",
    }
    nameservice = json.loads((out / "ns1.nameservice.json").read_text())
    assert nameservice["tls"]["client_auth"] == "required"
    assert nameservice["http_tls"]["client_auth"] == "none"

    federation = (out / "federation.json").read_text()
    clusters = {c["id"]: c for c in json.loads(federation)["clusters"]}
    assert clusters["a"]["security"] == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": "/etc/fedkafka/tls/cluster-a-ca.pem",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "fedkafka",
        "sasl.password": "file:/etc/fedkafka/secrets/cluster-a.password",
    }
    assert clusters["b"]["security"] == {}
    assert "fed-pw" not in federation and "broker-pw" not in federation

    for unit in ("a1.kafka.service", "p1.fedkafka-proxy.service"):
        text = (out / unit).read_text()
        for setting in ("NoNewPrivileges=true", "ProtectSystem=strict", "PrivateTmp=true",
                        "PrivateDevices=true", "CapabilityBoundingSet=\n", "ProtectHome=true"):
            assert setting in text, (unit, setting)
