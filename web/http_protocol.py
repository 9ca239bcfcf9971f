"""uvicorn's h11 HTTP protocol with a request-head timeout, which uvicorn lacks."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


def with_header_timeout(timeout_s: float) -> type[asyncio.Protocol]:
    """An H11Protocol class (for `uvicorn.Config(http=...)`) that closes a connection
    which has not sent a whole request head (request line and headers) within
    `timeout_s` of connecting, or of sending the first bytes of its next request.

    uvicorn times out only idle keep-alive connections; a client that connects and
    sends nothing, or half a header line at a time (slowloris), would otherwise
    hold its connection, and the memory behind it, for as long as it likes.
    """

    class HeaderTimeoutH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_watching()
            super().connection_lost(exc)

        def _waiting_for_head(self) -> bool:
            # IDLE: no request line and headers complete yet for this cycle. Between
            # requests uvicorn's keep-alive timer runs; once bytes of the next
            # request arrive it is cancelled, and this one takes over.
            return self.conn.their_state is h11.IDLE and self.timeout_keep_alive_task is None

        def _watch_head(self) -> None:
            if self.transport.is_closing() or not self._waiting_for_head():
                self._stop_watching()
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(timeout_s, self._head_timed_out)

        def _stop_watching(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            # Only if this protocol still owns the connection (not upgraded) and is
            # still waiting for the same head.
            owned = self.transport.get_protocol() is self and not self.transport.is_closing()
            if owned and self._waiting_for_head():
                log.debug("closing %s: no whole request head within %.0f s", self.client, timeout_s)
                self.transport.close()

    return HeaderTimeoutH11Protocol
