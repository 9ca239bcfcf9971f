"""`python app.py`: serve the UI and the API until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from runtime.settings import load_settings, setup_logging
from runtime.wiring import build_app

log = logging.getLogger("app")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, as uvicorn would make it (SO_REUSEADDR, IPv6
    for an address with a colon); raises OSError when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then stop gracefully. Exit status 0, 1 after an
    unrecoverable device error (so that Supervisor restarts a fresh process), or 2
    at once when the port cannot be had (before the model loads)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    setup_logging(settings.log_level)
    import uvicorn

    from web.access_log import RedactPrompts
    from web.http_protocol import with_header_timeout

    logging.getLogger("uvicorn.access").addFilter(RedactPrompts())
    # The port first: a port in use ends the start at once, before the model loads.
    try:
        listener = bind(settings.host, settings.port)
    except OSError as exc:
        print(
            f"app.py: cannot listen on {settings.host}:{settings.port} ({exc.strerror or exc}); "
            "is another server on that port? Choose another with --port (ZIMAGE_PORT)",
            file=sys.stderr,
        )
        return 2
    runtime = build_app(settings, on_fatal=lambda reason: os.kill(os.getpid(), signal.SIGTERM))
    engine = runtime.engine
    stopping_since: list[float] = []

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # First refuse new generations and drop the queued ones (their callers get
            # 503); uvicorn then stops listening and waits for open requests, the one
            # generating included, up to the graceful-shutdown timeout.
            if not stopping_since:
                stopping_since.append(time.monotonic())
                log.info("signal %d: finishing the generation in flight, taking no new ones", sig)
                engine.close(0)
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # Like uvicorn's, minus re-raising the signal once stopped (which would end
            # the process killed by SIGTERM): a graceful stop exits with our status.
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        runtime.app,
        host=settings.host,
        port=settings.port,
        http=with_header_timeout(settings.header_timeout),
        # uvicorn counts the connection asking among those open: one more serves N.
        limit_concurrency=settings.max_connections + 1,
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
    )
    runtime.start()
    log.info("serving on http://%s:%d", settings.host, settings.port)
    try:
        Server(config).run(sockets=[listener])
    finally:
        spent = time.monotonic() - stopping_since[0] if stopping_since else 0.0
        idle = runtime.close(max(0.0, settings.shutdown_timeout - spent))
        status = 1 if engine.fatal else 0
        if not idle:
            # Only the model's thread is left; it writes nothing, and every store
            # has finished with the event loop, so ending here loses nothing stored.
            log.warning("abandoning the generation in flight after %.0f s", settings.shutdown_timeout)
            logging.shutdown()
            os._exit(status)
    log.info("stopped%s", " after an unrecoverable device error" if engine.fatal else "")
    return status
