"""The asyncio driver executes the core's commands (federation/proxy/server.py: Driver),
without a socket: sub-steps, concurrency, thread offloading, a pending's own deadline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from federation.clusters.upstream import UpstreamError
from federation.core.model import FederationMap, PhysicalCluster
from federation.protocol.errors import ErrorCode
from federation.proxy import core
from federation.proxy.handlers import Session
from federation.proxy.server import Driver
from tests.unit.session_harness import make_state


def _driver() -> Driver:
    state = make_state(FederationMap(1, {"A": PhysicalCluster("A", "a:9092")}, {}))
    session = Session(state, "x:1", asyncio.get_running_loop().time)
    return Driver(state, session, "x:1")


def test_the_driver_runs_spawned_and_gathered_steps_and_stops_at_detach() -> None:
    def child(v: int) -> core.Step:
        got = yield core.Offload(lambda: v * 2, ())
        return got

    def handler() -> core.Step:
        p = yield core.Spawn(child(3))
        while not p.done:
            yield core.WaitAny((p,), None)
        both = yield core.Gather([child(1), child(2)])
        yield core.DETACH
        try:
            yield core.Leader(None, "t", 0)  # fails inside the driver: thrown in
        except Exception as e:
            return p.value, both, type(e).__name__
        return None

    async def main() -> Any:
        driver = _driver()
        finished, gen = await driver.drive(handler(), detach=True)
        assert not finished
        return await driver.run(gen)

    value, both, error = asyncio.run(main())
    assert value == 6 and both == [2, 4] and error == "AttributeError"


class _Conn:
    label = "A/1/x"
    closed = False

    def close(self, reason: Any = None) -> None:
        self.closed = True


def test_a_pending_past_its_deadline_times_out_and_closes_its_connection() -> None:
    async def main() -> tuple[Any, bool]:
        driver = _driver()
        loop = asyncio.get_running_loop()
        conn = _Conn()
        fut: asyncio.Future[Any] = loop.create_future()  # an answer that never comes
        pending = core.Pending(loop.time() + 0.01, (conn, fut))

        def handler() -> core.Step:
            try:
                return (yield from core.wait(pending))
            except UpstreamError as e:
                return e.error_code
        return await driver.run(handler()), conn.closed

    code, closed = asyncio.run(main())
    assert code == ErrorCode.REQUEST_TIMED_OUT and closed


def test_wait_any_returns_at_its_deadline_with_nothing_done() -> None:
    async def main() -> Any:
        driver = _driver()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        pending = core.Pending(None, (_Conn(), fut))

        def handler() -> core.Step:
            done = yield core.WaitAny((pending,), loop.time() + 0.01)
            return done
        return await driver.run(handler())

    assert asyncio.run(main()) == []


def test_the_driver_runs_the_admin_commands_with_the_controller_and_admin_clients(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from federation.clusters import admin
    from federation.controller import intents

    calls: list[tuple[Any, ...]] = []

    async def submit(backend: Any, kind: str, args: Any, *, token: Any, timeout: float
                     ) -> Any:
        calls.append(("submit", backend, kind, dict(args), token, timeout))
        if kind == "delete_topic":
            raise admin.UnknownTopicError("topic 'x' does not exist")
        return {"status": "applied", "version": 2, "result": {}}

    async def validate(fmap: Any, name: str, needs: Any, replication: Any, config: Any
                       ) -> None:
        calls.append(("validate", fmap, name, needs, replication, config))

    async def describe(fmap: Any, topics: Any) -> Any:
        calls.append(("describe", fmap, list(topics)))
        return {"t": "described"}

    monkeypatch.setattr(intents, "submit", submit)
    monkeypatch.setattr(intents, "resolve_token", lambda token=None: "secret")
    monkeypatch.setattr(admin, "validate_physical", validate)
    monkeypatch.setattr(admin, "describe_physical_many", describe)
    fmap = object()  # passed through as it is

    def handler() -> core.Step:
        answer = yield core.SubmitIntent("add_partitions", {"name": "t", "count": 3}, 150.0)
        try:
            yield core.SubmitIntent("delete_topic", {"name": "x"}, 7.5)
        except admin.AdminError as e:
            refused = e.error_code
        yield core.ValidatePhysical(fmap, "t", {"A": {"t.fk": 3}}, 2, {"a": "b"})
        found = yield core.DescribePhysical(fmap, ["t"])
        return answer["version"], refused, found

    driver: list[Driver] = []

    async def main() -> Any:
        driver.append(_driver())
        return await driver[0].run(handler())

    assert asyncio.run(main()) == (2, admin.UnknownTopicError.error_code, {"t": "described"})
    backend = driver[0].state.backend
    # every call's arguments, in full: the proxy's token (the driver's), the command's
    # timeout (the core's decision), replication and config in their places
    assert calls == [
        ("submit", backend, "add_partitions", {"name": "t", "count": 3}, "secret", 150.0),
        ("submit", backend, "delete_topic", {"name": "x"}, "secret", 7.5),
        ("validate", fmap, "t", {"A": {"t.fk": 3}}, 2, {"a": "b"}),
        ("describe", fmap, ["t"]),
    ]
