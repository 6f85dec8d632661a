"""``fedkafka acl add|remove|list``: the access control lists of the built-in ACL plugin.

The rules live in the map (``FederationMap.acls``) and hold on every proxy as soon as it
serves the new map (``plugins/fedkafka_builtin/acl.py``). As with Kafka's
``kafka-acls.sh``: once there is
any rule, a principal may do only what a rule allows (a DENY wins); with none at all,
everyone may do everything (the default plugin). Examples::

    fedkafka acl add --principal User:alice --operation Read --operation Write --topic orders
    fedkafka acl add --principal User:alice --operation Read --group orders- --prefixed
    fedkafka acl add --principal User:admin --operation All --cluster
    fedkafka acl add --principal User:* --operation Write --topic payroll --deny
    fedkafka acl list --principal User:alice
    fedkafka acl remove --principal User:alice --operation Write --topic orders
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from federation.cli.common import (
    JsonOpt,
    StoreOpt,
    WorkdirOpt,
    _backend,
    _load,
    _print_json,
    _run,
    via,
)
from federation.cli.common import out as console
from federation.controller import intents
from federation.core.errors import ConfigError
from federation.core.model import (
    ACL_ALL,
    ACL_EVERYONE,
    ACL_OPERATIONS,
    ALLOW,
    CLUSTER_RESOURCE,
    DENY,
    LITERAL,
    PREFIXED,
    AclRule,
    ResourceType,
)

__all__ = ["acl_app", "rules_from_options"]

acl_app = typer.Typer(help="Access control lists: who may do what on logical topics, groups "
                           "and the cluster (Kafka's ACLs).", no_args_is_help=True)

_ALL_OPERATIONS = sorted({str(op) for ops in ACL_OPERATIONS.values() for op in ops})

PrincipalOpt = Annotated[str, typer.Option(
    "--principal", "-p", help=f"Who: User:NAME ({ACL_EVERYONE} for everyone).")]
OperationsOpt = Annotated[list[str], typer.Option(
    "--operation", "-o", help=f"What (repeatable): {', '.join(_ALL_OPERATIONS)} or {ACL_ALL}.")]
TopicOpt = Annotated[str | None, typer.Option(
    "--topic", help="A logical topic (* for every topic).")]
GroupOpt = Annotated[str | None, typer.Option(
    "--group", help="A consumer group (* for every group).")]
ClusterOpt = Annotated[bool, typer.Option(
    "--cluster", help=f"The cluster ({CLUSTER_RESOURCE}): admin operations.")]
TransactionalOpt = Annotated[str | None, typer.Option(
    "--transactional-id", help="A transactional id (* for every one).")]
PrefixedOpt = Annotated[bool, typer.Option(
    "--prefixed", help="Every name that starts with the given one (Kafka's PREFIXED).")]
DenyOpt = Annotated[bool, typer.Option(
    "--deny", help="A DENY rule: it wins over every ALLOW.")]


def _resource(topic: str | None, group: str | None, cluster: bool,
              transactional_id: str | None) -> tuple[ResourceType, str]:
    given = [(kind, name) for kind, name in (
        (ResourceType.TOPIC, topic), (ResourceType.GROUP, group),
        (ResourceType.CLUSTER, CLUSTER_RESOURCE if cluster else None),
        (ResourceType.TRANSACTIONAL_ID, transactional_id)) if name is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one resource: --topic NAME, --group NAME, --cluster "
                          f"or --transactional-id ID (got {len(given)})")
    kind, name = given[0]
    if not name:
        raise ConfigError(f"empty --{kind.value.lower()} name: give a name, * for every one, "
                          "or a prefix with --prefixed")
    return kind, name


def _operation(text: str, kind: ResourceType) -> str:
    valid = [str(op) for op in ACL_OPERATIONS[kind]] + [ACL_ALL]
    wanted = text.replace("-", "").replace("_", "").lower()
    for op in valid:
        if op.lower() == wanted:
            return op
    raise ConfigError(f"bad --operation {text!r}: on {kind.value} use one of {', '.join(valid)}")


def rules_from_options(principal: str, operations: list[str], topic: str | None,
                       group: str | None, cluster: bool, transactional_id: str | None,
                       prefixed: bool, deny: bool) -> list[AclRule]:
    """The rules the options of ``acl add``/``acl remove`` name (one per operation).

    :raises ConfigError: naming the bad option and how to fix it.
    """
    kind_, sep, name_ = principal.partition(":")
    if not sep or not kind_ or not name_:
        raise ConfigError(f"bad --principal {principal!r}: a principal is TYPE:NAME, e.g. "
                          f"User:alice ({ACL_EVERYONE} for everyone)")
    if not operations:
        raise ConfigError("no --operation: give at least one, e.g. --operation Read")
    kind, name = _resource(topic, group, cluster, transactional_id)
    if prefixed and kind == ResourceType.CLUSTER:
        raise ConfigError("--prefixed does not apply to --cluster (there is one cluster)")
    if prefixed and name == "*":
        raise ConfigError("--prefixed with '*': leave --prefixed out, '*' alone is every name")
    rules = [AclRule(principal=principal, resource_type=kind.value, resource_name=name,
                     operation=_operation(op, kind), permission=DENY if deny else ALLOW,
                     pattern_type=PREFIXED if prefixed else LITERAL)
             for op in operations]
    for rule in rules:
        try:
            rule.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return list(dict.fromkeys(rules))


def _json(rules: list[AclRule]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in rules]


@acl_app.command("add")
def acl_add(principal: PrincipalOpt, operation: OperationsOpt, topic: TopicOpt = None,
            group: GroupOpt = None, cluster: ClusterOpt = False,
            transactional_id: TransactionalOpt = None, prefixed: PrefixedOpt = False,
            deny: DenyOpt = False, store: StoreOpt = None, workdir: WorkdirOpt = None,
            as_json: JsonOpt = False) -> None:
    """Allow (or with --deny, deny) a principal operations on a resource.

    The first rule switches access control on: what no rule allows is denied from then on.
    """
    rules = rules_from_options(principal, operation, topic, group, cluster, transactional_id,
                               prefixed, deny)
    with _backend(store, workdir) as backend:
        fmap, added = _run(intents.add_acls(backend, rules, via=via(store, workdir)))
    if as_json:
        _print_json({"added": _json(added), "map_version": fmap.version})
        return
    for rule in rules:
        console.print(f"{'added' if rule in added else 'already there'}: {rule}",
                      highlight=False)
    console.print(f"map version {fmap.version}; {len(fmap.acls)} rule(s)", highlight=False)


@acl_app.command("remove")
def acl_remove(principal: PrincipalOpt, operation: OperationsOpt, topic: TopicOpt = None,
               group: GroupOpt = None, cluster: ClusterOpt = False,
               transactional_id: TransactionalOpt = None, prefixed: PrefixedOpt = False,
               deny: DenyOpt = False, store: StoreOpt = None, workdir: WorkdirOpt = None,
               as_json: JsonOpt = False) -> None:
    """Remove rules (the same options as `acl add` name them).

    Removing the last rule switches access control off: everyone may do everything.
    """
    rules = rules_from_options(principal, operation, topic, group, cluster, transactional_id,
                               prefixed, deny)
    with _backend(store, workdir) as backend:
        fmap, removed = _run(intents.remove_acls(backend, rules, via=via(store, workdir)))
    if as_json:
        _print_json({"removed": _json(removed), "map_version": fmap.version})
        return
    for rule in rules:
        console.print(f"{'removed' if rule in removed else 'not there'}: {rule}",
                      highlight=False)
    left = (f"{len(fmap.acls)} rule(s) left" if fmap.acls
            else "no rule left: access control is off (everyone may do everything)")
    console.print(f"map version {fmap.version}; {left}", highlight=False)


@acl_app.command("list")
def acl_list(principal: Annotated[str | None, typer.Option(
                 "--principal", "-p", help="Only this principal's rules.")] = None,
             topic: TopicOpt = None, group: GroupOpt = None, cluster: ClusterOpt = False,
             transactional_id: TransactionalOpt = None, store: StoreOpt = None,
             workdir: WorkdirOpt = None, as_json: JsonOpt = False) -> None:
    """List the rules (optionally those of a principal, or those that name a resource)."""
    with _backend(store, workdir) as backend:
        fmap = _load(backend)
    rules = list(fmap.acls)
    if principal is not None:
        rules = [r for r in rules if r.principal == principal]
    if topic is not None or group is not None or cluster or transactional_id is not None:
        kind, name = _resource(topic, group, cluster, transactional_id)
        rules = [r for r in rules if r.resource_type == kind and (
            r.resource_name == name if name == "*" else r.matches_name(name))]
    if as_json:
        _print_json(_json(rules))
        return
    if not fmap.acls:
        console.print("no ACL rules: access control is off (everyone may do everything); "
                      "`fedkafka acl add` adds the first", highlight=False)
        return
    table = Table("permission", "principal", "operation", "resource", "pattern")
    for r in rules:
        table.add_row(r.permission, r.principal, r.operation,
                      f"{r.resource_type}:{r.resource_name}", r.pattern_type)
    console.print(table)
