"""The body timeout's rule for bodies larger than 64 KB (routes allowed more, such as
image uploads): served while they advance by 64 KB within each timeout, closed when
they stall. A real uvicorn with our protocol, on a free port; no model."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request

from tests.conftest import free_port
from web.body_limit import BodyLimit
from web.http_protocol import with_header_timeout


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    app = FastAPI()

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    app.add_middleware(BodyLimit, max_bytes=4 << 20, timeout_s=1.0)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, http=with_header_timeout(5), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def send_slowly(port: int, total: int, piece: int, pause_s: float) -> bytes:
    """POST `total` bytes in pieces of `piece` with `pause_s` between them; the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n".encode())
        sent = 0
        try:
            while sent < total:
                sock.sendall(b"x" * min(piece, total - sent))
                sent += piece
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-body
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                    break
        except ConnectionResetError:
            pass
        return answer


def test_a_large_body_that_keeps_advancing_is_read_past_the_timeout(port: int) -> None:
    # 512 KB at 64 KB every 0.5 s: 4 s in all, four times the 1 s timeout.
    answer = send_slowly(port, 512 * 1024, 64 * 1024, 0.5)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"bytes":524288}'), answer[:200]


def test_a_large_body_that_stalls_gets_408(port: int) -> None:
    # 100 KB, then a byte every 0.4 s: the next 64 KB never comes within 1 s.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
        answer = b""
        try:
            for _ in range(25):  # 10 s at most
                sock.sendall(b"x")
                time.sleep(0.4)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
