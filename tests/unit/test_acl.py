"""The built-in ACL plugin (fedkafka_builtin.acl): Kafka's matching rules over the map's ACLs,
the rules in the map, and `fedkafka acl` (through federation.clusters.admin)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fedkafka_builtin.acl import decide
from typer.testing import CliRunner

from federation.cli.main import app
from federation.clusters import admin
from federation.core.model import (
    AclRule,
    FederationMap,
    PhysicalCluster,
    Principal,
)
from federation.plugin import Plugins, make_plugin_manager
from federation.store.mapstore import dumps, loads

ALICE, BOB, EVE = Principal("alice"), Principal("bob"), Principal("eve")


def rule(principal: str, operation: str, kind: str, name: str, *, deny: bool = False,
         prefixed: bool = False) -> AclRule:
    return AclRule(principal, kind, name, operation, "DENY" if deny else "ALLOW",
                   "PREFIXED" if prefixed else "LITERAL")


def fmap(*rules: AclRule, version: int = 1) -> FederationMap:
    return FederationMap(version=version, clusters={"A": PhysicalCluster("A", "a:9092")},
                         coordination_cluster="A", acls=rules)


def verdict(rules: tuple[AclRule, ...], who: Principal, op: str, kind: str, name: str) -> str:
    return decide(rules, who, op, kind, name).value


# -- matching ------------------------------------------------------------------------------


def test_literal_rules_allow_only_what_they_name() -> None:
    rules = (rule("User:alice", "Read", "Topic", "orders"),)
    assert verdict(rules, ALICE, "Read", "Topic", "orders") == "allow"
    assert verdict(rules, ALICE, "Write", "Topic", "orders") == "deny"
    assert verdict(rules, ALICE, "Read", "Topic", "orders2") == "deny"
    assert verdict(rules, ALICE, "Read", "Group", "orders") == "deny"  # another type
    assert verdict(rules, BOB, "Read", "Topic", "orders") == "deny"


def test_deny_wins_over_any_allow() -> None:
    rules = (rule("User:*", "All", "Topic", "*"),
             rule("User:bob", "Write", "Topic", "pay", prefixed=True, deny=True))
    assert verdict(rules, BOB, "Write", "Topic", "payroll") == "deny"
    assert verdict(rules, BOB, "Read", "Topic", "payroll") == "allow"  # deny is per operation
    assert verdict(rules, ALICE, "Write", "Topic", "payroll") == "allow"
    everything_denied = (*rules, rule("User:bob", "All", "Topic", "*", deny=True))
    assert verdict(everything_denied, BOB, "Describe", "Topic", "x") == "deny"


def test_prefixed_and_wildcard_names() -> None:
    rules = (rule("User:alice", "Read", "Group", "etl-", prefixed=True),
             rule("User:bob", "Read", "Group", "*"))
    assert verdict(rules, ALICE, "Read", "Group", "etl-daily") == "allow"
    assert verdict(rules, ALICE, "Read", "Group", "etl-") == "allow"
    assert verdict(rules, ALICE, "Read", "Group", "et") == "deny"
    assert verdict(rules, BOB, "Read", "Group", "anything") == "allow"
    # A literal '*' is every name; a prefixed one is not allowed (validation) and a
    # literal rule named 'etl-' matches only that name.
    assert verdict((rule("User:alice", "Read", "Group", "etl-"),), ALICE, "Read", "Group",
                   "etl-daily") == "deny"


def test_implied_operations_as_kafka() -> None:
    for op in ("Read", "Write", "Delete", "Alter"):
        rules = (rule("User:alice", op, "Topic", "t"),)
        assert verdict(rules, ALICE, "Describe", "Topic", "t") == "allow", op
        assert verdict(rules, ALICE, "DescribeConfigs", "Topic", "t") == "deny", op
    rules = (rule("User:alice", "AlterConfigs", "Topic", "t"),)
    assert verdict(rules, ALICE, "DescribeConfigs", "Topic", "t") == "allow"
    assert verdict(rules, ALICE, "Describe", "Topic", "t") == "deny"
    # Only ALLOW implies: a DENY of Read does not deny Describe (Kafka's semantics).
    rules = (rule("User:alice", "Write", "Topic", "t"),
             rule("User:alice", "Read", "Topic", "t", deny=True))
    assert verdict(rules, ALICE, "Describe", "Topic", "t") == "allow"
    assert verdict(rules, ALICE, "Read", "Topic", "t") == "deny"
    # All allows everything, including IdempotentWrite on the cluster.
    rules = (rule("User:alice", "All", "Cluster", "kafka-cluster"),)
    assert verdict(rules, ALICE, "IdempotentWrite", "Cluster", "kafka-cluster") == "allow"


def test_everyone_principal_and_principal_types() -> None:
    rules = (rule("User:*", "Describe", "Group", "g"),)
    assert verdict(rules, EVE, "Describe", "Group", "g") == "allow"
    assert verdict((rule("User:alice", "Read", "Topic", "t"),), Principal("alice", "Service"),
                   "Read", "Topic", "t") == "deny"


def test_the_plugin_answers_none_without_rules_so_the_default_decides() -> None:
    plugins = Plugins(make_plugin_manager(entry_points=False))
    assert plugins.authorize(EVE, "Delete", "Topic", "t", fmap()) is True  # no rule at all
    assert plugins.authorize(EVE, "Delete", "Topic", "t") is True  # no map
    with_rules = fmap(rule("User:alice", "Delete", "Topic", "t"))
    assert plugins.authorize(EVE, "Delete", "Topic", "t", with_rules) is False
    assert plugins.authorize(ALICE, "Delete", "Topic", "t", with_rules) is True
    assert plugins.authorize(ALICE, "Describe", "Topic", "t", with_rules) is True


def test_the_plugin_can_be_blocked() -> None:
    plugins = Plugins(make_plugin_manager(entry_points=False, blocked=["fedkafka_builtin.acl"]))
    assert plugins.authorize(EVE, "Delete", "Topic", "t",
                             fmap(rule("User:alice", "Delete", "Topic", "t"))) is True


# -- rules in the map ----------------------------------------------------------------------


def test_rules_round_trip_and_are_written_only_when_there_are_some() -> None:
    assert "acls" not in json.loads(dumps(fmap()))
    m = fmap(rule("User:alice", "Read", "Topic", "orders"),
             rule("User:*", "Write", "Topic", "pay", deny=True, prefixed=True))
    doc = json.loads(dumps(m))
    assert doc["acls"][1] == {"principal": "User:*", "resource_type": "Topic",
                              "resource_name": "pay", "operation": "Write",
                              "permission": "DENY", "pattern_type": "PREFIXED"}
    assert loads(dumps(m)).acls == m.acls


@pytest.mark.parametrize(("bad", "field"), [
    (AclRule("alice", "Topic", "t", "Read"), "principal"),
    (AclRule("User:alice", "Queue", "t", "Read"), "resource_type"),
    (AclRule("User:alice", "Group", "g", "Write"), "operation"),
    (AclRule("User:alice", "Topic", "t", "Read", "MAYBE"), "permission"),
    (AclRule("User:alice", "Topic", "t", "Read", "ALLOW", "MATCH"), "pattern_type"),
    (AclRule("User:alice", "Topic", "", "Read"), "resource_name"),
    (AclRule("User:alice", "Topic", "*", "Read", "ALLOW", "PREFIXED"), "resource_name"),
    (AclRule("User:alice", "Cluster", "other", "Alter"), "resource_name"),
])
def test_a_bad_rule_is_refused_naming_its_field(bad: AclRule, field: str) -> None:
    with pytest.raises(ValueError, match=f"ACL {field}"):
        bad.validate()
    with pytest.raises(ValueError, match=f"ACL {field}"):
        fmap(bad).validate()
    doc = json.loads(dumps(fmap()))
    doc["acls"] = [bad.to_dict()]
    with pytest.raises(ValueError, match=f"ACL {field}"):
        loads(json.dumps(doc))


def test_a_rule_with_an_unknown_key_is_refused() -> None:
    doc = json.loads(dumps(fmap()))
    doc["acls"] = [{**rule("User:a", "Read", "Topic", "t").to_dict(), "host": "*"}]
    with pytest.raises(ValueError, match=r"acls\[0\]: unknown keys \['host'\]"):
        loads(json.dumps(doc))


# -- admin and CLI -------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> str:
    path = tmp_path / "map.json"
    path.write_text(dumps(fmap()))
    return f"file:{path}"


def _backend(store: str):  # type: ignore[no-untyped-def]
    from federation.plugin import get_plugins

    return get_plugins().backend("file", path=store.removeprefix("file:"))


def test_admin_adds_and_removes_rules(store: str) -> None:
    backend = _backend(store)
    try:
        r1, r2 = rule("User:alice", "Read", "Topic", "t"), rule("User:bob", "Read", "Topic", "t")
        m, added = asyncio.run(admin.add_acls(backend, [r1, r2, r1]))
        assert added == [r1, r2] and m.acls == (r1, r2) and m.version == 2
        m, added = asyncio.run(admin.add_acls(backend, [r1]))  # already there: no publish
        assert added == [] and m.version == 2
        with pytest.raises(admin.InvalidRequestError, match="ACL operation"):
            asyncio.run(admin.add_acls(backend, [rule("User:a", "Write", "Group", "g")]))
        m, removed = asyncio.run(admin.remove_acls(backend, [r1]))
        assert removed == [r1] and m.acls == (r2,)
        with pytest.raises(admin.InvalidRequestError, match="no such ACL rule"):
            asyncio.run(admin.remove_acls(backend, [r1]))
    finally:
        backend.close()


def _json_out(text: str) -> object:
    """The JSON a command printed (log lines may precede it)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line in ("{", "[", "[]"))
    return json.loads("\n".join(lines[start:]))


def test_cli_acl_add_list_remove(store: str) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["acl", "add", "--principal", "User:alice", "-o", "read",
                              "-o", "describe-configs", "--topic", "orders-", "--prefixed",
                              "--store", store, "--json"])
    assert res.exit_code == 0, res.output
    added = _json_out(res.stdout)["added"]  # type: ignore[index]
    assert [(a["operation"], a["pattern_type"]) for a in added] == [
        ("Read", "PREFIXED"), ("DescribeConfigs", "PREFIXED")]
    res = runner.invoke(app, ["acl", "add", "-p", "User:*", "-o", "All", "--cluster",
                              "--deny", "--store", store])
    assert res.exit_code == 0 and "added: DENY User:* All on Cluster:kafka-cluster" in res.stdout
    res = runner.invoke(app, ["acl", "list", "--topic", "orders-eu", "--store", store,
                              "--json"])
    assert [r["operation"] for r in _json_out(res.stdout)]  # type: ignore[attr-defined] == ["Read", "DescribeConfigs"]
    res = runner.invoke(app, ["acl", "remove", "-p", "User:alice", "-o", "Read",
                              "--topic", "orders-", "--prefixed", "--store", store])
    assert res.exit_code == 0 and "removed: ALLOW User:alice Read on Topic:orders-" in res.stdout
    res = runner.invoke(app, ["acl", "list", "--principal", "User:alice", "--store", store,
                              "--json"])
    assert [r["operation"] for r in _json_out(res.stdout)]  # type: ignore[attr-defined] == ["DescribeConfigs"]


@pytest.mark.parametrize(("args", "message"), [
    (["-p", "alice", "-o", "Read", "--topic", "t"], "bad --principal 'alice'"),
    (["-p", "User:a", "-o", "Read"], "give exactly one resource"),
    (["-p", "User:a", "-o", "Read", "--topic", "t", "--group", "g"], "give exactly one"),
    (["-p", "User:a", "-o", "Write", "--group", "g"], "bad --operation 'Write': on Group"),
    (["-p", "User:a", "-o", "Alter", "--cluster", "--prefixed"], "--prefixed does not apply"),
    (["-p", "User:a", "-o", "Read", "--topic", "*", "--prefixed"], "--prefixed with '*'"),
])
def test_cli_names_the_bad_option_and_the_fix(store: str, args: list[str],
                                              message: str) -> None:
    from federation.core.errors import ConfigError

    res = CliRunner().invoke(app, ["acl", "add", *args, "--store", store])
    assert res.exit_code != 0
    assert isinstance(res.exception, ConfigError) and message in str(res.exception)
    assert loads(Path(store.removeprefix("file:")).read_text()).acls == ()
