"""Ending a request's work when its client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")

# A hit is done in milliseconds (a Redis hit of a 1024x1024 PNG: about 2 ms), so the
# client is watched only from this long into the work: a generation, or a wait for
# another replica's. A hit then starts no watcher task (15-30 us of a 0.3 ms hit).
WATCH_AFTER_S = 0.05


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientGone once the client has disconnected, `work`
    then cancelled: a wait for another replica ends with it. The client is watched
    from WATCH_AFTER_S on. A generation it started goes on and is stored
    (GenerationService shields it), so nothing is lost.

    `work` runs in the caller's task, which the watcher cancels, as asyncio.timeout
    does: the cancellation is told apart from any other (a server shutting down,
    which propagates as such) by the task's count of them (uncancel)."""
    route = asyncio.current_task()
    assert route is not None, "unless_client_leaves runs in a task"
    left = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal left
        while (await request.receive())["type"] != "http.disconnect":
            pass
        left = True
        route.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if left and _uncancel(route) == 0:
            raise ClientGone from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


def _uncancel(task: asyncio.Task[object]) -> int:
    """Withdraw one cancellation of `task`; how many are left. Python 3.10 does not
    count them (Task.uncancel is 3.11's): there, none."""
    uncancel = getattr(task, "uncancel", None)
    return uncancel() if uncancel is not None else 0
