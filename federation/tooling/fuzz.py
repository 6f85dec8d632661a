"""``fedkafka fuzz``: random and mutated requests against a live proxy, over sockets.

Many connections in parallel each send a few frames and then a probe (an ApiVersions
request with a correlation id of its own): the probe must be answered, or the proxy must
close the connection, within ``hang_timeout``; anything else is a hang. Frames are

* **valid** requests of every API key and version the proxy advertises, built from kio's
  schemas with random field values (names from a small pool: the ``--topic`` targets and
  random ``fuzz-`` names; never the canary's topic), encoded by
  :mod:`federation.protocol.codec`;
* **mutated** valid requests: bit flips, byte changes, truncation, trailing bytes, huge
  array counts, another API key or version, spliced frames, a wrong length prefix;
* **random** frames: random bodies, half of them behind a plausible request header.

A share of the connections first authenticates with SASL (PLAIN or SCRAM, when
credentials are given); the SASL requests themselves are fuzzed too. Admin requests that
change things are generated with ``validate_only`` set and destructive ones with random
names only, so a run leaves the federation's data alone (a mutation may still clear
``validate_only``: a run may create a few ``fuzz-`` topics of one or two partitions).

Meanwhile a **canary** (a real librdkafka client, through the same proxy) produces and
consumes rounds of records and checks every one of them; the proxy's liveness is checked
with ApiVersions every few seconds and, given its pid, its process and memory (RSS) are
watched. The report: frames sent, connections the proxy closed, hangs, proxy crashes,
internal errors (from the proxy's metrics, given their URL), canary rounds and failures,
and the proxy's RSS. A run passes with no crash, hang, internal error or canary failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import random
import signal
import struct
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import crc32c
import typer
from kio.index import load_request_schema
from kio.serial._introspect import (
    EntityField,
    EntityTupleField,
    PrimitiveField,
    PrimitiveTupleField,
    classify_field,
    get_field_tag,
    get_schema_field_type,
    is_optional,
)

from federation.core.errors import FedKafkaError
from federation.protocol import codec
from federation.protocol.versions import API_NAMES, ApiKey

log = logging.getLogger("fedkafka.fuzz")

__all__ = ["FramePool", "FuzzOptions", "FuzzReport", "mutate", "proxy_memory", "run_fuzz"]

PROBE_BASE = 0x7E000000  #: probe correlation ids: PROBE_BASE + connection number
MUTATIONS = ("bitflip", "bytes", "truncate", "trailing", "bigcount", "version", "key",
             "splice", "short_length", "long_length")
#: requests whose names are always random: those that change or delete things (never a
#: target topic), and JoinGroup (a join into a group with members waits for them to rejoin
#: or time out: a legitimate wait, not a hang)
RANDOM_NAMES = frozenset({ApiKey.DELETE_TOPICS, ApiKey.DELETE_RECORDS, ApiKey.DELETE_GROUPS,
                          ApiKey.OFFSET_DELETE, ApiKey.CREATE_PARTITIONS, ApiKey.ALTER_CONFIGS,
                          ApiKey.INCREMENTAL_ALTER_CONFIGS, ApiKey.CREATE_TOPICS,
                          ApiKey.JOIN_GROUP})
_INT_RANGES = {"int8": 7, "int16": 15, "int32": 31, "int64": 63}
_HEAD = struct.Struct(">i")


# -- valid requests --------------------------------------------------------------------------


def record_batch(rng: random.Random, count: int = 2) -> bytes:
    """A valid magic-2 record batch of ``count`` small records (CRC-32C included)."""
    records = bytearray()
    for i in range(count):
        value = rng.randbytes(rng.randint(0, 24))
        body = (b"\x00" + _varint(0) + _varint(i) + _varint(-1) + _varint(len(value))
                + value + _varint(0))
        records += _varint(len(body)) + body
    now = int(time.time() * 1000)
    after_crc = struct.pack(">hiqqqhii", 0, count - 1, now, now, -1, -1, -1, count) + records
    crc = crc32c.crc32c(after_crc)
    head = struct.pack(">qiibI", 0, 9 + len(after_crc), -1, 2, crc)
    return head + after_crc


def _varint(value: int) -> bytes:
    zz = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zz >= 0x80:
        out.append(zz & 0x7F | 0x80)
        zz >>= 7
    out.append(zz)
    return bytes(out)


@dataclass
class _Context:
    rng: random.Random
    api_key: int
    names: tuple[str, ...]  # topic/group names a request may use


def _name(ctx: _Context) -> str:
    if ctx.names and ctx.api_key not in RANDOM_NAMES and ctx.rng.random() < 0.6:
        return ctx.rng.choice(ctx.names)
    return f"fuzz-{ctx.rng.getrandbits(32):08x}"


def _int(ctx: _Context, kafka_type: str, name: str) -> int:
    rng = ctx.rng
    bits = _INT_RANGES[kafka_type]
    if name in ("partition_index", "partition", "index"):
        return rng.choice([0, 0, 1, 2, -1, rng.randint(0, 100)])
    if name in ("num_partitions", "count"):
        return rng.choice([-1, 1, 2])
    if name == "replication_factor":
        return rng.choice([-1, 1])
    if name == "acks":
        return rng.choice([-1, 0, 1])
    if name in ("max_bytes", "partition_max_bytes"):
        return rng.choice([0, 1, 1024, 65536])
    pick = rng.random()
    if pick < 0.5:
        return rng.choice([-1, 0, 1, 2])
    if pick < 0.8:
        return rng.randint(0, min(1000, (1 << bits) - 1))
    return rng.randint(-(1 << bits), (1 << bits) - 1)


def _primitive(ctx: _Context, kafka_type: str, name: str, optional: bool) -> Any:
    rng = ctx.rng
    if optional and rng.random() < 0.15:
        return None
    if kafka_type in _INT_RANGES:
        return _int(ctx, kafka_type, name)
    if kafka_type == "bool":
        if name == "validate_only":
            return True
        if name == "allow_auto_topic_creation":
            return False  # (Kafka's default is on: random names would become topics)
        return rng.random() < 0.5
    if kafka_type == "string":
        if name in ("mechanism",):
            return rng.choice(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "x"])
        if name in ("client_software_name", "client_software_version"):
            return rng.choice(["fuzz", "apache-kafka-java", "1.0"])
        return _name(ctx)
    if kafka_type == "records":
        if rng.random() < 0.7:
            return record_batch(rng, rng.randint(1, 3))
        return rng.randbytes(rng.randint(0, 80))
    if kafka_type == "bytes":
        return rng.randbytes(rng.randint(0, 40))
    if kafka_type == "uuid":
        return uuid.UUID(int=0) if rng.random() < 0.3 else uuid.UUID(int=rng.getrandbits(128))
    if kafka_type == "timedelta_i32":
        if name == "session_timeout":
            return datetime.timedelta(milliseconds=rng.choice([6000, 10000]))
        return datetime.timedelta(milliseconds=rng.choice([0, 10, 100, 500]))
    if kafka_type == "timedelta_i64":
        return datetime.timedelta(milliseconds=rng.choice([-1, 0, 60000]))
    raise TypeError(f"no generator for kafka type {kafka_type!r}")


def generate(schema: type[Any], ctx: _Context) -> Any:
    """A random, valid instance of the kio entity ``schema``."""
    values: dict[str, Any] = {}
    rng = ctx.rng
    for f in dataclasses.fields(schema):
        kind = classify_field(f)
        tagged = get_field_tag(f) is not None
        optional = is_optional(f)
        if tagged and rng.random() < 0.7:
            continue  # leave the tagged field at its default
        match kind:
            case PrimitiveField():
                values[f.name] = _primitive(ctx, get_schema_field_type(f), f.name, optional)
            case PrimitiveTupleField():
                kafka_type = get_schema_field_type(f)
                values[f.name] = tuple(_primitive(ctx, kafka_type, f.name, False)
                                       for _ in range(rng.choice([0, 1, 1, 2, 3])))
            case EntityField(nested):
                values[f.name] = (None if optional and rng.random() < 0.3
                                  else generate(nested, ctx))
            case EntityTupleField(nested):
                if optional and rng.random() < 0.1:
                    values[f.name] = None
                else:
                    values[f.name] = tuple(generate(nested, ctx)
                                           for _ in range(rng.choice([0, 1, 1, 2, 3])))
            case _:
                raise TypeError(f"unsupported field {f.name} of {schema.__name__}")
    return schema(**values)


class FramePool:
    """Encoded valid requests (framed, length prefix included) of the served API versions."""

    def __init__(self, served: dict[int, tuple[int, int]], rng: random.Random,
                 names: tuple[str, ...] = (), variants: int = 8) -> None:
        self.frames: list[tuple[int, int, bytes]] = []
        self.skipped: list[tuple[int, int, str]] = []
        for api_key, (low, high) in sorted(served.items()):
            for version in range(low, high + 1):
                try:
                    schema = load_request_schema(api_key, version)
                except Exception as e:  # noqa: BLE001 - kio has no schema: not fuzzed
                    self.skipped.append((api_key, version, str(e)))
                    continue
                ctx = _Context(rng, api_key, names)
                for _ in range(variants):
                    try:
                        entity = generate(schema, ctx)
                        data = b"".join(codec.encode_request(
                            entity, rng.randint(0, 1 << 20), rng.choice(
                                ["fuzz", None, f"fuzz-{rng.getrandbits(16)}", ""])))
                    except (codec.EncodeError, TypeError, ValueError) as e:
                        self.skipped.append((api_key, version, str(e)))
                        continue
                    self.frames.append((api_key, version, data))
        if not self.frames:
            raise FedKafkaError("no request could be built for the proxy's API versions")

    def pick(self, rng: random.Random) -> bytes:
        return rng.choice(self.frames)[2]


# -- mutations -----------------------------------------------------------------------------


def _framed(body: bytes) -> bytes:
    return _HEAD.pack(len(body)) + body


def mutate(frame: bytes, rng: random.Random, other: bytes, how: str | None = None
           ) -> tuple[bytes, str, bool]:
    """A mutation of the framed request ``frame``: (bytes to send, mutation, open-ended).

    Open-ended: the length prefix announces more bytes than follow (nothing after it on
    that connection can be read as a frame of its own)."""
    how = how or rng.choice(MUTATIONS)
    body = bytearray(frame[4:])
    if how == "bitflip":
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(body))
            body[pos] ^= 1 << rng.randrange(8)
    elif how == "bytes":
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    elif how == "truncate":
        body = body[:rng.randrange(len(body))]
    elif how == "trailing":
        body += rng.randbytes(rng.randint(1, 64))
    elif how == "bigcount":
        if len(body) > 12:
            pos = rng.randrange(8, len(body) - 3)
            patch = rng.choice([b"\x7f\xff\xff\xff", b"\xff\xff\xff\xfe", b"\x00\x1e\x84\x80",
                                b"\x81\x89\x7a", b"\xff\xff\xff\xff\x0f"])
            body[pos:pos + len(patch)] = patch
        else:
            body += b"\x7f\xff\xff\xff"
    elif how == "version":
        struct.pack_into(">h", body, 2, rng.choice([-1, 0, 1, rng.randint(2, 40), 32767]))
    elif how == "key":
        struct.pack_into(">h", body, 0, rng.choice([-1, rng.randint(0, 90), 32767]))
    elif how == "splice":
        cut = rng.randrange(len(body))
        theirs = other[4:]
        body = body[:cut] + theirs[rng.randrange(len(theirs)):]
    elif how == "short_length":
        # The length prefix says less: the rest is read as the next frame.
        short = rng.randrange(len(body))
        return _HEAD.pack(short) + bytes(body), how, False
    elif how == "long_length":
        return _HEAD.pack(len(body) + rng.randint(1, 4096)) + bytes(body), how, True
    return _framed(bytes(body)), how, False


def random_frame(rng: random.Random, served: list[int]) -> tuple[bytes, bool]:
    """A random frame: random bytes, half behind a plausible request header."""
    roll = rng.random()
    if roll < 0.02:  # an announced size (up to 2 GiB) that never comes
        return _HEAD.pack(rng.choice([100 << 20, 2**31 - 1, 1 << 20, 600 << 10])), True
    if roll < 0.04:
        return _HEAD.pack(rng.choice([-1, -(2**31), 0])) + rng.randbytes(8), False
    body = rng.randbytes(rng.randint(0, 200))
    if rng.random() < 0.5:
        head = struct.pack(">hhih", rng.choice(served), rng.randint(0, 20),
                           rng.randint(0, 1 << 20), rng.choice([-1, 0, 4]))
        if head[-2:] == b"\x00\x04":
            head += b"fuzz"
        body = head + body
    return _framed(body), False


# -- the run ---------------------------------------------------------------------------------


@dataclass
class FuzzOptions:
    bootstrap: str
    frames: int = 20_000
    seed: int = 1
    connections: int = 16
    frames_per_connection: int = 40
    user: str | None = None
    password: str | None = None
    mechanism: str = "SCRAM-SHA-512"
    auth_share: float = 0.5  #: of connections that authenticate first (with credentials)
    topics: tuple[str, ...] = ()  #: existing topics valid requests may name
    canary_topic: str | None = None
    canary_client_id: str = "fuzz-canary"
    proxy_pid: int | None = None
    metrics_url: str | None = None
    #: longer than the proxy's longest legitimate wait upstream (group requests wait for a
    #: rebalance up to its request timeout + 300 s, Fetch up to max_wait...)
    hang_timeout: float = 360.0
    save_dir: Path | None = None  #: where frames of hung connections are written
    share_random: float = 0.2
    share_valid: float = 0.3  #: the rest is mutated
    share_clean: float = 0.25  #: of connections that send valid requests only


@dataclass
class FuzzReport:
    frames_sent: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    authenticated_connections: int = 0
    authentication_failures: int = 0
    closed_by_proxy: int = 0
    probes_answered: int = 0
    responses: int = 0
    hangs: int = 0
    proxy_crashes: int = 0
    unresponsive_checks: int = 0
    internal_errors: int | None = None
    canary_rounds: int = 0
    canary_records: int = 0
    canary_failures: int = 0
    rss_start: int | None = None
    rss_end: int | None = None
    rss_peak_sampled: int | None = None
    rss_high_water_mark: int | None = None
    seconds: float = 0.0
    interrupted: bool = False  #: stopped by a signal before all frames were sent
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.proxy_crashes or self.hangs or self.canary_failures
                    or self.internal_errors or self.unresponsive_checks
                    or self.authentication_failures)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["kinds"] = dict(sorted(self.kinds.items()))
        out["ok"] = self.ok
        return out


def proxy_memory(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of process ``pid`` in bytes, from /proc; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def _metric(url: str, name: str, labels: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()  # noqa: S310 - operator's URL
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _internal_errors(url: str) -> float:
    return _metric(url, "fedkafka_proxy_connections_closed_total", 'reason="internal_error"')


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = _HEAD.unpack(await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _request(api_key: int, version: int, correlation_id: int, **fields: Any) -> bytes:
    schema: Any = load_request_schema(api_key, version)
    return b"".join(codec.encode_request(schema(**fields), correlation_id, "fuzz"))


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, api_key: int,
                version: int, **fields: Any) -> Any:
    writer.write(_request(api_key, version, 1, **fields))
    await writer.drain()
    body = await _read_frame(reader)
    return codec.decode_response(api_key, version, body)[1]


async def api_versions(host: str, port: int, timeout: float = 30.0) -> dict[int, tuple[int, int]]:
    """The API versions the proxy at host:port advertises (one round trip)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            resp = await _call(reader, writer, ApiKey.API_VERSIONS, 3,
                               client_software_name="fedkafka-fuzz",
                               client_software_version="1")
        finally:
            writer.close()
    if int(resp.error_code):
        raise FedKafkaError(f"ApiVersions answered error {int(resp.error_code)}")
    return {int(k.api_key): (int(k.min_version), int(k.max_version)) for k in resp.api_keys}


class Fuzzer:
    def __init__(self, options: FuzzOptions) -> None:
        self.o = options
        host, _, port = options.bootstrap.rpartition(":")
        if not host or not port.isdigit():
            raise FedKafkaError(f"bootstrap {options.bootstrap!r} is not HOST:PORT")
        self.host, self.port = host, int(port)
        self.report = FuzzReport()
        self._left = options.frames
        self._next_conn = 0
        self._stop = asyncio.Event()
        self.pool: FramePool | None = None
        self.canary: _Canary | None = None
        self.served: dict[int, tuple[int, int]] = {}

    def _take(self, n: int) -> int:
        n = min(n, self._left)
        self._left -= n
        return n

    def _frames_for(self, rng: random.Random, n: int) -> tuple[list[bytes], bool, list[str]]:
        assert self.pool is not None
        out: list[bytes] = []
        kinds: list[str] = []
        open_ended = False
        keys = list(self.served)
        clean = rng.random() < self.o.share_clean
        for _ in range(n):
            roll = self.o.share_random + rng.random() * self.o.share_valid if clean \
                else rng.random()
            if roll < self.o.share_random:
                data, open_ended = random_frame(rng, keys)
                kind = "random"
            elif roll < self.o.share_random + self.o.share_valid:
                data, kind = self.pool.pick(rng), "valid"
            else:
                data, how, open_ended = mutate(self.pool.pick(rng), rng, self.pool.pick(rng))
                kind = f"mutated:{how}"
            out.append(data)
            kinds.append(kind)
            if open_ended:
                break
        return out, open_ended, kinds

    async def _authenticate(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> bool:
        from federation.security.sasl import ScramClient

        assert self.o.user is not None and self.o.password is not None
        mechanism = self.o.mechanism
        resp = await _call(reader, writer, ApiKey.SASL_HANDSHAKE, 1, mechanism=mechanism)
        if int(resp.error_code):
            return False
        if mechanism == "PLAIN":
            token = b"\0" + self.o.user.encode() + b"\0" + self.o.password.encode()
            resp = await _call(reader, writer, ApiKey.SASL_AUTHENTICATE, 2, auth_bytes=token)
            return int(resp.error_code) == 0
        client = ScramClient(mechanism, self.o.user, self.o.password)
        first = await _call(reader, writer, ApiKey.SASL_AUTHENTICATE, 2,
                            auth_bytes=client.first())
        if int(first.error_code):
            return False
        final = await _call(reader, writer, ApiKey.SASL_AUTHENTICATE, 2,
                            auth_bytes=client.final(bytes(first.auth_bytes)))
        if int(final.error_code):
            return False
        client.verify(bytes(final.auth_bytes))
        return True

    async def _connection(self, number: int) -> None:
        rng = random.Random((self.o.seed << 32) ^ number)  # noqa: S311 - not cryptography
        n = self._take(rng.randint(1, self.o.frames_per_connection))
        if n == 0:
            return
        report = self.report
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as e:
            report.notes.append(f"connect failed: {e}")
            report.unresponsive_checks += 1
            self._left += n
            return
        report.connections += 1
        try:
            if self.o.user and rng.random() < self.o.auth_share:
                try:
                    async with asyncio.timeout(self.o.hang_timeout):
                        ok = await self._authenticate(reader, writer)
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                    ok = False
                    report.notes.append(f"authentication of connection {number}: {e!r}")
                if not ok:
                    report.authentication_failures += 1
                    self._left += n
                    return
                report.authenticated_connections += 1
            frames, open_ended, kinds = self._frames_for(rng, n)
            self._left += n - len(frames)
            probe_id = PROBE_BASE + (number & 0xFFFFF)
            answered = asyncio.Event()
            closed = asyncio.Event()
            seen: set[bytes] = set()  # correlation ids answered

            async def read() -> None:
                try:
                    while True:
                        body = await _read_frame(reader)
                        seen.add(body[:4])
                        report.responses += 1
                        if body[:4] == struct.pack(">i", probe_id):
                            answered.set()
                            return
                except (OSError, asyncio.IncompleteReadError):
                    closed.set()

            reading = asyncio.create_task(read())
            written = 0
            try:
                for data, kind in zip(frames, kinds, strict=True):
                    if closed.is_set() or writer.is_closing():
                        break
                    writer.write(data)
                    written += 1
                    report.frames_sent += 1
                    report.kinds[kind.partition(":")[0]] += 1
                    if ":" in kind:
                        report.kinds[kind] += 1
                if open_ended:
                    writer.write_eof()
                else:
                    writer.write(_request(ApiKey.API_VERSIONS, 0, probe_id))
                await writer.drain()
            except OSError:
                pass  # closed while we wrote: the reader sees it
            self._left += len(frames) - written  # cut off: sent on another connection
            waits = [asyncio.ensure_future(answered.wait()),
                     asyncio.ensure_future(closed.wait())]
            await asyncio.wait([*waits, reading], timeout=self.o.hang_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()
            if answered.is_set():
                report.probes_answered += 1
            elif closed.is_set() or (reading.done() and not answered.is_set()):
                report.closed_by_proxy += 1
            else:
                report.hangs += 1
                self._save_hang(number, frames, kinds, seen)
            reading.cancel()
        finally:
            writer.close()

    def _save_hang(self, number: int, frames: list[bytes], kinds: list[str],
                   seen: set[bytes]) -> None:
        waiting = []
        for data in frames:
            try:
                header, _ = codec.parse_request_header(data[4:])
            except codec.CodecError:
                continue
            if data[8:12] not in seen:
                name = API_NAMES.get(header.api_key, str(header.api_key))
                waiting.append(f"{name} v{header.api_version}")
        note = (f"connection {number}: neither answered nor closed ({', '.join(kinds)}); "
                f"unanswered (acks=0 Produce needs none): {', '.join(waiting)}")
        self.report.notes.append(note)
        log.error("hang: %s", note)
        if self.o.save_dir is not None:
            self.o.save_dir.mkdir(parents=True, exist_ok=True)
            path = self.o.save_dir / f"hang-{self.o.seed}-{number}.json"
            path.write_text(json.dumps({"kinds": kinds, "frames": [f.hex() for f in frames]}))

    async def _worker(self) -> None:
        while self._left > 0 and not self._stop.is_set() and not self.report.interrupted:
            number = self._next_conn
            self._next_conn += 1
            await self._connection(number)

    async def _watch(self) -> None:
        """Liveness (ApiVersions) and memory of the proxy every few seconds."""
        last_progress = time.monotonic()
        while not self._stop.is_set():
            self._sample_memory()
            if time.monotonic() - last_progress >= 60:
                last_progress = time.monotonic()
                r = self.report
                canary = f", canary {self.canary.rounds} rounds " \
                    f"{self.canary.failures} failed" if self.canary else ""
                print(f"progress: {r.frames_sent} frames, {r.connections} connections, "
                      f"{r.closed_by_proxy} closed by the proxy, {r.hangs} hangs, "
                      f"{r.unresponsive_checks} liveness failures, RSS {r.rss_peak_sampled}"
                      f"{canary}", file=sys.stderr, flush=True)
            try:
                await api_versions(self.host, self.port, timeout=30)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, FedKafkaError) as e:
                if self.o.proxy_pid is not None and proxy_memory(self.o.proxy_pid) is None:
                    return  # counted as a crash at the end
                self.report.unresponsive_checks += 1
                self.report.notes.append(f"liveness check failed: {e!r}")
            with _suppress_timeout():
                await asyncio.wait_for(self._stop.wait(), 2.0)

    def _interrupt(self) -> None:
        self.report.notes.append(f"interrupted with {self._left} frames left to send")
        self.report.interrupted = True
        self._left = 0

    def _sample_memory(self) -> None:
        if self.o.proxy_pid is None:
            return
        mem = proxy_memory(self.o.proxy_pid)
        if mem is not None:
            rss, hwm = mem
            self.report.rss_peak_sampled = max(self.report.rss_peak_sampled or 0, rss)
            self.report.rss_high_water_mark = hwm

    async def run(self) -> FuzzReport:
        o, report = self.o, self.report
        started = time.monotonic()
        self.served = await api_versions(self.host, self.port)
        names = tuple(o.topics) + tuple(f"fuzz-group-{i}" for i in range(4))
        self.pool = FramePool(self.served, random.Random(o.seed), names)  # noqa: S311
        log.info("%d request variants of %d API versions; %d not built", len(self.pool.frames),
                 len({(k, v) for k, v, _ in self.pool.frames}), len(self.pool.skipped))
        if o.proxy_pid is not None:
            mem = proxy_memory(o.proxy_pid)
            if mem is None:
                raise FedKafkaError(f"no process {o.proxy_pid} (--proxy-pid)")
            report.rss_start = mem[0]
        errors_before = _internal_errors(o.metrics_url) if o.metrics_url else None
        canary = self.canary = _Canary(o) if o.canary_topic else None
        if canary is not None:
            canary.start()
        watcher = asyncio.create_task(self._watch())
        # SIGTERM/SIGINT: stop sending, then report what was sent (a long run cut short).
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._interrupt)
        try:
            while self._left > 0 and not report.interrupted:  # (re-sent: frames a closed
                # connection did not take)
                await asyncio.gather(*(self._worker() for _ in range(o.connections)))
        finally:
            self._stop.set()
            await watcher
            if canary is not None:
                await asyncio.to_thread(canary.stop)
                report.canary_rounds = canary.rounds
                report.canary_records = canary.records
                report.canary_failures = canary.failures
                report.notes.extend(canary.notes[:10])
        self._sample_memory()
        if o.proxy_pid is not None:
            mem = proxy_memory(o.proxy_pid)
            if mem is None:
                report.proxy_crashes = 1
                report.notes.append(f"the proxy process {o.proxy_pid} is gone")
            else:
                report.rss_end = mem[0]
        try:
            await api_versions(self.host, self.port, timeout=30)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, FedKafkaError) as e:
            report.proxy_crashes = max(report.proxy_crashes, 1)
            report.notes.append(f"the proxy does not answer after the run: {e!r}")
        if errors_before is not None and o.metrics_url:
            report.internal_errors = int(_internal_errors(o.metrics_url) - errors_before)
        report.seconds = round(time.monotonic() - started, 1)
        return report


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, TimeoutError)


class _Canary:
    """A real client (librdkafka) producing and consuming rounds of records through the
    proxy, checking each record; a round that fails or takes over 60 s is a failure."""

    ROUND = 20

    def __init__(self, options: FuzzOptions) -> None:
        self.o = options
        self.rounds = 0
        self.records = 0
        self.failures = 0
        self.notes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fuzz-canary")

    def config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"bootstrap.servers": self.o.bootstrap,
                                "client.id": self.o.canary_client_id}
        if self.o.user:
            conf.update({"security.protocol": "SASL_PLAINTEXT",
                         "sasl.mechanism": self.o.mechanism,
                         "sasl.username": self.o.user, "sasl.password": self.o.password})
        return conf

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(180)

    def _fail(self, why: str) -> None:
        self.failures += 1
        self.notes.append(f"canary round {self.rounds}: {why}")
        log.error("canary round %d failed: %s", self.rounds, why)

    def _run(self) -> None:
        from confluent_kafka import Consumer, Producer, TopicPartition

        assert self.o.canary_topic is not None
        topic = self.o.canary_topic
        run = uuid.uuid4().hex[:8]
        producer = Producer({**self.config(), "acks": "all", "linger.ms": 5,
                             "enable.idempotence": False, "message.timeout.ms": 60000})
        consumer = Consumer({**self.config(), "group.id": f"fuzz-canary-{run}",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        try:
            while not self._stop.is_set():
                self.rounds += 1
                try:
                    self._round(producer, consumer, topic, run, TopicPartition)
                except Exception as e:  # noqa: BLE001 - any client error fails the round
                    self._fail(repr(e))
        finally:
            consumer.close()
            producer.flush(10)

    def _round(self, producer: Any, consumer: Any, topic: str, run: str,
               topic_partition: Callable[..., Any]) -> None:
        delivered: dict[str, tuple[int, int]] = {}
        errors: list[str] = []

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                delivered[msg.value().decode()] = (msg.partition(), msg.offset())

        values = [f"{run}-{self.rounds}-{i}" for i in range(self.ROUND)]
        for value in values:
            producer.produce(topic, value.encode(), on_delivery=on_delivery)
        left = producer.flush(60)
        if left or errors or len(delivered) != len(values):
            self._fail(f"produced {len(delivered)} of {len(values)} ({left} left, "
                       f"errors {errors[:3]})")
            return
        first: dict[int, int] = {}
        for p, o in delivered.values():
            first[p] = min(o, first.get(p, o))
        consumer.assign([topic_partition(topic, p, o) for p, o in first.items()])
        want = {v: po for v, po in delivered.items()}
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        while len(seen) < len(want) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            value = msg.value().decode()
            if value in want and want[value] == (msg.partition(), msg.offset()):
                seen.add(value)
        consumer.unassign()
        if seen != set(want):
            self._fail(f"consumed {len(seen)} of {len(want)} records")
            return
        self.records += len(values)


def run_fuzz(options: FuzzOptions) -> FuzzReport:
    # Writes to a connection the proxy just closed are expected here, not news.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    return asyncio.run(Fuzzer(options).run())


def register(app: typer.Typer) -> None:
    @app.command("fuzz")
    def fuzz_cmd(
        bootstrap: Annotated[str, typer.Argument(help="The proxy to fuzz, HOST:PORT.")],
        frames: Annotated[int, typer.Option(help="Frames to send in all.")] = 20_000,
        seed: Annotated[int, typer.Option(help="Seed (a run is reproducible per seed).")] = 1,
        connections: Annotated[int, typer.Option(help="Connections in parallel.")] = 16,
        user: Annotated[str | None, typer.Option(
            help="SASL user: a share of the connections authenticate first.")] = None,
        password: Annotated[str | None, typer.Option(
            help="SASL password (or FEDKAFKA_FUZZ_PASSWORD).")] = None,
        mechanism: Annotated[str, typer.Option(
            help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")] = "SCRAM-SHA-512",
        auth_share: Annotated[float, typer.Option(
            help="Share of connections that authenticate (with --user).")] = 0.5,
        topic: Annotated[list[str] | None, typer.Option(
            "--topic", help="An existing topic valid requests may name (repeatable).")] = None,
        canary_topic: Annotated[str | None, typer.Option(
            help="Topic the canary client produces to and consumes from (must exist; "
                 "route client id --canary-client-id to this proxy's pool).")] = None,
        canary_client_id: Annotated[str, typer.Option(help="The canary's client.id.")
                                    ] = "fuzz-canary",
        proxy_pid: Annotated[int | None, typer.Option(
            help="The proxy's process id: its RSS is reported and its death a crash.")] = None,
        metrics: Annotated[str | None, typer.Option(
            help="The proxy's Prometheus URL (http://HOST:PORT/metrics): internal errors "
                 "are counted.")] = None,
        hang_timeout: Annotated[float, typer.Option(
            help="Seconds a connection may stay neither answered nor closed (above the "
                 "proxy's longest upstream wait: 330 s for group requests).")] = 360.0,
        save_dir: Annotated[Path | None, typer.Option(
            help="Directory for the frames of hung connections.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")
                           ] = False,
    ) -> None:
        """Send random and mutated requests to a live proxy; fail on a crash, a hang, an
        internal error or a canary failure."""
        if frames <= 0 or connections <= 0:
            raise FedKafkaError("--frames and --connections must be positive")
        if not 0 <= auth_share <= 1:
            raise FedKafkaError("--auth-share must be between 0 and 1")
        if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise FedKafkaError(f"--mechanism {mechanism!r}: use PLAIN, SCRAM-SHA-256 or "
                                "SCRAM-SHA-512")
        password = password or os.environ.get("FEDKAFKA_FUZZ_PASSWORD")
        if user and not password:
            raise FedKafkaError("--user needs --password (or FEDKAFKA_FUZZ_PASSWORD)")
        report = run_fuzz(FuzzOptions(
            bootstrap=bootstrap, frames=frames, seed=seed, connections=connections,
            user=user, password=password, mechanism=mechanism, auth_share=auth_share,
            topics=tuple(topic or ()), canary_topic=canary_topic,
            canary_client_id=canary_client_id, proxy_pid=proxy_pid, metrics_url=metrics,
            hang_timeout=hang_timeout, save_dir=save_dir))
        data = report.to_dict()
        if as_json:
            print(json.dumps(data, indent=2))
        else:
            for key, value in data.items():
                print(f"{key}: {value}")
        if not report.ok:
            raise FedKafkaError("fuzzing found problems (see the report above)")
