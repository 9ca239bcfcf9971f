"""Ending a request's work when its client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientGone as soon as the client disconnects, `work`
    then cancelled: a wait for another replica ends with it. A generation it started
    goes on and is stored (GenerationService shields it), so nothing is lost."""
    task = asyncio.ensure_future(work)
    await asyncio.sleep(0)  # its first step: a memory hit is done here, with no watcher to start
    if task.done():
        return task.result()

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise ClientGone
    return task.result()
