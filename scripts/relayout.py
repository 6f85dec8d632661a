#!/usr/bin/env python3
"""The package layout of ADR 0022: move modules and rewrite every reference to them.

Two modes:

    python scripts/relayout.py --apply
        (once, already done on main) ``git mv`` every module to its package and rewrite
        imports, ``python -m`` commands, mock.patch targets, entry points and file paths
        in federation/, plugins/, tests/, scripts/, ansible/, docs/, README.md, .ci/ ...

    .venv/bin/python scripts/relayout.py --rewrite-imports FILE...
        Rewrite only the given files (old module names, moved names such as parse_store,
        paths → new ones), then sort their imports with the venv's ruff. For a branch made
        before the layout change: rebase, then run this on the files it touched or added
        (idempotent: running it twice changes nothing), e.g.
        ``git diff --name-only main... | xargs .venv/bin/python scripts/relayout.py
        --rewrite-imports``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Old module → new module (also the map for ``federation/x.py`` paths).
MOVES: dict[str, str] = {
    # core: the model and what everything shares
    "federation.errors": "federation.core.errors",
    "federation.logs": "federation.core.logs",
    "federation.model": "federation.core.model",
    "federation.credentials": "federation.core.credentials",
    "federation.strategy": "federation.core.strategy",
    # store: the federation map in a metadata store
    "federation.mapstore": "federation.store.mapstore",
    "federation.maplayout": "federation.store.maplayout",
    "federation.election": "federation.store.election",
    # security: TLS, SASL, tokens
    "federation.sasl": "federation.security.sasl",
    "federation.tls": "federation.security.tls",
    "federation.oauthbearer": "federation.security.oauthbearer",
    # plugin: the plugin manager (federation.plugin stays the import for plugin authors)
    "federation.hookspecs": "federation.plugin.hookspecs",
    # clusters: talking to the physical Kafka clusters
    "federation.proxy.upstream": "federation.clusters.upstream",
    "federation.offsets": "federation.clusters.offsets",
    "federation.groupwire": "federation.clusters.groupwire",
    "federation.admin": "federation.clusters.admin",
    "federation.probe": "federation.clusters.probe",
    # controller: the single writer and what it plans
    "federation.controller": "federation.controller.service",
    "federation.intents": "federation.controller.intents",
    "federation.elastic": "federation.controller.elastic",
    "federation.rolls": "federation.controller.rolls",
    "federation.users": "federation.controller.users",
    # name service: its own component
    "federation.nameservice": "federation.nameservice.service",
    # exporter: lag, groups, monitoring
    "federation.exporter": "federation.exporter.service",
    "federation.lag": "federation.exporter.lag",
    "federation.groups": "federation.exporter.groups",
    "federation.monitoring": "federation.exporter.monitoring",
    # cli (tooling)
    "federation.cli": "federation.cli.main",
    "federation.cli_admin": "federation.cli.admin",
    "federation.cli_acl": "federation.cli.acl",
    "federation.cli_group": "federation.cli.group",
    "federation.cli_user": "federation.cli.user",
    # tooling
    "federation.local": "federation.tooling.local",
    "federation.local_secure": "federation.tooling.local_secure",
    "federation.local_monitoring": "federation.tooling.local_monitoring",
    "federation.kafka_dist": "federation.tooling.kafka_dist",
    "federation.procs": "federation.tooling.procs",
    "federation.bench": "federation.tooling.bench",
    "federation.bench_metadata": "federation.tooling.bench_metadata",
    "federation.bench_elastic": "federation.tooling.bench_elastic",
    "federation.fuzz": "federation.tooling.fuzz",
    "federation.demo": "federation.tooling.demo",
    "federation.certs": "federation.tooling.certs",
    "federation.testing": "federation.tooling.testing",
    "federation.testing.clients": "federation.tooling.testing.clients",
    "federation.testing.jwt": "federation.tooling.testing.jwt",
    # built-in plugins: a package that cannot collide in site-packages
    "plugins": "fedkafka_builtin",
    "plugins.acl": "fedkafka_builtin.acl",
    "plugins.auth_default": "fedkafka_builtin.auth_default",
    "plugins.file_backend": "fedkafka_builtin.file_backend",
    "plugins.routing_default": "fedkafka_builtin.routing_default",
    "plugins.sasl_oauthbearer": "fedkafka_builtin.sasl_oauthbearer",
    "plugins.sasl_plain": "fedkafka_builtin.sasl_plain",
    "plugins.sasl_scram": "fedkafka_builtin.sasl_scram",
    "plugins.strategies": "fedkafka_builtin.strategies",
    "plugins.zookeeper_acl": "fedkafka_builtin.zookeeper_acl",
    "plugins.zookeeper_backend": "fedkafka_builtin.zookeeper_backend",
}

#: Files moved whole (module → package): ``federation/plugin.py`` becomes a package's __init__.
FILE_MOVES: dict[str, str] = {"federation/plugin.py": "federation/plugin/__init__.py"}

NEW_PACKAGES = ("core", "store", "security", "clusters", "controller", "nameservice",
                "exporter", "cli", "tooling")

SCAN = ("federation", "plugins", "tests", "scripts", "ansible", "docs", "README.md", ".ci",
        "monitoring", "inventories", "pyproject.toml")
SUFFIXES = {".py", ".md", ".yml", ".yaml", ".j2", ".toml", ".sh", ".cfg", ".ini", ".txt", ""}


def _path(module: str, package: bool = False) -> str:
    if module.startswith("fedkafka_builtin"):
        module = "plugins." + module
    return module.replace(".", "/") + ("/__init__.py" if package else ".py")


def _new_modules() -> set[str]:
    """The new modules: MOVES' targets and whatever the new packages hold now."""
    found = {f"federation.{p.parent.name}.{p.stem}" for name in NEW_PACKAGES
             for p in (ROOT / "federation" / name).glob("*.py")}
    return set(MOVES.values()) | found | {"federation.cli.common", "federation.core.runloop"}


def _patterns() -> list[tuple[re.Pattern[str], str]]:
    """(regex, replacement) for file paths, then module names (longest old name first)."""
    new = _new_modules()
    out: list[tuple[re.Pattern[str], str]] = []
    for old, target in MOVES.items():
        pkg = old in ("federation.testing", "plugins")
        if not pkg:
            out.append((re.compile(rf"(?<![\w/]){re.escape(_path(old))}(?![\w])"), _path(target)))
    out.append((re.compile(r"(?<![\w/])federation/testing/"), "federation/tooling/testing/"))
    out.append((re.compile(r"(?<![\w/])plugins/(?!fedkafka_builtin\b)(?=\w+\.py|__init__)"),
                "plugins/fedkafka_builtin/"))
    for old in sorted(MOVES, key=len, reverse=True):
        target = MOVES[old]
        if old == "plugins":  # a common word: only as an import (see rewrite())
            continue
        # Do not rewrite an already-new name that starts with the old one
        # (federation.controller.intents must not become federation.controller.service.intents).
        children = sorted({n[len(old) + 1:].split(".")[0] for n in new if n.startswith(old + ".")})
        alt = "|".join(map(re.escape, children))
        guard = f"(?!\\.(?:{alt})\\b)(?! import (?:{alt})\\b)" if children else ""
        # ``plugins.strategies`` is also a Plugins attribute: the old built-in package only
        # after ``import``/``from``/``-m`` or a quote.
        ctx = (r"(?:(?<=import )|(?<=from )|(?<=-m )|(?<=[\"'`]))" if old.startswith("plugins.")
               else "")
        out.append((re.compile(rf"{ctx}(?<![\w./-]){re.escape(old)}(?![\w/]){guard}"), target))
    out.append((re.compile(r"^(\s*)import plugins$", re.M), r"\1import fedkafka_builtin"))
    return out


#: Names that moved to another module with the layout change: (module, name) → module
#: (module names after MOVES). Applied to ``from MODULE import NAME[, ...]`` lines.
SYMBOLS: dict[tuple[str, str], str] = {
    **{("federation.cli.admin", n): "federation.cli.common" for n in (
        "T", "out", "err", "STORE_ENV", "StoreOpt", "WorkdirOpt", "JsonOpt", "resolve_store",
        "_backend", "via", "_run", "_print_json", "_load", "_STATE_COLOURS", "_state")},
    ("federation.cli.admin", "parse_store"): "federation.plugin",
    ("federation.proxy.config", "parse_store"): "federation.plugin",
    ("federation.store.mapstore", "changed_topics"): "federation.store.maplayout",
    ("federation.security.tls", "zookeeper_tls"): "fedkafka_builtin.zookeeper_backend",
    ("federation.security.tls", "kazoo_kwargs"): "fedkafka_builtin.zookeeper_backend",
    ("federation.store.election", "FileLockElection"): "fedkafka_builtin.file_backend",
    ("federation.store.election", "FILE_LOCK_NAME"): "fedkafka_builtin.file_backend",
    ("federation.tooling.local", "tail"): "federation.tooling.procs",
    ("federation.cli.main", "_run_loop"): "federation.core.runloop",
    ("federation.proxy.routing", "serving"): "federation.nameservice.service",
}

_SPLIT = {"federation", "plugins", "federation.proxy", "federation.testing",
          *(m for m, _ in SYMBOLS)}
_FROM = re.compile(r"^(?P<ind>[ \t]*)from (?P<pkg>[\w.]+) import "
                   r"(?P<names>\([^)]*\)|[^\n#]*[^\s#])", re.M)


def _split_from(m: re.Match[str]) -> str:
    """``from federation import admin, intents`` → one line per new parent module."""
    ind, pkg, raw = m.group("ind"), m.group("pkg"), m.group("names")
    if pkg not in _SPLIT:
        return m.group(0)
    names = [n.strip() for n in raw.strip().strip("()").replace("\n", " ").split(",")
             if n.strip()]
    groups: dict[str, list[str]] = {}
    moved = False
    for n in names:
        base = n.split(" as ")[0].strip()
        full = MOVES.get(f"{pkg}.{base}")
        if full is not None:
            parent, _, leaf = full.rpartition(".")
            alias = n.split(" as ")[1].strip() if " as " in n else base
            item = leaf if leaf == alias else f"{leaf} as {alias}"
            moved = True
        elif (pkg, base) in SYMBOLS:
            parent, item, moved = SYMBOLS[(pkg, base)], n, True
        else:
            parent, item = pkg, n
        groups.setdefault(parent, []).append(item)
    if not moved:
        return m.group(0)
    return "\n".join(f"{ind}from {p} import {', '.join(items)}" for p, items in groups.items())


def rewrite(text: str) -> str:
    for rx, repl in _PATTERNS:
        text = rx.sub(repl, text)
    return _FROM.sub(_split_from, text)


_PATTERNS = _patterns()


def rewrite_files(files: list[Path]) -> list[Path]:
    changed = []
    for f in files:
        try:
            old = f.read_text()
        except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
            continue
        new = rewrite(old)
        if new != old:
            f.write_text(new)
            changed.append(f)
    return changed


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", *SCAN], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return [ROOT / p for p in out if Path(p).suffix in SUFFIXES and p != "scripts/relayout.py"]


def apply() -> None:
    def git_mv(src: str, dst: str) -> None:
        (ROOT / dst).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "mv", src, dst], cwd=ROOT, check=True)

    for pkg in NEW_PACKAGES:
        init = ROOT / "federation" / pkg / "__init__.py"
        if not (ROOT / "federation" / f"{pkg}.py").exists() or pkg in ("controller", "nameservice",
                                                                         "exporter", "cli"):
            init.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in FILE_MOVES.items():
        git_mv(src, dst)
    for old, new in MOVES.items():
        if old in ("federation.testing", "plugins"):
            continue
        src = _path(old, old == "federation.testing")
        dst = _path(new)
        if old.startswith("federation.testing"):
            src, dst = _path(old), _path(new)
        git_mv(src, dst)
    git_mv("federation/testing/__init__.py", "federation/tooling/testing/__init__.py")
    git_mv("plugins/__init__.py", "plugins/fedkafka_builtin/__init__.py")
    for pkg in NEW_PACKAGES:
        init = ROOT / "federation" / pkg / "__init__.py"
        if not init.exists():
            init.write_text(f'"""{pkg}: see docs/adr/0022-package-layout.md."""\n')
            subprocess.run(["git", "add", str(init)], cwd=ROOT, check=True)
    changed = rewrite_files(_tracked())
    _sort_imports(changed)
    print(f"moved {len(MOVES)} modules; rewrote {len(changed)} files")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--apply", action="store_true", help="move the modules and rewrite the repo")
    g.add_argument("--rewrite-imports", nargs="+", metavar="FILE", type=Path,
                   help="rewrite old module names and paths in these files only")
    args = ap.parse_args(argv)
    if args.apply:
        apply()
    else:
        changed = rewrite_files(args.rewrite_imports)
        for f in changed:
            print(f"rewrote {f}")
        _sort_imports(changed)
    return 0


def _sort_imports(files: list[Path]) -> None:
    """Re-sort the rewritten files' imports (ruff's isort rule) where ruff is at hand."""
    ruff = Path(sys.executable).with_name("ruff")
    py = [str(f.resolve()) for f in files if f.suffix == ".py"]
    if py and ruff.exists():
        subprocess.run([str(ruff), "check", "--fix", "-q", "--select", "I", *py], cwd=ROOT,
                       check=False)


if __name__ == "__main__":
    sys.exit(main())
