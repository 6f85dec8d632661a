"""A proxy on its own event-loop thread inside the test process, for tests that reach
into its connections (chaos) or register plugins it must use."""

from __future__ import annotations

import asyncio
import threading

from federation.proxy.config import ProxyConfig
from federation.proxy.server import ProxyState, serve


class InProcessProxy:
    """A proxy on its own event loop thread, so the test can reach into its connections."""

    def __init__(self, store: str, port: int, pool: str = "chaos", node_id: int = 1900,
                 roles: tuple[str, ...] = ("producer", "consumer"),
                 **settings: object) -> None:
        self.config = ProxyConfig.from_dict({"node_id": node_id,
                                             "listen": f"127.0.0.1:{port}",
                                             "store": store, "pool": pool,
                                             "roles": list(roles), **settings})
        self.state: ProxyState | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready = asyncio.Event()

            def got(state: ProxyState) -> None:
                self.state = state

            task = asyncio.create_task(serve(self.config, ready, self._stop, on_state=got))
            await ready.wait()
            self._ready.set()
            await task
        asyncio.run(main())

    def __enter__(self) -> InProcessProxy:
        self.thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)

    def drop_upstream(self) -> int:
        """Abort every upstream connection that has requests in flight; returns how many."""
        assert self.loop is not None and self.state is not None
        done = threading.Event()
        count = [0]

        def drop() -> None:
            for session in list(self.state.sessions):  # type: ignore[union-attr]
                for conn in list(session.io._lanes.values()):
                    if conn.alive and conn.in_flight and conn._transport is not None:
                        count[0] += 1
                        conn._transport.abort()
            done.set()
        self.loop.call_soon_threadsafe(drop)
        done.wait(5)
        return count[0]
