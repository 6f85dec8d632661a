"""``fedkafka user add|remove|list`` against a file store: credentials in, no password."""

from __future__ import annotations

import json
from pathlib import Path

import structlog
import typer
from fedkafka_builtin.file_backend import FileBackend
from typer.testing import CliRunner, Result

from federation.cli.user import user_app
from federation.core.credentials import PLAIN
from federation.core.model import FederationMap, PhysicalCluster, Principal
from federation.plugin import Plugins, make_plugin_manager
from federation.security.sasl import ScramClient


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(user_app, name="user")
    return app


def _invoke(args: list[str], input: str | None = None) -> Result:
    with structlog.testing.capture_logs():  # the file store's logs, off stdout
        return CliRunner().invoke(_cli(), args, input=input)


def _stored(path: Path) -> FederationMap:
    backend = FileBackend(path)
    try:
        fmap = backend.load()
    finally:
        backend.close()
    assert fmap is not None
    return fmap


def test_user_add_list_remove(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    backend = FileBackend(path)
    backend.publish(FederationMap(version=1, clusters={
        "a": PhysicalCluster("a", "127.0.0.1:9092")}, coordination_cluster="a"), 0)
    backend.close()
    store = ["--store", f"file:{path}"]
    secret = tmp_path / "pw"
    secret.write_text("open sesame\n")

    result = _invoke(["user", "add", "alice", "--password-file", str(secret),
                                    *store, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["created"] is True
    assert shown["mechanisms"] == ["SCRAM-SHA-256", "SCRAM-SHA-512", PLAIN]
    assert shown["iterations"] == {"SCRAM-SHA-256": 4096, "SCRAM-SHA-512": 4096, PLAIN: 4096}
    text = path.read_text()
    assert "open sesame" not in text and "sesame" not in text
    fmap = _stored(path)
    alice = fmap.users["alice"]
    assert alice.plain is not None and alice.plain.verify(b"open sesame")  # newline dropped
    plugins = Plugins(make_plugin_manager(entry_points=False))
    server = plugins.sasl_authenticator("SCRAM-SHA-512", fmap)
    client = ScramClient("SCRAM-SHA-512", "alice", "open sesame")
    final = server.step(client.final(server.step(client.first()).server_bytes))
    assert final.principal == Principal("alice")

    # A prompt (hidden, confirmed), one mechanism, more iterations.
    result = _invoke(["user", "add", "bob", "--mechanism", "scram-sha-256",
                                    "--iterations", "8192", *store],
                           input="builder\nbuilder\n")
    assert result.exit_code == 0, result.output
    assert "user bob added (SCRAM-SHA-256; 8192 iterations)" in result.output
    assert "builder" not in result.output.replace("builder\nbuilder", "")
    # A new password replaces every credential.
    result = _invoke(["user", "add", "bob", "--password-file", "-",
                                    "--mechanism", "PLAIN", *store], input="fixer")
    assert result.exit_code == 0, result.output
    assert "user bob updated (PLAIN; 4096 iterations)" in result.output
    bob = _stored(path).users["bob"]
    assert bob.mechanisms == (PLAIN,) and bob.plain is not None and bob.plain.verify(b"fixer")

    result = _invoke(["user", "list", *store, "--json"])
    assert result.exit_code == 0, result.output
    assert [(u["name"], u["mechanisms"]) for u in json.loads(result.output)] == [
        ("alice", ["SCRAM-SHA-256", "SCRAM-SHA-512", PLAIN]), ("bob", [PLAIN])]
    result = _invoke(["user", "list", *store])
    assert result.exit_code == 0 and "alice" in result.output and "bob" in result.output

    # Refusals: too few iterations, unknown mechanism, unknown user; nothing published.
    version = _stored(path).version
    result = _invoke(["user", "add", "carol", "--password-file", str(secret),
                                    "--iterations", "1000", *store])
    assert result.exit_code != 0 and "iterations" in str(result.exception)
    result = _invoke(["user", "add", "carol", "--password-file", str(secret),
                                    "--mechanism", "SCRAM-SHA-1", *store])
    assert result.exit_code != 0 and "SCRAM-SHA-1" in str(result.exception)
    result = _invoke(["user", "remove", "carol", *store])
    assert result.exit_code != 0 and "no user 'carol'" in str(result.exception)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = _invoke(["user", "add", "carol", "--password-file", str(empty),
                                    *store])
    assert result.exit_code != 0 and "empty" in str(result.exception)
    assert _stored(path).version == version

    result = _invoke(["user", "remove", "alice", *store])
    assert result.exit_code == 0, result.output
    result = _invoke(["user", "remove", "bob", *store, "--json"])
    assert json.loads(result.output)["removed"] is True
    assert not _stored(path).users
    assert "users" not in json.loads(path.read_text())  # back to a map without users
