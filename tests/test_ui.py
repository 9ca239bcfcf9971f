"""The Gradio UI's generate event, driven through gradio_client against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from bench.procs import wait_until
from tests.conftest import Server


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[Client]:
    c = Client(server.url, verbose=False)
    yield c
    c.close()


def ui_generate(client: Client, **fields: object) -> tuple[list[bytes], list[str], str]:
    """Call api_name="generate" with keyword parameters named like the request fields."""
    gallery, status, _history = client.predict(**fields, api_name="/generate")
    return (
        [Path(item["image"]).read_bytes() for item in gallery],
        [item["caption"] for item in gallery],
        status,
    )


def test_ui_generate_misses_then_hits_memory_with_the_api_bytes(client: Client, server: Server) -> None:
    fields = {"prompt": "a UI teapot", "width": 128, "height": 96, "seed": 8}
    first, captions1, status1 = ui_generate(client, **fields)
    second, captions2, status2 = ui_generate(client, **fields)
    assert captions2[0].startswith("seed 8 · memory hit")
    assert status1.startswith("miss · generated in ") and status1.endswith("seed 8")
    assert status2.startswith("memory hit · ")
    assert captions1[0].startswith("seed 8 · miss")
    assert first == second
    api = server.client.post("/generate", json={**fields, "steps": 8})
    assert api.headers["x-cache"] == "memory"
    assert api.content == first[0]  # the UI shows the stored bytes, not a re-encoding


def test_ui_batch_gives_each_image_its_own_seed_and_tier(client: Client) -> None:
    ui_generate(client, prompt="a UI batch", width=64, height=64, seed=100)  # seed 100 cached
    images, captions, status = ui_generate(
        client, prompt="a UI batch", width=64, height=64, seed=100, batch_size=3
    )
    assert len(images) == 3 and len(set(images)) == 3
    assert [c.split(" · ")[0] for c in captions] == ["seed 100", "seed 101", "seed 102"]
    assert captions[0].startswith("seed 100 · memory hit") and "miss" in captions[1]
    assert status.startswith("memory + miss") and status.endswith("seeds 100, 101, 102")
    # Each its own time: the hit's is its lookup, not the batch's generation.
    took = [seconds(c.rsplit(" · ", 1)[1].removeprefix("generated in ")) for c in captions]
    assert took[0] < min(took[1:])


def seconds(text: str) -> float:
    number, unit = text.split()
    return float(number) / (1000 if unit == "ms" else 1)


def test_ui_bypass_toggle_neither_reads_nor_writes(client: Client) -> None:
    _, _, status = ui_generate(client, prompt="a UI bypass", width=64, height=64, no_cache=True)
    assert status.startswith("bypass · generated in ")
    _, _, status = ui_generate(client, prompt="a UI bypass", width=64, height=64)
    assert status.startswith("miss")


def test_ui_reports_bad_input_without_a_traceback(client: Client) -> None:
    with pytest.raises(Exception, match="multiple of 16") as info:
        ui_generate(client, prompt="x", width=100, height=64)
    assert "Traceback" not in str(info.value)


def test_ui_hit_does_not_wait_behind_a_ui_generation(client: Client, server: Server) -> None:
    cached, _, _ = ui_generate(client, prompt="a quick UI hit", width=64, height=64)
    generations = server.client.get("/api/cache/stats").json()["generations"]
    slow = client.submit(prompt="a slow UI image", width=1024, height=1024, steps=30, api_name="/generate")
    wait_until(
        lambda: server.client.get("/api/cache/stats").json()["generations"] > generations,
        "the slow generation to start",
        timeout_s=30,
    )
    hit, _, status = ui_generate(client, prompt="a quick UI hit", width=64, height=64)
    slow_was_running = not slow.done()
    _, slow_status, _ = slow.result(timeout=120)
    assert status.startswith("memory hit")
    assert hit == cached
    assert slow_was_running, "the hit should have answered while the UI generation was still running"
    assert slow_status.startswith("miss")


def test_ui_api_keeps_the_api_seed_default_while_the_page_draws_a_new_one(client: Client) -> None:
    # The page's seed box starts at -1 (a new seed each press); a gradio_client caller
    # that names no seed gets the API's 42, so that a repeated call is a hit.
    _, captions, status = ui_generate(client, prompt="a UI default seed", width=64, height=64)
    assert status.endswith("seed 42") and captions[0].startswith("seed 42 · miss")
    params = {
        p["parameter_name"]: p
        for p in client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"][
            "parameters"
        ]
    }
    assert params["seed"]["parameter_default"] == 42


def test_view_api_types_whole_inputs_as_int_and_keeps_the_page_events_private(client: Client) -> None:
    api = client.view_api(return_format="dict", print_info=False)
    params = {p["parameter_name"]: p for p in api["named_endpoints"]["/generate"]["parameters"]}
    assert params["steps"]["python_type"]["type"] == "int"
    assert params["batch_size"]["python_type"]["type"] == "int"
    assert params["guidance_scale"]["python_type"]["type"] == "float"
    # Labels are plain English, not Gradio's i18n dicts.
    returns = api["named_endpoints"]["/generate"]["returns"]
    labels = [item["label"] for item in (*returns, *params.values())]
    assert all(isinstance(label, str) for label in labels), labels
    assert params["steps"]["label"] == "Steps"
    # The examples' event is the page's: neither listed nor callable.
    assert "/load_example" not in api["named_endpoints"] and not api["unnamed_endpoints"]
    with pytest.raises(Exception, match="load_example"):
        client.predict(0, api_name="/load_example")


@pytest.mark.parametrize("field", ["steps", "batch_size"])
def test_a_fraction_for_a_whole_input_is_refused_naming_it(client: Client, field: str) -> None:
    fields = {"prompt": "a fractional owl", "width": 64, "height": 64, field: 2.5}
    with pytest.raises(Exception, match=f"{field} must be a whole number"):
        client.predict(**fields, api_name="/generate")
