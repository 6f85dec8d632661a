"""What every ``fedkafka`` admin command shares: finding the metadata store (``--store``,
``$FEDKAFKA_STORE`` or the local federation), the common options, output helpers.

The command modules (:mod:`federation.cli.admin`, ``acl``, ``group``, ``user``) import
this one; :mod:`federation.cli.main` adds their apps to ``fedkafka``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from federation.clusters import admin
from federation.controller import intents
from federation.core.errors import ConfigError
from federation.core.model import ClusterState, FederationMap
from federation.plugin import PluginError, get_plugins, parse_store
from federation.store.mapstore import MetadataBackend

__all__ = ["STORE_ENV", "JsonOpt", "StoreOpt", "WorkdirOpt", "parse_store", "resolve_store", "via"]

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

STORE_ENV = "FEDKAFKA_STORE"
StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="Metadata store: file:/path/map.json or zookeeper:host:port/root "
    f"[default: ${STORE_ENV} or the local federation's store]")]
WorkdirOpt = Annotated[Path | None, typer.Option(
    "--workdir", help="Local federation whose store to use when --store is not given "
    "[default: $FEDKAFKA_WORKDIR or ./.fedkafka/local]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


# -- finding the store -----------------------------------------------------------------------


def resolve_store(store: str | None, workdir: Path | None = None) -> str:
    """The store spec from the flag, the environment or the local federation."""
    if store:
        return store
    if os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV]
    from federation.tooling.local import LocalFederation

    fed = LocalFederation(workdir)
    state = fed.load()
    if state and isinstance(state.get("store"), str):
        return str(state["store"])
    raise ConfigError(f"no metadata store given: pass --store (e.g. --store file:map.json), "
                      f"set ${STORE_ENV}, or start a local federation (`fedkafka local up`; "
                      f"none found in {fed.workdir})")


@contextmanager
def _backend(store: str | None, workdir: Path | None) -> Iterator[MetadataBackend]:
    name, options = parse_store(resolve_store(store, workdir), "--store")
    try:
        backend = get_plugins().backend(name, **options)
    except PluginError as e:
        raise ConfigError(str(e)) from None
    try:
        yield backend
    finally:
        backend.close()


def via(store: str | None, workdir: Path | None) -> intents.Submitter:
    """How this CLI changes the map: intents to the active controller with the admin token
    (``$FEDKAFKA_INTENT_TOKEN[_FILE]``, else the one remembered for the store by ``local
    up``); directly only while no controller is registered (bootstrap, ADR 0015)."""
    token = intents.resolve_token() or intents.store_token(resolve_store(store, workdir),
                                                          intents.ADMIN)
    return intents.Submitter(token=token, allow_direct=True)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _load(backend: MetadataBackend) -> FederationMap:
    fmap = backend.load()
    if fmap is None:
        raise admin.NoMapError("the metadata store holds no map yet; add a first cluster "
                               "with `fedkafka cluster add ID BOOTSTRAP`")
    return fmap


_STATE_COLOURS = {"active": "green", "read_only": "yellow", "draining": "yellow",
                  "down": "red", "retired": "dim"}


def _state(state: ClusterState) -> str:
    colour = _STATE_COLOURS.get(state.value, "white")
    return f"[{colour}]{state.value}[/{colour}]"


