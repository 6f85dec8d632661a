"""``fedkafka user add|remove|list``: SASL users (SCRAM-SHA-256/512, PLAIN) in the store.

Passwords come from ``--password-file`` (``-`` for standard input; one trailing newline
is dropped) or a hidden prompt, never from the command line (it would show in ``ps``
and shell history). Only salted keys and hashes are stored.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
    out,
    via,
)
from federation.controller import intents, users
from federation.core.credentials import (
    DEFAULT_ITERATIONS,
    MAX_ITERATIONS,
    MECHANISMS,
    MIN_ITERATIONS,
)
from federation.core.errors import ConfigError

__all__ = ["user_app"]

user_app = typer.Typer(help="SASL users: SCRAM-SHA-256/512 and PLAIN credentials in the "
                       "metadata store (proxies offer a mechanism while a user holds it).",
                       no_args_is_help=True)


def _read_password(password_file: Path | None) -> str:
    if password_file is None:
        password = str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))
    else:
        try:
            text = sys.stdin.read() if str(password_file) == "-" else \
                password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read the password from {password_file}: {e}") from None
        password = text[:-1] if text.endswith("\n") else text
        password = password[:-1] if password.endswith("\r") else password
    if not password:
        raise ConfigError("the password is empty")
    return password


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name (the principal is User:NAME).")],
    password_file: Annotated[Path | None, typer.Option(
        "--password-file", help="Read the password from this file ('-' for stdin) "
        "[default: prompt]")] = None,
    mechanism: Annotated[list[str] | None, typer.Option(
        "--mechanism", help=f"Store credentials for this mechanism (repeatable; "
        f"{', '.join(MECHANISMS)}) [default: all]")] = None,
    iterations: Annotated[int, typer.Option(
        help=f"PBKDF2 iterations ({MIN_ITERATIONS}-{MAX_ITERATIONS}).")] = DEFAULT_ITERATIONS,
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Add a user, or replace all its credentials (a new password)."""
    mechanisms = [m.upper() for m in mechanism] if mechanism else list(MECHANISMS)
    password = _read_password(password_file)
    with _backend(store, workdir) as backend:
        fmap, created = _run(intents.add_user(backend, name, password, mechanisms, iterations,
                                              via=via(store, workdir)))
    shown = users.describe_user(name, fmap.users[name])
    if as_json:
        _print_json({**shown, "created": created, "map_version": fmap.version})
        return
    out.print(f"user {name} {'added' if created else 'updated'} "
              f"({', '.join(shown['mechanisms'])}; {iterations} iterations); "
              f"map version {fmap.version}", highlight=False)


@user_app.command("remove")
def user_remove(
    name: Annotated[str, typer.Argument(help="User name.")],
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Remove a user (its open connections stay; new authentications fail)."""
    with _backend(store, workdir) as backend:
        fmap = _run(intents.remove_user(backend, name, via=via(store, workdir)))
    if as_json:
        _print_json({"name": name, "removed": True, "map_version": fmap.version})
        return
    out.print(f"user {name} removed; map version {fmap.version}", highlight=False)


@user_app.command("list")
def user_list(store: StoreOpt = None, workdir: WorkdirOpt = None,
              as_json: JsonOpt = False) -> None:
    """List users with their mechanisms (never a secret)."""
    with _backend(store, workdir) as backend:
        fmap = _load(backend)
    rows = users.describe_users(fmap)
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"users (map version {fmap.version})")
    for col in ("name", "mechanisms", "iterations"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], ", ".join(row["mechanisms"]),
                      ", ".join(sorted({str(n) for n in row["iterations"].values()})))
    out.print(table)
