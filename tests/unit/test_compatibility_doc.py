"""docs/compatibility.md lists every Kafka API key with the versions CAPS serves."""

from __future__ import annotations

import re
from pathlib import Path

from kio.schema.index import api_key_map

from federation.protocol.versions import clamp
from federation.proxy.server import CAPS

DOC = Path(__file__).resolve().parents[2] / "docs" / "compatibility.md"
DASH = "\u2013"  # the en dash of "3\u201312"
ROW = re.compile(r"^\|\s*(\d+)(?:" + DASH + r"(\d+))?\s*\|[^|]*\|\s*([^|]+?)\s*\|")


def documented() -> dict[int, str]:
    """API key → the 'Served versions' cell of its row."""
    out: dict[int, str] = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            first, last = int(m.group(1)), int(m.group(2) or m.group(1))
            for key in range(first, last + 1):
                assert key not in out, f"API key {key} has two rows"
                out[key] = m.group(3)
    return out


def served() -> dict[int, str]:
    out = {}
    for key, (lo, hi) in CAPS.items():
        rng = clamp(key, lo, hi)
        if rng is not None:
            out[key] = f"{rng[0]}{DASH}{rng[1]}"
    return out


def test_every_api_key_has_a_row() -> None:
    assert sorted(set(api_key_map) - set(documented())) == []


def test_served_versions_are_those_of_caps() -> None:
    rows = documented()
    expected = served()
    assert {k: rows.get(k) for k in expected} == expected
    assert {k: v for k, v in rows.items() if k not in expected} == {
        k: "\u2014" for k in rows if k not in expected}
