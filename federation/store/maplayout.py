"""The incremental map layout (format 2): a small versioned index and immutable documents.

Pure logic, no I/O: the backends (``fedkafka_builtin.file_backend``,
``fedkafka_builtin.zookeeper_backend``)
store bytes and this module says which bytes. See docs/adr/0016-incremental-map-layout.md.

A map is stored as

- an **index** (``index_bytes``), the only mutable node, replaced atomically under a
  compare-and-set on the map version::

      {"format": 2, "version": 42, "shards": 512, "base": "b.40.1f2e3d4c",
       "docs": ["s0000.41.9a8b7c6d", null, ...], "retired": [["s0000.39.…", 41, 1733…], ...]}

- a **base document** (everything but the topics: clusters, pools, routing, ACLs, users…),
- one **shard document** per non-empty shard: the topics whose name hashes
  (CRC-32 mod ``shards``) to it, as ``FederationMap.to_dict`` writes them.

Documents are immutable: a change writes new documents under new names
(``<kind>.<map version>.<random token>``) and then the index that names them, so a reader
that read an index finds exactly the documents it names (or, if they were garbage
collected meanwhile, re-reads a newer index): it never sees half a change. Documents
replaced by a change are listed in ``retired`` and deleted by a later change once
:data:`RETIRE_GRACE_S` have passed.

A change writes the changed shards only (about 20 topics at 10,000 topics), and a reader
fetches and parses only the documents whose name changed in the index, whatever number
of versions it missed (a gap is caught up by the same diff).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
import uuid
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.core.model import _TOPIC_NAME, MAP_FORMAT, FederationMap, LogicalTopic
from federation.store.mapstore import MapFormatError

__all__ = [
    "DEFAULT_SHARDS",
    "LAYOUT_FORMAT",
    "MAX_NODE_BYTES",
    "Index",
    "LayoutError",
    "MapState",
    "Plan",
    "changed_topics",
    "parse_root",
    "shard_of",
    "valid_doc_name",
]

#: ``format`` of the index and its documents.
LAYOUT_FORMAT = 2
#: Shards of a new layout: ~20 topics (~25 KB) per shard at 10,000 topics.
DEFAULT_SHARDS = 512
_NO_TOPIC_ID = uuid.UUID(int=0)
#: The largest node either backend writes (ZooKeeper's default jute.maxbuffer is 1 MiB - 1).
MAX_NODE_BYTES = 1024 * 1024 - 1
#: Seconds a replaced document stays readable (for readers holding an older index).
RETIRE_GRACE_S = 30.0
#: At most this many retired documents are remembered; beyond, the oldest are deleted.
MAX_RETIRED = 4096

_DOC_NAME = re.compile(r"(?:b|s[0-9]{4,6})\.[0-9]{1,19}\.[0-9a-f]{8}")
_INDEX_KEYS = frozenset({"format", "version", "shards", "base", "docs", "retired"})


class LayoutError(MapFormatError):
    """A stored index or document cannot be read (it is refused, never half-applied)."""


def shard_of(name: str, shards: int) -> int:
    """The shard of topic ``name`` (stable: CRC-32 of the UTF-8 name)."""
    return zlib.crc32(name.encode()) % shards


def valid_doc_name(name: str) -> bool:
    """Whether ``name`` is a document name this layout writes (no path tricks)."""
    return _DOC_NAME.fullmatch(name) is not None


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


# -- the index ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Index:
    """The versioned index of a stored map."""

    version: int
    shards: int
    base: str
    docs: tuple[str | None, ...]  #: per shard: its document, None for an empty shard
    #: documents replaced by a change: (name, the version that replaced it, unix time)
    retired: tuple[tuple[str, int, float], ...] = ()

    def to_bytes(self) -> bytes:
        return _dumps({"format": LAYOUT_FORMAT, "version": self.version, "shards": self.shards,
                       "base": self.base, "docs": list(self.docs),
                       "retired": [list(r) for r in self.retired]})

    def names(self) -> set[str]:
        """Every document this index refers to."""
        return {self.base, *(d for d in self.docs if d is not None)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Index:
        unknown = set(data) - _INDEX_KEYS
        if unknown:
            raise LayoutError(f"map index: unknown keys {sorted(unknown)}")
        try:
            version, shards, base = data["version"], data["shards"], data["base"]
            docs = tuple(data["docs"])
            retired = tuple((str(n), int(v), float(t)) for n, v, t in data.get("retired", ()))
        except (KeyError, TypeError, ValueError) as e:
            raise LayoutError(f"malformed map index: {type(e).__name__}: {e}") from None
        if not isinstance(version, int) or version < 0:
            raise LayoutError(f"map index: version must be an integer >= 0, got {version!r}")
        if not isinstance(shards, int) or not 1 <= shards <= 100_000 or len(docs) != shards:
            raise LayoutError(f"map index: {len(docs)} docs for {shards!r} shards")
        for name in (base, *docs, *(r[0] for r in retired)):
            if name is not None and (not isinstance(name, str) or not valid_doc_name(name)):
                raise LayoutError(f"map index: bad document name {name!r}")
        return cls(version, shards, base, docs, retired)


def parse_root(raw: bytes | str) -> Index | FederationMap:
    """Parse what is stored at the map's location: a format-2 :class:`Index`, or a whole
    format-1 map (the layout before this one; validated).

    :raises LayoutError: naming what is wrong.
    """
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise LayoutError(f"map index is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise LayoutError("map index is not a JSON object")
    fmt = data.get("format")
    if fmt == LAYOUT_FORMAT:
        return Index.from_dict(data)
    if fmt == MAP_FORMAT:
        try:
            fmap = FederationMap.from_dict(data)
            fmap.validate()
        except ValueError as e:
            raise LayoutError(str(e)) from None
        return fmap
    raise LayoutError(f"unsupported map format {fmt!r} (this build reads {MAP_FORMAT} and "
                      f"{LAYOUT_FORMAT})")


# -- documents ---------------------------------------------------------------------------


def encode_base(fmap: FederationMap) -> bytes:
    """The base document: the map without topics and version."""
    data = dataclasses.replace(fmap, topics={}).to_dict()
    del data["topics"], data["version"], data["format"]
    return _dumps({"format": LAYOUT_FORMAT, "kind": "base", "map": data})


def encode_shard(shard: int, topics: Iterable[LogicalTopic]) -> bytes:
    topic_dicts = FederationMap(0, topics={t.name: t for t in topics}).to_dict()["topics"]
    return _dumps({"format": LAYOUT_FORMAT, "kind": "shard", "shard": shard,
                   "topics": topic_dicts})


def _digest(topic: Any) -> bytes:
    """A topic's fingerprint: BLAKE2b-128 of its canonical JSON (as the writer wrote it)."""
    return hashlib.blake2b(_dumps(topic), digest_size=16).digest()


def _load_doc(name: str, raw: bytes, kind: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise LayoutError(f"map document {name}: not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != LAYOUT_FORMAT or (
            data.get("kind") != kind):
        raise LayoutError(f"map document {name}: not a format-{LAYOUT_FORMAT} {kind} document")
    return data


def decode_base(name: str, raw: bytes) -> FederationMap:
    data = _load_doc(name, raw, "base")
    body = data.get("map")
    if not isinstance(body, dict):
        raise LayoutError(f"map document {name}: no map")
    try:
        return FederationMap.from_dict({**body, "format": MAP_FORMAT, "version": 0,
                                        "topics": {}})
    except ValueError as e:
        raise LayoutError(f"map document {name}: {e}") from None


def decode_shard(name: str, raw: bytes, shard: int, shards: int,
                 known: Mapping[str, LogicalTopic] | None = None,
                 known_digests: Mapping[str, bytes] | None = None,
                 digests_out: dict[str, bytes] | None = None) -> dict[str, LogicalTopic]:
    """The topics of a shard document.

    A topic whose content's digest (computed here, from what the document holds) equals
    ``known_digests[topic]`` is not decoded again: ``known[topic]`` (the reader's current
    object) is returned for it. Each topic's digest is stored in ``digests_out``.
    """
    data = _load_doc(name, raw, "shard")
    topics = data.get("topics")
    if data.get("shard") != shard or not isinstance(topics, dict):
        raise LayoutError(f"map document {name}: not the document of shard {shard}")
    for topic_name in topics:
        if shard_of(topic_name, shards) != shard:
            raise LayoutError(f"map document {name}: topic {topic_name!r} belongs to shard "
                              f"{shard_of(topic_name, shards)}, not {shard}")
    digests = {topic_name: _digest(t) for topic_name, t in topics.items()}
    kept: dict[str, LogicalTopic] = {}
    if known is not None and known_digests:
        for topic_name, digest in digests.items():
            old = known.get(topic_name)
            if old is not None and known_digests.get(topic_name) == digest:
                kept[topic_name] = old
    todo = topics if not kept else {k: v for k, v in topics.items() if k not in kept}
    try:
        parsed = FederationMap.from_dict({"format": MAP_FORMAT, "version": 0, "clusters": {},
                                          "topics": todo})
    except ValueError as e:
        raise LayoutError(f"map document {name}: {e}") from None
    if digests_out is not None:
        digests_out.update(digests)
    if not kept:
        return dict(parsed.topics)
    return {n: kept[n] if n in kept else parsed.topics[n] for n in topics}


# -- what changed between two maps ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Delivered:
    #: weakly: the maps a reader no longer holds are freed at once, not kept young for the
    #: cyclic collector to scan (each holds ~10,000-entry dicts: 2-9 ms per collection)
    fmap: weakref.ref[FederationMap]
    since: int
    topics: frozenset[str]
    base: bool


_recent: deque[_Delivered] = deque(maxlen=16)
_recent_lock = threading.Lock()


def _remember(fmap: FederationMap, since: int, topics: frozenset[str], base: bool) -> None:
    with _recent_lock:
        _recent.append(_Delivered(weakref.ref(fmap), since, topics, base))


def changed_topics(old: FederationMap, new: FederationMap) -> tuple[frozenset[str], bool]:
    """(names of the topics that differ, whether anything besides topics may differ).

    Free for a map a backend of this layout delivered after ``old`` (it remembers what it
    applied); otherwise an identity scan of the topics (unchanged topics are shared
    between map versions), which costs about a millisecond at 10,000 topics.
    """
    with _recent_lock:
        for d in reversed(_recent):
            if d.fmap() is new and d.since == old.version:
                return d.topics, d.base
    names = {n for n, t in new.topics.items() if old.topics.get(n) is not t}
    if len(new.topics) - len(names & (new.topics.keys() - old.topics.keys())) != len(old.topics):
        names |= old.topics.keys() - new.topics.keys()
    base = any(getattr(old, f) is not getattr(new, f) and getattr(old, f) != getattr(new, f)
               for f in _BASE_FIELDS)
    return frozenset(names), base


#: Every field of a map but its version and topics (new fields are base fields).
_BASE_FIELDS = tuple(f.name for f in dataclasses.fields(FederationMap)
                     if f.init and f.name not in ("version", "topics"))


# -- incremental validation ------------------------------------------------------------------


def _physical_topics(topic: LogicalTopic) -> set[str]:
    return {s.topic for p in topic.partitions for s in p.segments}


def validate_topics(before: FederationMap, fmap: FederationMap, names: Iterable[str],
                    owners: Mapping[str, Iterable[str]]) -> None:
    """Validate topics ``names`` of ``fmap``, all else being unchanged from a valid map.

    The checks :meth:`FederationMap.validate` makes for topics, restricted to these
    topics and those sharing a physical topic with them (``owners``: physical topic →
    logical topics with segments on it, in the valid map).

    :raises ValueError: naming the first inconsistency.
    """
    ids: dict[uuid.UUID, str] = {}
    probe_topics: dict[str, LogicalTopic] = {}
    touched: set[str] = set()
    for name in names:
        topic = fmap.topics.get(name)
        if topic is None:
            continue
        if topic.name != name:
            raise ValueError(f"topic stored under key {name!r} is named {topic.name!r}")
        topic.validate()
        holders = [h.name for h in (fmap.topic_by_id(topic.topic_id),
                                    before.topic_by_id(topic.topic_id))
                   if h is not None and h.name != name]
        if topic.topic_id in ids:
            holders.append(ids[topic.topic_id])
        ids[topic.topic_id] = name
        for other in holders:
            if (t := fmap.topics.get(other)) is not None and t.topic_id == topic.topic_id:
                raise ValueError(f"topics {other!r} and {name!r} share id {topic.topic_id}")
        physical = fmap.physical_topic_name(name)
        if not _TOPIC_NAME.fullmatch(physical):
            raise ValueError(f"topic {name!r}: physical name {physical!r} is illegal")
        for partition in topic.partitions:
            if partition.fence is not None and partition.fence not in fmap.clusters:
                raise ValueError(f"topic {name!r} partition {partition.index}: fenced "
                                 f"for unknown cluster {partition.fence!r}")
            for segment in partition.segments:
                if segment.cluster not in fmap.clusters:
                    raise ValueError(f"topic {name!r} partition {partition.index}: segment on "
                                     f"unknown cluster {segment.cluster!r}")
                if segment.cluster == fmap.coordination_cluster and segment.topic in fmap.topics:
                    raise ValueError(
                        f"physical topic {segment.topic!r} on coordination cluster "
                        f"{segment.cluster!r} collides with a logical (shadow) topic name")
        # A new logical name may collide with another topic's physical topic.
        for owner in owners.get(name, ()):
            t = fmap.topics.get(owner)
            if t is not None and any(s.cluster == fmap.coordination_cluster and s.topic == name
                                     for p in t.partitions for s in p.segments):
                raise ValueError(f"physical topic {name!r} on coordination cluster "
                                 f"{fmap.coordination_cluster!r} collides with a logical "
                                 "(shadow) topic name")
        probe_topics[name] = topic
        touched |= _physical_topics(topic)
    for ptopic in touched:
        for owner in owners.get(ptopic, ()):
            t = fmap.topics.get(owner)
            if t is not None:
                probe_topics.setdefault(owner, t)
    _check_overlaps(probe_topics.values(), touched)


def _check_overlaps(topics: Iterable[LogicalTopic], only: set[str]) -> None:
    ranges: dict[tuple[str, str, int], list[tuple[int, int | None, str]]] = {}
    for topic in topics:
        for partition in topic.partitions:
            for segment in partition.segments:
                if segment.topic not in only:
                    continue
                place = (segment.cluster, segment.topic, segment.partition)
                ranges.setdefault(place, []).append(
                    (segment.physical_start, segment.physical_end,
                     f"{topic.name}[{partition.index}]"))
    for (cluster, ptopic, ppartition), spans in ranges.items():
        spans.sort(key=lambda s: s[0])
        for (_, end, owner), (start, _, other) in itertools.pairwise(spans):
            if end is None or end > start:
                raise ValueError(f"{owner} and {other} overlap on physical partition "
                                 f"{cluster}/{ptopic}/{ppartition}")


def _owners_of(topics: Iterable[LogicalTopic]) -> dict[str, set[str]]:
    owners: dict[str, set[str]] = {}
    for topic in topics:
        for ptopic in _physical_topics(topic):
            owners.setdefault(ptopic, set()).add(topic.name)
    return owners


# -- a map and how it is stored ----------------------------------------------------------------


@dataclass(slots=True)
class Plan:
    """What to write for one change (see :meth:`MapState.plan`)."""

    index: Index
    index_bytes: bytes
    docs: dict[str, bytes]  #: new documents, written before the index
    delete: list[str]  #: retired documents whose grace has passed (after the index)
    state: MapState  #: the writer's state once the index is published
    topics: frozenset[str]  #: topics changed
    base: bool  #: whether the base document changed


@dataclass(slots=True)
class MapState:
    """A map as stored in this layout: the map, its index, each shard's topic names.

    Immutable in use (``apply`` and ``plan`` return new states). ``index`` is None for a
    map read from the format-1 layout (the next publish writes every document).
    """

    fmap: FederationMap
    index: Index | None
    shard_topics: dict[int, frozenset[str]] = field(default_factory=dict)
    base_bytes: bytes | None = None
    _owners: dict[str, set[str]] | None = None
    #: topic → the digest of its stored content (see decode_shard; empty for a writer's state)
    topic_digests: dict[str, bytes] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return self.fmap.version

    def owners(self) -> dict[str, set[str]]:
        """Physical topic → logical topics with segments on it (built once, then kept)."""
        if self._owners is None:
            self._owners = _owners_of(self.fmap.topics.values())
        return self._owners

    def _owners_after(self, fmap: FederationMap, names: Iterable[str]) -> dict[str, set[str]]:
        if self._owners is None:
            return _owners_of(fmap.topics.values())
        owners = dict(self._owners)  # sets shared until changed (copy on write)
        copied: set[str] = set()

        def mutable(ptopic: str) -> set[str]:
            if ptopic not in copied:
                owners[ptopic] = set(owners.get(ptopic, ()))
                copied.add(ptopic)
            return owners[ptopic]

        for name in names:
            before = self.fmap.topics.get(name)
            if before is not None:
                for ptopic in _physical_topics(before):
                    mutable(ptopic).discard(name)
            after = fmap.topics.get(name)
            if after is not None:
                for ptopic in _physical_topics(after):
                    mutable(ptopic).add(name)
        return owners

    # -- readers -----------------------------------------------------------------------

    @classmethod
    def from_legacy(cls, fmap: FederationMap) -> MapState:
        """A whole map read from the format-1 layout (already validated)."""
        fmap.topic_by_id(_NO_TOPIC_ID)  # build its id index here, off any event loop
        return cls(fmap, None)

    def needed(self, index: Index) -> list[str]:
        """The documents to fetch to go from this state to ``index``."""
        if self.index is None or self.index.shards != index.shards:
            return sorted(index.names())
        out = [] if index.base == self.index.base else [index.base]
        out += [d for d, mine in zip(index.docs, self.index.docs, strict=True)
                if d is not None and d != mine]
        return out

    @classmethod
    def build(cls, index: Index, docs: Mapping[str, bytes]) -> MapState:
        """The whole map of ``index`` from its documents (validated)."""
        base = decode_base(index.base, docs[index.base])
        topics: dict[str, LogicalTopic] = {}
        shard_topics: dict[int, frozenset[str]] = {}
        digests: dict[str, bytes] = {}
        for i, name in enumerate(index.docs):
            if name is None:
                continue
            part = decode_shard(name, docs[name], i, index.shards, digests_out=digests)
            topics.update(part)
            shard_topics[i] = frozenset(part)
        fmap = dataclasses.replace(base, version=index.version, topics=topics)
        try:
            fmap.validate()
        except ValueError as e:
            raise LayoutError(f"map version {index.version}: {e}") from None
        state = cls(fmap, index, shard_topics, docs[index.base], topic_digests=digests)
        state.owners()  # now, off any event loop, rather than at the first change
        fmap.topic_by_id(_NO_TOPIC_ID)  # its id index too (the first change validates by id)
        return state

    def apply(self, index: Index, docs: Mapping[str, bytes]) -> MapState:
        """The state of ``index``, fetching only ``self.needed(index)`` in ``docs``.

        Validates what changed (the whole map if the base document changed).

        :raises LayoutError: if a document or the resulting map is invalid.
        """
        if self.index is None or self.index.shards != index.shards:
            return MapState.build(index, docs)
        old = self.fmap
        base_changed = index.base != self.index.base
        shard_topics = dict(self.shard_topics)
        digests = self.topic_digests
        new_digests: dict[str, bytes] = {}
        updates: dict[str, LogicalTopic | None] = {}
        for i, (name, mine) in enumerate(zip(index.docs, self.index.docs, strict=True)):
            if name == mine:
                continue
            before = shard_topics.pop(i, frozenset())
            part = {} if name is None else decode_shard(name, docs[name], i, index.shards,
                                                        old.topics, digests, new_digests)
            for topic_name, topic in part.items():
                previous = old.topics.get(topic_name)
                if previous is None or previous != topic:  # else: keep sharing it
                    updates[topic_name] = topic
            for topic_name in before - part.keys():
                updates[topic_name] = None
            if part:
                shard_topics[i] = frozenset(part)
        changed = set(updates)
        if base_changed:
            base = decode_base(index.base, docs[index.base])
            topics = dict(old.topics)
            for topic_name, update in updates.items():
                if update is None:
                    topics.pop(topic_name, None)
                else:
                    topics[topic_name] = update
            fmap = dataclasses.replace(base, version=index.version, topics=topics)
        else:
            fmap = old.with_topics(updates).with_version(index.version)
        owners = self._owners_after(fmap, changed)
        try:
            if base_changed:
                fmap.validate()
            else:
                validate_topics(old, fmap, changed, owners)
        except ValueError as e:
            raise LayoutError(f"map version {index.version}: {e}") from None
        if updates or new_digests:
            digests = dict(digests)
            for topic_name, update in updates.items():
                if update is None:
                    digests.pop(topic_name, None)
            digests.update(new_digests)
        state = MapState(fmap, index, shard_topics,
                         docs[index.base] if base_changed else self.base_bytes, owners,
                         topic_digests=digests)
        _remember(fmap, old.version, frozenset(changed), base_changed)
        return state

    # -- writers -----------------------------------------------------------------------

    def plan(self, new: FederationMap, *, shards: int = DEFAULT_SHARDS,
             now: float | None = None, token: str | None = None) -> Plan:
        """The documents and index that store ``new`` as version ``self.version + 1``.

        Only what differs from this state is written. ``new`` is validated: the topics
        that changed, or all of it if anything besides topics changed.

        :raises ValueError: if ``new`` is invalid.
        :raises LayoutError: if a document would exceed :data:`MAX_NODE_BYTES`.
        """
        version = self.version + 1
        now = time.time() if now is None else now
        token = token or secrets.token_hex(4)
        fmap = new.with_version(version)
        base_bytes = encode_base(fmap)
        legacy = self.index is None
        n_shards = shards if legacy else self.index.shards  # type: ignore[union-attr]
        if legacy:
            changed = set(fmap.topics) | set(self.fmap.topics)
        else:
            changed = set(changed_topics(self.fmap, fmap)[0])
            for name in list(changed):  # equal but not identical: not a change
                a, b = self.fmap.topics.get(name), fmap.topics.get(name)
                if a is not None and b is not None and a == b:
                    changed.discard(name)
        base_changed = legacy or base_bytes != self.base_bytes
        owners = None if legacy else self._owners_after(fmap, changed)
        if base_changed or owners is None:
            fmap.validate()
        else:
            validate_topics(self.fmap, fmap, changed, owners)
        old_docs: list[str | None] = ([None] * n_shards if legacy
                                      else list(self.index.docs))  # type: ignore[union-attr]
        docs_out: dict[str, bytes] = {}
        shard_topics = {} if legacy else dict(self.shard_topics)
        by_shard: dict[int, set[str]] = {}
        for name in changed:
            by_shard.setdefault(shard_of(name, n_shards), set()).add(name)
        if legacy:
            by_shard = {i: set() for i in range(n_shards)}
            for name in fmap.topics:
                by_shard.setdefault(shard_of(name, n_shards), set()).add(name)
        new_docs = list(old_docs)
        superseded: list[str] = []
        for i, names in by_shard.items():
            members = (set(shard_topics.get(i, frozenset())) | names)
            members = {n for n in members if n in fmap.topics}
            if old_docs[i] is not None:
                superseded.append(old_docs[i])  # type: ignore[arg-type]
            if not members:
                new_docs[i] = None
                shard_topics.pop(i, None)
                continue
            doc_name = f"s{i:04d}.{version}.{token}"
            raw = encode_shard(i, (fmap.topics[n] for n in sorted(members)))
            if len(raw) > MAX_NODE_BYTES:
                raise LayoutError(f"shard {i} would hold {len(raw):,} bytes, more than a "
                                  f"store node's {MAX_NODE_BYTES:,}; use more shards")
            docs_out[doc_name] = raw
            new_docs[i] = doc_name
            shard_topics[i] = frozenset(members)
        if base_changed:
            base_name = f"b.{version}.{token}"
            if len(base_bytes) > MAX_NODE_BYTES:
                raise LayoutError(f"the base document would hold {len(base_bytes):,} bytes, "
                                  f"more than a store node's {MAX_NODE_BYTES:,}")
            docs_out[base_name] = base_bytes
            if not legacy:
                superseded.append(self.index.base)  # type: ignore[union-attr]
        else:
            base_name = self.index.base  # type: ignore[union-attr]
        retired = list(self.index.retired) if self.index is not None else []
        retired += [(name, version, now) for name in superseded]
        delete = [r[0] for r in retired if r[2] <= now - RETIRE_GRACE_S and r[1] < version]
        deleted = set(delete)
        keep = [r for r in retired if r[0] not in deleted]
        if len(keep) > MAX_RETIRED:
            delete += [r[0] for r in keep[:-MAX_RETIRED]]
            keep = keep[-MAX_RETIRED:]
        index = Index(version, n_shards, base_name, tuple(new_docs), tuple(keep))
        index_bytes = index.to_bytes()
        if len(index_bytes) > MAX_NODE_BYTES:
            raise LayoutError(f"the map index would hold {len(index_bytes):,} bytes")
        state = MapState(fmap, index, shard_topics, base_bytes, owners)
        return Plan(index, index_bytes, docs_out, delete, state, frozenset(changed),
                    base_changed)


def fetch_and_apply(state: MapState | None, read_root: Callable[[], bytes | None],
                    read_docs: Callable[[list[str]], Mapping[str, bytes | None]],
                    *, attempts: int = 5) -> MapState | None:
    """Bring ``state`` to the stored map: read the index, then the documents it needs.

    A document missing (garbage collected after a newer index replaced the one read)
    makes it read the index again.

    :returns: the new state (``state`` itself if the store holds no newer map), or None
        if the store is empty.
    :raises LayoutError: if what is stored cannot be read.
    """
    for _ in range(attempts):
        raw = read_root()
        if raw is None:
            return state
        root = parse_root(raw)
        if isinstance(root, FederationMap):
            if state is not None and root.version <= state.version:
                return state
            return MapState.from_legacy(root)
        if state is not None and root.version <= state.version and state.index is not None:
            return state
        base = state if state is not None and state.index is not None else None
        wanted = base.needed(root) if base is not None else sorted(root.names())
        docs = read_docs(wanted)
        missing = [n for n in wanted if docs.get(n) is None]
        if missing:
            continue  # replaced and collected meanwhile: a newer index names others
        present = {n: v for n, v in docs.items() if v is not None}
        return base.apply(root, present) if base is not None else MapState.build(root, present)
    raise LayoutError(f"map documents kept disappearing while reading {attempts} indexes "
                      "(a writer collecting garbage faster than this reader reads?)")
