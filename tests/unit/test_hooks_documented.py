"""Plugin discipline (as datasette does): every hook has a test and a docs entry."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from federation import NAME
from federation.plugin import hookspecs

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "plugins.md"

HOOKS = sorted(
    name for name, obj in vars(hookspecs).items()
    if name.startswith(f"{NAME}_") and inspect.isfunction(obj)
)


def test_there_are_hooks() -> None:
    assert "fedkafka_mapping_strategies" in HOOKS
    assert len(HOOKS) >= 9


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test_named_after_it(hook: str) -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert re.search(rf"^def test_{hook}\(", sources, re.MULTILINE), (
        f"no test named test_{hook} under tests/"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    docs = DOCS.read_text()
    assert re.search(rf"^### `?{hook}`?\b", docs, re.MULTILINE), (
        f"docs/plugins.md has no '### {hook}' section"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_is_fully_documented(hook: str) -> None:
    spec = getattr(hookspecs, hook)
    doc = inspect.getdoc(spec) or ""
    for param in inspect.signature(spec).parameters:
        assert f":param {param}:" in doc, f"{hook}: no ':param {param}:'"
    assert "firstresult" in doc, f"{hook}: does not say whether it is firstresult"
    is_firstresult = bool(spec.fedkafka_spec["firstresult"])
    assert doc.count("Not firstresult") == (0 if is_firstresult else 1), hook


def test_docs_mention_no_unknown_hook() -> None:
    documented = set(re.findall(rf"^### `?({NAME}_\w+)`?", DOCS.read_text(), re.MULTILINE))
    assert documented == set(HOOKS)
