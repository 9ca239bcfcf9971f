"""The Gradio UI's generate event, driven through gradio_client against a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from tests.conftest import Server

UI_DEFAULTS = {"negative_prompt": "", "seed": 42, "steps": 8, "guidance_scale": 0.0}


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[Client]:
    c = Client(server.url, verbose=False)
    yield c
    c.close()


def ui_generate(client: Client, **fields: object) -> tuple[bytes, str]:
    path, status = client.predict(**{**UI_DEFAULTS, **fields}, api_name="/generate")
    return Path(path).read_bytes(), status


def test_ui_generate_misses_then_hits_memory_with_the_api_bytes(client: Client, server: Server) -> None:
    fields = {"prompt": "a UI teapot", "width": 128, "height": 96, "seed": 8}
    first, status1 = ui_generate(client, **fields)
    second, status2 = ui_generate(client, **fields)
    assert status1.startswith("generated · ") and status1.endswith("seed 8")
    assert status2.startswith("memory hit · ")
    assert first == second
    api = server.client.post("/generate", json={**fields, "steps": 8})
    assert api.headers["x-cache"] == "memory"
    assert api.content == first  # the UI shows the stored bytes, not a re-encoding


def test_ui_reports_bad_input_without_a_traceback(client: Client) -> None:
    with pytest.raises(Exception, match="multiple of 16") as info:
        ui_generate(client, prompt="x", width=100, height=64)
    assert "Traceback" not in str(info.value)


def test_ui_hit_does_not_wait_behind_a_ui_generation(client: Client, server: Server) -> None:
    cached, _ = ui_generate(client, prompt="a quick UI hit", width=64, height=64)
    generations = server.client.get("/api/cache/stats").json()["generations"]
    slow = client.submit(
        **{**UI_DEFAULTS, "prompt": "a slow UI image", "width": 1024, "height": 1024, "steps": 30},
        api_name="/generate",
    )
    deadline = time.monotonic() + 30
    while server.client.get("/api/cache/stats").json()["generations"] == generations:
        assert time.monotonic() < deadline, "the slow generation never started"
        time.sleep(0.05)
    hit, status = ui_generate(client, prompt="a quick UI hit", width=64, height=64)
    slow_was_running = not slow.done()
    _, slow_status = slow.result(timeout=120)
    assert status.startswith("memory hit")
    assert hit == cached
    assert slow_was_running, "the hit should have answered while the UI generation was still running"
    assert slow_status.startswith("generated")
