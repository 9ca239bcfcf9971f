"""Tenants stay apart: the UI's images, the prompt-embedding cache, a shared HTTP
cache (a real Squid) in front of the server, and two servers on one host.

Each test replays an attack that once worked (docs/RELIABILITY.md, "Nothing leaks").
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest

from bench.procs import NotReady, stop_process, wait_until
from cache import Entry
from pipeline.request import GenerationRequest
from pipeline.results import GenerationResult
from tests.conftest import UI_FIELDS, Server, free_port, ui_call
from web.ui_images import UiImages

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"
HIDDEN = "classified"  # the do-not-cache pattern of the keyed server
SQUID_START_S = 30


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Squid:
    """A real Squid as a caching reverse proxy: one port per origin server, memory
    cache only, passing Authorization through (as a CDN in front of an API does)."""

    def __init__(self, workdir: Path, *origins: Server) -> None:
        self.ports = [free_port() for _ in origins]
        lines = []
        for i, (port, origin) in enumerate(zip(self.ports, origins, strict=True)):
            lines += [
                f"http_port 127.0.0.1:{port} accel defaultsite=origin{i} vhost",
                f"cache_peer 127.0.0.1 parent {origin.port} 0 no-query originserver login=PASSTHRU name=o{i}",
                f"acl to{i} myport {port}",
                f"cache_peer_access o{i} allow to{i}",
                f"cache_peer_access o{i} deny all",
            ]
        lines += [
            "http_access allow all",
            "cache_mem 16 MB",
            "maximum_object_size_in_memory 4 MB",
            "access_log none",
            "cache_log /dev/null",
            "pid_filename none",
            "shutdown_lifetime 0 seconds",
        ]
        conf = workdir / "squid.conf"
        conf.write_text("\n".join(lines) + "\n")
        squid = shutil.which("squid") or "/usr/sbin/squid"
        self.proc = subprocess.Popen([squid, "-N", "-f", str(conf)], stderr=subprocess.PIPE)
        proc = self.proc
        try:
            wait_until(
                lambda: all(
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).raise_for_status()
                    for port in self.ports
                ),
                "squid",
                timeout_s=SQUID_START_S,
                interval_s=0.1,
                retry_on=(httpx.HTTPError,),
                exited=lambda: None if proc.poll() is None else "exited",
            )
        except NotReady:
            self.stop()
            raise RuntimeError(f"squid did not start: {proc.stderr.read()[-2000:]!r}") from None

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def stop(self) -> None:
        stop_process(self.proc, grace_s=10)


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One GRADIO_TEMP_DIR given to both servers, as two services on one host might share."""
    return tmp_path_factory.mktemp("gradio-tmp")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, parent: Path) -> Iterator[tuple[Server, Server]]:
    root = tmp_path_factory.mktemp("isolation")
    keys = root / "api-keys.txt"
    keys.write_text(f"{ALICE} alice\n{BOB} bob\n")
    patterns = root / "no-cache.txt"
    patterns.write_text(f"{HIDDEN}\n")
    env = {"GRADIO_TEMP_DIR": str(parent)}
    # Started together: their loads overlap.
    keyed = Server(
        root / "keyed",
        *(
            "--api-keys",
            str(keys),
            "--no-cache-patterns",
            str(patterns),
            "--header-timeout",
            "2s",
            "--body-timeout",
            "2s",
        ),
        env=env,
    )
    open_ = Server(root / "open", env=env)
    try:
        yield keyed.wait_ready(), open_.wait_ready()
    finally:
        keyed.stop()
        open_.stop()


@pytest.fixture(scope="module")
def keyed(servers: tuple[Server, Server]) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def open_server(servers: tuple[Server, Server]) -> Server:
    return servers[1]


@pytest.fixture(scope="module")
def squid(tmp_path_factory: pytest.TempPathFactory, servers: tuple[Server, Server]) -> Iterator[Squid]:
    proxy = Squid(tmp_path_factory.mktemp("squid"), *servers)
    yield proxy
    proxy.stop()


def ui_session(server: Server, user: str | None = None, token: str | None = None) -> httpx.Client:
    """A client of the UI; logged in through Gradio's login form when a user is given."""
    client = httpx.Client(base_url=server.url, timeout=120)
    if user is not None:
        assert client.post("/login", data={"username": user, "password": token}).status_code == 200
    return client


def ui_image(server: Server, client: httpx.Client, **fields: Any) -> tuple[str, str]:
    """Generate through the UI's event; (server path, URL) of its first image."""
    event, outputs = ui_call(client, **fields)
    assert event == "complete", outputs
    image = outputs[0][0]["image"]
    return image["path"], image["url"]


def file_url(server: Server, path: str) -> str:
    return f"{server.url}/gradio_api/file={path}"


def denial(resp: httpx.Response, path: str) -> tuple[int, str]:
    """A file-route answer with the path it names taken out, to compare answers."""
    return resp.status_code, resp.text.replace(path, "<path>")


# -- the UI's images ---------------------------------------------------------------------


def test_a_ui_image_is_served_only_to_its_own_namespace(keyed: Server) -> None:
    alice, bob, anonymous = (
        ui_session(keyed, "alice", ALICE),
        ui_session(keyed, "bob", BOB),
        ui_session(keyed),
    )
    path, url = ui_image(keyed, alice, prompt="alice's private harbour", seed=5)
    # <namespace>/<key>/seed-<n>.<ext>: no prompt words (see the next test).
    key = Path(path).parent.name
    assert Path(path).name == "seed-5.png"
    mine = alice.get(url)
    assert mine.status_code == 200 and mine.headers["content-type"] == "image/png"
    api = keyed.client.get(f"/images/{key}.png", headers=bearer(ALICE))
    assert mine.content == api.content  # the stored bytes, served from the cache

    # Another tenant, and nobody at all, get what a missing file gets: the key (which
    # anyone can compute from a guessed prompt) tells them nothing.
    theirs = bob.get(url)
    assert theirs.status_code == 403 and mine.content not in theirs.content
    assert anonymous.get(url).status_code in (401, 403)
    missing = path.replace(key, "0" * 64)
    bobs_own_dir = path.replace("/alice/", "/bob/")
    assert (
        denial(theirs, path)
        == denial(bob.get(file_url(keyed, missing)), missing)
        == denial(bob.get(file_url(keyed, bobs_own_dir)), bobs_own_dir)
    )
    # Nor by walking out of his own directory, or spelling alice's differently.
    for spelling in (path.replace("/alice/", "/bob/../alice/"), path.replace("/alice/", "/%61lice/")):
        assert bob.get(file_url(keyed, spelling)).status_code == 403
        assert alice.get(file_url(keyed, spelling)).content == mine.content
    assert not Path(path).exists()  # served from the cache: the UI wrote no file


def test_no_prompt_words_reach_a_url_or_the_log_but_downloads_keep_a_readable_name(keyed: Server) -> None:
    alice = ui_session(keyed, "alice", ALICE)
    for fields, tier in (
        ({"prompt": "alice's sunken zeppelin harbour"}, "miss"),
        ({"prompt": "alice's bypassed zeppelin lighthouse", "no_cache": True}, "bypass"),
        ({"prompt": f"a {HIDDEN} zeppelin chart"}, "bypass"),
    ):
        event, outputs = ui_call(alice, **fields, seed=11)
        assert event == "complete" and outputs[1].startswith(tier), outputs
        image = outputs[0][0]["image"]
        # Gradio's Download button saves it under orig_name; the URL carries no words.
        readable = "seed-11-" + fields["prompt"].replace("'", "-").replace(" ", "-") + ".png"
        assert image["orig_name"] == readable
        assert "zeppelin" not in unquote(image["url"]) and "zeppelin" not in image["path"]
        fetched = alice.get(image["url"])
        assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
        # "Save image as" on the image itself: the same readable name, for the browser only.
        assert fetched.headers["content-disposition"] == f"inline; filename*=UTF-8''{quote(readable)}"
    log = keyed.log_path.read_text(errors="replace")
    assert "/gradio_api/file=" in log  # the fetches were logged ...
    assert "zeppelin" not in log  # ... with no word of any prompt


def test_images_that_must_not_be_stored_are_never_written_anywhere(keyed: Server, parent: Path) -> None:
    alice, bob = ui_session(keyed, "alice", ALICE), ui_session(keyed, "bob", BOB)
    for fields in (
        {"prompt": "alice's bypassed lighthouse", "no_cache": True},
        {"prompt": f"a {HIDDEN} map"},
    ):
        event, outputs = ui_call(alice, **fields, seed=7)
        assert event == "complete" and outputs[1].startswith("bypass"), outputs
        url = outputs[0][0]["image"]["url"]
        shown = alice.get(url)  # the browser's fetch, from memory
        assert shown.status_code == 200 and shown.content.startswith(b"\x89PNG")
        assert bob.get(url).status_code == 403
        # Nothing on disk: not in Gradio's temp directories, not in the cache.
        written = [p for p in parent.rglob("*") if p.is_file()]
        written += [p for p in (keyed.cache_dir / "images").rglob("*") if p.is_file()]
        assert not [p for p in written if shown.content in p.read_bytes()]
    assert not [p for p in parent.rglob("*") if p.is_file()]  # the UI writes no file at all


def test_two_servers_on_one_host_never_share_a_ui_temp_dir(
    keyed: Server, open_server: Server, parent: Path
) -> None:
    alice = ui_session(keyed, "alice", ALICE)
    alice_path, _ = ui_image(keyed, alice, prompt="alice's harbour, seen from next door")
    anyone = ui_session(open_server)
    open_path, open_url = ui_image(open_server, anyone, prompt="a public harbour")
    assert anyone.get(open_url).status_code == 200
    # The server without keys is no way round the other's login.
    assert anyone.get(file_url(open_server, alice_path)).status_code == 403
    # Each has a directory of its own, under the GRADIO_TEMP_DIR they were both given.
    dirs = {Path(p).relative_to(parent).parts[0] for p in (alice_path, open_path)}
    assert len(dirs) == 2 and all(d.startswith("zimage-ui-") for d in dirs)


def test_a_ui_session_is_its_logins_alone(keyed: Server) -> None:
    # Gradio keeps the UI's history per session hash, which the browser makes up:
    # bob (or anyone) sending alice's hash read her history prompts and added to it.
    alice, bob, anonymous = (
        ui_session(keyed, "alice", ALICE),
        ui_session(keyed, "bob", BOB),
        ui_session(keyed),
    )
    session = "alice-tab-5f1c2e"

    def generate(client: httpx.Client, prompt: str) -> httpx.Response:
        data = list((UI_FIELDS | {"prompt": prompt}).values())
        return client.post("/gradio_api/call/generate", json={"data": data, "session_hash": session})

    def history_of(posted: httpx.Response) -> list[str]:
        """The history panel's captions after the call (its last output)."""
        assert posted.status_code == 200, posted.text
        stream = alice.get(f"/gradio_api/call/generate/{posted.json()['event_id']}")
        done = stream.text.split("event: complete\ndata: ", 1)
        assert len(done) == 2, stream.text
        return [item["caption"] for item in json.loads(done[1])[-1]]

    assert len(history_of(generate(alice, "a fox at dawn"))) == 1
    refused = generate(bob, "bob was here")
    assert refused.status_code == 403 and "another login" in refused.json()["detail"]
    assert generate(anonymous, "nobody was here").status_code == 403
    for client in (bob, anonymous):  # the heartbeat's end would close her session
        assert client.get(f"/gradio_api/heartbeat/{session}").status_code == 403
        assert client.get("/gradio_api/deep_link", params={"session_hash": session}).status_code == 403
    # Her history holds her two images, and nothing of bob's.
    assert len(history_of(generate(alice, "a fox at dusk"))) == 2
    # Bob's own sessions work as before.
    bobs = bob.post(
        "/gradio_api/call/generate",
        json={"data": list((UI_FIELDS | {"prompt": "bob's own"}).values()), "session_hash": "bob-tab-77"},
    )
    assert bobs.status_code == 200


# -- the prompt-embedding cache ----------------------------------------------------------


def embedding_counts(server: Server) -> tuple[int, int]:
    text = server.client.get("/metrics").text
    hits = re.search(r"^zimage_embedding_cache_hits_total (\S+)", text, re.M)
    misses = re.search(r"^zimage_embedding_cache_misses_total (\S+)", text, re.M)
    assert hits and misses
    return int(float(hits.group(1))), int(float(misses.group(1)))


def test_prompt_embeddings_are_per_namespace_and_never_kept_for_hidden_prompts(keyed: Server) -> None:
    def generate(token: str, prompt: str, seed: int) -> httpx.Response:
        body = {"prompt": prompt, "width": 64, "height": 64, "seed": seed}
        resp = keyed.client.post("/generate", json=body, headers=bearer(token))
        assert resp.status_code == 200, resp.text
        return resp

    generate(ALICE, "alice's embedded lighthouse", 1)
    before = embedding_counts(keyed)
    generate(BOB, "alice's embedded lighthouse", 1)  # bob asks for alice's prompt
    assert embedding_counts(keyed) == (before[0], before[1] + 1)  # his own encoding
    generate(ALICE, "alice's embedded lighthouse", 2)  # alice's own prompt again
    assert embedding_counts(keyed) == (before[0] + 1, before[1] + 1)

    entries = keyed.client.get("/api/cache/stats", headers=bearer(ALICE)).json()["embeddings"]["entries"]
    hidden = [generate(ALICE, f"the {HIDDEN} lighthouse", seed) for seed in (1, 2)]
    assert [r.headers["x-cache"] for r in hidden] == ["bypass", "bypass"]
    assert embedding_counts(keyed) == (before[0] + 1, before[1] + 3)  # encoded each time
    assert (
        keyed.client.get("/api/cache/stats", headers=bearer(ALICE)).json()["embeddings"]["entries"] == entries
    )


# -- shared HTTP caches ------------------------------------------------------------------


def test_a_shared_proxy_never_serves_one_callers_image_to_another(
    keyed: Server, open_server: Server, squid: Squid
) -> None:
    made = keyed.client.post(
        "/generate", json={"prompt": "alice behind a proxy", "width": 64, "height": 64}, headers=bearer(ALICE)
    )
    url = f"{squid.url(0)}/images/{made.headers['x-key']}.png"
    for _ in range(2):  # the second would be the proxy's hit
        mine = httpx.get(url, headers=bearer(ALICE))
        assert mine.status_code == 200 and mine.content == made.content
    assert httpx.get(url).status_code == 401  # no token: not alice's image from the proxy
    assert httpx.get(url, headers=bearer(BOB)).status_code == 404
    assert mine.headers["cache-control"].startswith("private")

    # Without API keys, the X-Namespace header picks the namespace: the same holds.
    made = open_server.client.post(
        "/generate",
        json={"prompt": "tenant a behind a proxy", "width": 64, "height": 64},
        headers={"X-Namespace": "a"},
    )
    url = f"{squid.url(1)}/images/{made.headers['x-key']}.png"
    for _ in range(2):
        assert httpx.get(url, headers={"X-Namespace": "a"}).status_code == 200
    assert httpx.get(url).status_code == 404
    assert httpx.get(url, headers={"X-Namespace": "b"}).status_code == 404

    # The default namespace without keys is anyone's: the proxy may keep those.
    made = open_server.client.post("/generate", json={"prompt": "a public proxy", "width": 64, "height": 64})
    url = f"{squid.url(1)}/images/{made.headers['x-key']}.png"
    first, second = httpx.get(url), httpx.get(url)
    assert first.headers["cache-control"].startswith("public") and second.content == made.content
    assert any(v.startswith("HIT from") for v in second.headers.get_list("x-cache"))


def test_weak_star_and_listed_etags_revalidate(open_server: Server) -> None:
    made = open_server.client.post("/generate", json={"prompt": "an etag", "width": 64, "height": 64})
    key = made.headers["x-key"]
    for header in (f'"{key}"', f'W/"{key}"', "*", f'"other", W/"{key}"', f'"x","{key}"'):
        resp = open_server.client.get(f"/images/{key}.png", headers={"If-None-Match": header})
        assert resp.status_code == 304 and resp.content == b"", header
        assert resp.headers["etag"] == f'"{key}"' and "cache-control" in resp.headers
    assert (
        open_server.client.get(f"/images/{key}.png", headers={"If-None-Match": '"other"'}).status_code == 200
    )


# -- connections ---------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", b"GET /health HTTP/1.1\r\nHost: x\r\n"], ids=["silent", "half-head"])
def test_a_connection_that_never_finishes_its_request_head_is_closed(keyed: Server, sent: bytes) -> None:
    # --header-timeout 2s; a server that never closes it fails at the 60 s bound.
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=60) as sock:
        sock.sendall(sent)
        try:
            assert sock.recv(1024) == b""  # closed by the server, no answer
        except TimeoutError:
            pytest.fail("the server kept a connection with an unfinished request head open for 60 s")
    # A whole request on a fresh connection is answered as usual.
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=60) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")


POST_HEAD = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def _drip(sock: socket.socket) -> None:
    sock.sendall(POST_HEAD + b"Content-Length: 40\r\n\r\n")
    for byte in b'{"prompt": "':  # a byte a second: the whole body would take 40 s
        sock.sendall(bytes([byte]))
        if select.select([sock], [], [], 1)[0]:
            return  # answered: stop sending, read the answer


def _expect_continue(sock: socket.socket) -> None:
    sock.sendall(POST_HEAD + b"Content-Length: 40\r\nExpect: 100-continue\r\n\r\n")
    assert sock.recv(1024).startswith(b"HTTP/1.1 100 ")  # and then the body never comes


@pytest.mark.parametrize(
    "hold",
    [
        lambda sock: sock.sendall(POST_HEAD + b"Content-Length: 10\r\n\r\n"),  # a body that never comes
        lambda sock: sock.sendall(POST_HEAD + b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"pro'),
        _drip,
        _expect_continue,
    ],
    ids=["declared-never-sent", "chunked-unfinished", "byte-per-second", "expect-100-continue"],
)
def test_a_request_whose_body_does_not_arrive_in_time_gets_408_and_is_closed(
    keyed: Server, hold: Callable[[socket.socket], None]
) -> None:
    # --body-timeout 2s; a server that waits for ever fails at the 30 s bound.
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=30) as sock:
        hold(sock)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pytest.fail(f"the connection was still open after 30 s; got {received[:80]!r}")
        except ConnectionResetError:
            pass  # bytes of the body the server never read: the close may be a reset
    assert received.startswith(b"HTTP/1.1 408 "), received[:80]
    assert b"connection: close" in received.lower() and b"request body not whole within 2 s" in received
    # A body that arrives in time is served as before.
    made = keyed.client.post("/generate", json={"prompt": "in time", "width": 64, "height": 64})
    assert made.status_code == 401  # the keyed server wants a token: the body was read and judged


def test_past_max_connections_a_request_gets_503_and_is_closed(tmp_path: Path) -> None:
    server = Server(tmp_path / "cache", "--max-connections", "3").wait_ready()
    try:
        server.client.close()  # its kept-alive connection would count among the three
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(3)]
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes it
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 503 ") and b"connection: close" in answer.lower()
        # Each held connection is still served (the limit counts, it does not evict).
        held[0].sendall(request)
        assert held[0].recv(65536).startswith(b"HTTP/1.1 200 ")
        for sock in held:
            sock.close()
        # Once they are gone, new connections are served again.
        wait_until(
            lambda: httpx.get(f"{server.url}/health").status_code == 200, "a free connection", timeout_s=10
        )
    finally:
        server.stop()


def test_gradios_never_ending_reload_stream_is_not_served(open_server: Server) -> None:
    # Gradio's dev-mode reload stream polled every 50 ms and never ended, for anyone.
    with socket.create_connection(("127.0.0.1", open_server.port), timeout=30) as sock:
        sock.sendall(b"GET /gradio_api/dev/reload HTTP/1.1\r\nHost: x\r\n\r\n")
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 404 ") and b"text/event-stream" not in head, head[:200]


def test_the_upload_route_is_closed_while_the_page_takes_no_file(
    keyed: Server, open_server: Server, parent: Path
) -> None:
    # Anyone could upload (3,955 files in 15 s, kept an hour), and read others' uploads.
    for client in (open_server.client, ui_session(keyed, "alice", ALICE)):
        sent = client.post("/gradio_api/upload", files={"files": ("planted.png", b"x" * 1000, "image/png")})
        assert sent.status_code == 404 and "takes no file uploads" in sent.text, sent.text
        assert client.get("/gradio_api/upload_progress", params={"upload_id": "x"}).status_code == 404
    assert not list(parent.rglob("planted.png"))


# -- what waits in memory for the browser ------------------------------------------------


def test_images_that_are_not_stored_wait_in_memory_bounded_in_bytes_and_time(tmp_path: Path) -> None:
    def bypassed(n: int) -> GenerationResult:
        canonical = GenerationRequest(prompt=f"p{n}").canonical()
        return GenerationResult("k" * 64, "bypass", Entry(bytes([n]) * 100, "png"), canonical, 0.1)

    images = UiImages(None, tmp_path / "results", max_unstored_bytes=250)  # type: ignore[arg-type]
    paths = [images.unstored_path("alice", bypassed(n)) for n in range(4)]
    assert images.unstored_stats() == {"entries": 2, "bytes": 200}  # the oldest went first
    fetched = [asyncio.run(images.fetch("alice", p)) for p in paths]
    assert [f.data[0] if f else None for f in fetched] == [None, None, 2, 3]
    assert asyncio.run(images.fetch("bob", paths[3])) is None
    assert not (tmp_path / "results").exists()

    brief = UiImages(None, tmp_path / "results", unstored_ttl_s=0.0)  # type: ignore[arg-type]
    path = brief.unstored_path("alice", bypassed(1))
    assert asyncio.run(brief.fetch("alice", path)) is None
    assert brief.unstored_stats() == {"entries": 0, "bytes": 0}  # released unfetched


# -- the history the browser keeps ---------------------------------------------------------


def test_history_from_browser_storage_grants_nothing(tmp_path: Path) -> None:
    # Browser storage is the browser's to write: a page may hand back any entry at
    # all. Only its own namespace's entries whose image the cache holds come back, and
    # the path the UI shows is made by the server, in the caller's own directory.
    from cache import LayeredCache, MemoryTier, make_key
    from pipeline.engine import Engine
    from pipeline.service import GenerationService
    from web.ui_history import path_of, revalidate

    cache = LayeredCache([MemoryTier(1 << 20)])
    service = GenerationService(Engine("tiny", tmp_path / "models"), cache)  # lookups need no model
    mine, theirs = make_key({"alice": 1}), make_key({"bob": 2})
    cache.put("alice", mine, Entry(b"alice's image", "png"))
    cache.put("bob", theirs, Entry(b"bob's image", "png"))

    def entry(ns: str, key: str, **changes: Any) -> dict[str, Any]:
        params = {
            "prompt": "../../../etc/passwd",
            "negative_prompt": "",
            "seed": 1,
            "width": 64,
            "height": 64,
            "steps": 8,
            "guidance_scale": 0.0,
            "prompt_normalization": "basic",
        }
        return {
            "ns": ns,
            "key": key,
            "ext": "png",
            "cache": "miss",
            "duration": 0.5,
            "params": params,
        } | changes

    stored = [
        entry("alice", mine, path="/etc/passwd"),  # a path of its own: never used
        entry("bob", theirs),  # another namespace's entry
        entry("alice", theirs),  # another namespace's key, claimed as alice's
        entry("alice", "0" * 64),  # evicted, or never made
        entry("alice", "../" * 21 + "x"),  # not a key
        entry("alice", mine, cache="bypass"),  # never kept in the browser
        entry("alice", mine, params={"prompt": 5}),
        "rubbish",
        None,
    ]
    kept = asyncio.run(revalidate(service, "alice", stored))
    assert [(e["ns"], e["key"]) for e in kept] == [("alice", mine)]
    assert "path" not in kept[0]
    images = UiImages(service, tmp_path / "results")
    shown = path_of(images, kept[0])
    assert shown == str(images.root / "alice" / mine / "seed-1.png")
    assert shown.download_name == "seed-1-etc-passwd.png"  # a name, never a path
    assert asyncio.run(images.fetch("alice", shown)).data == b"alice's image"
    assert asyncio.run(images.fetch("bob", shown)) is None
    assert asyncio.run(revalidate(service, "alice", {"not": "a list"})) == []
