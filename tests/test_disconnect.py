"""unless_client_leaves over Starlette's Request and an ASGI receive channel: a hit
never reads from the client, a client that leaves ends slow work, and a server
shutting down is not mistaken for a client leaving. (A client hanging up on a real
server: tests/test_replicas.py.)"""

from __future__ import annotations

import asyncio
import time

import pytest
from starlette.requests import Request

from web.disconnect import WATCH_AFTER_S, ClientGone, unless_client_leaves


class Client:
    """The ASGI receive side of one request: counts reads, disconnects on demand."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[dict] = asyncio.Queue()
        self.reads = 0

    async def receive(self) -> dict:
        self.reads += 1
        return await self.messages.get()

    def request(self) -> Request:
        return Request({"type": "http", "method": "GET", "path": "/", "headers": []}, self.receive)

    def leave(self) -> None:
        self.messages.put_nowait({"type": "http.disconnect"})


async def work(seconds: float, log: list[str]) -> str:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        log.append("cancelled")
        raise
    return "done"


def test_quick_work_never_reads_from_the_client() -> None:
    async def main() -> None:
        client, log = Client(), []
        client.leave()  # even a client already gone: the answer is ready first
        assert await unless_client_leaves(client.request(), work(0.001, log)) == "done"
        assert await unless_client_leaves(client.request(), work(0, log)) == "done"
        await asyncio.sleep(WATCH_AFTER_S * 2)  # no watcher starts later either
        assert client.reads == 0 and log == []

    asyncio.run(main())


async def watched_slow_route() -> tuple[Client, list[str], asyncio.Future[str]]:
    """A route on 30 s of work, past WATCH_AFTER_S: its client is being watched."""
    client, log = Client(), []
    route = asyncio.ensure_future(unless_client_leaves(client.request(), work(30, log)))
    await asyncio.sleep(WATCH_AFTER_S * 2)
    return client, log, route


def test_a_client_that_leaves_ends_slow_work() -> None:
    async def main() -> None:
        client, log, route = await watched_slow_route()
        assert client.reads == 1 and not route.done()  # watching, the client still there
        client.messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        started = time.monotonic()
        client.leave()
        with pytest.raises(ClientGone):
            await route
        assert time.monotonic() - started < 1
        assert log == ["cancelled"] and client.reads == 2  # the body message, then the disconnect
        assert not route.cancelled()

    asyncio.run(main())


def test_a_shutdown_is_not_taken_for_a_client_leaving() -> None:
    async def main() -> None:
        _, log, route = await watched_slow_route()
        route.cancel()  # what the server does to its requests when it stops
        with pytest.raises(asyncio.CancelledError):
            await route
        assert route.cancelled() and log == ["cancelled"]

    asyncio.run(main())


def test_errors_of_the_work_reach_the_caller_as_they_are() -> None:
    async def failing() -> None:
        await asyncio.sleep(WATCH_AFTER_S * 2)
        raise ValueError("no such thing")

    async def main() -> None:
        client = Client()
        with pytest.raises(ValueError, match="no such thing"):
            await unless_client_leaves(client.request(), failing())
        assert client.reads == 1

    asyncio.run(main())
