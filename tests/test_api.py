"""The HTTP API against a real server process with the tiny model."""

from __future__ import annotations

import io
import json
import threading

import pytest
from PIL import Image

from tests.conftest import Server, wait_generating


def run(server: Server, **params: object) -> dict:
    resp = server.client.get("/run", params=params)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert resp.headers["x-cache"] == body["cache"]
    assert "total;dur=" in resp.headers["server-timing"]
    return body


def image_bytes(server: Server, body: dict) -> bytes:
    resp = server.client.get(body["image_url"])
    assert resp.status_code == 200
    return resp.content


def test_health_reports_ready_model_and_device(server: Server) -> None:
    assert server.client.get("/health").json() == {"status": "ok", "model": "ready", "device": "cpu"}
    assert server.client.get("/ready").json() == {"status": "ready"}


def test_miss_then_memory_hit_returns_identical_bytes(server: Server) -> None:
    first = run(server, prompt="a lighthouse at dusk", width=128, height=128)
    second = run(server, prompt="a lighthouse at dusk", width=128, height=128)
    assert (first["cache"], second["cache"]) == ("miss", "memory")
    assert first["key"] == second["key"]
    assert first["seed"] == second["seed"] == 42
    assert image_bytes(server, first) == image_bytes(server, second)
    assert second["duration"] < first["duration"]


def test_prompt_normalization_maps_spacing_variants_to_one_key(server: Server) -> None:
    first = run(server, prompt="two  cats\non a sofa ", width=64, height=64)
    second = run(server, prompt=" two cats on a sofa", width=64, height=64)
    assert first["key"] == second["key"]
    assert second["cache"] == "memory"


def test_bypass_neither_reads_nor_writes_and_gives_the_same_bytes(server: Server) -> None:
    body = {"prompt": "an origami crane", "width": 80, "height": 112, "seed": 99, "steps": 8}
    generations = server.client.get("/api/cache/stats").json()["generations"]

    bypassed = server.client.post("/generate", params={"no_cache": "true"}, json=body)
    assert bypassed.headers["x-cache"] == "bypass"
    key = bypassed.headers["x-key"]
    assert server.client.get(f"/images/{key}.png").status_code == 404  # not written

    cached = server.client.post("/generate", json=body)
    assert cached.headers["x-cache"] == "miss"  # the bypass wrote nothing to find
    assert cached.headers["x-key"] == key
    assert cached.content == bypassed.content

    again = server.client.post("/generate", params={"no_cache": "true"}, json=body)
    assert again.headers["x-cache"] == "bypass"  # never read, though stored now
    assert again.content == cached.content
    assert server.client.get("/api/cache/stats").json()["generations"] == generations + 3


def test_run_with_bypass_offers_no_image_url(server: Server) -> None:
    body = run(server, prompt="a kite", width=64, height=64, no_cache="true")
    assert body["cache"] == "bypass"
    assert body["image_url"] is None


def test_generate_returns_png_of_requested_size_with_params(server: Server) -> None:
    resp = server.client.post(
        "/generate", json={"prompt": "a mountain lake", "width": 320, "height": 192, "steps": 8, "seed": 7}
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/png"
    assert resp.headers["x-cache"] in {"miss", "memory", "disk"}
    assert resp.headers["x-seed"] == "7"
    assert resp.content.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(resp.content))
    assert img.size == (320, 192)
    params = json.loads(img.info["zimage"])
    assert params["prompt"] == "a mountain lake"
    assert params["seed"] == 7
    assert "Seed: 7" in img.info["parameters"]


def test_random_seed_is_reported_and_regenerating_with_it_hits(server: Server) -> None:
    first = run(server, prompt="a paper boat", width=64, height=64, seed=-1)
    assert 0 <= first["seed"] < 2**32
    again = run(server, prompt="a paper boat", width=64, height=64, seed=first["seed"])
    assert again["cache"] == "memory"
    assert again["key"] == first["key"]


def test_image_route_etag_and_404s(server: Server) -> None:
    body = run(server, prompt="a snail", width=64, height=64)
    resp = server.client.get(body["image_url"])
    assert resp.headers["etag"] == f'"{body["key"]}"'
    assert "immutable" in resp.headers["cache-control"]
    assert (
        server.client.get(body["image_url"], headers={"If-None-Match": resp.headers["etag"]}).status_code
        == 304
    )
    assert server.client.get(f"/images/{'0' * 64}.png").status_code == 404
    assert server.client.get(f"/images/{'0' * 64}.webp").status_code == 404
    assert server.client.get(f"/images/{body['key']}.webp").status_code == 200  # made from the PNG
    assert server.client.get("/images/..%2f..%2fetc%2fpasswd").status_code == 404
    assert server.client.get("/images/nothex.png").status_code == 404


def test_cache_stats_count_requests_generations_and_tiers(server: Server) -> None:
    before = server.client.get("/api/cache/stats").json()
    run(server, prompt="stats probe", width=64, height=64, seed=3)
    run(server, prompt="stats probe", width=64, height=64, seed=3)
    after = server.client.get("/api/cache/stats").json()
    assert after["requests"] - before["requests"] == 2
    assert after["generations"] - before["generations"] == 1
    assert after["tiers"]["memory"]["hits"] - before["tiers"]["memory"]["hits"] == 1
    assert after["tiers"]["memory"]["entries"] >= 1
    assert after["tiers"]["disk"]["entries"] == before["tiers"]["disk"]["entries"] + 1
    assert after["tiers"]["disk"]["bytes"] > before["tiers"]["disk"]["bytes"]
    assert 0 < after["hit_rate"] < 1


BAD_REQUESTS = [
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": "   "}, "prompt", "empty"),
    ({"prompt": "x" * 2001}, "prompt", "2000"),
    ({"prompt": "a", "width": 1000}, "width", "multiple of 16"),
    ({"prompt": "a", "height": 1000}, "height", "multiple of 16"),
    ({"prompt": "a", "width": 48}, "width", "between 64 and 2048"),
    ({"prompt": "a", "height": 4096}, "height", "between 64 and 2048"),
    ({"prompt": "a", "width": "wide"}, "width", "integer"),
    ({"prompt": "a", "steps": 0}, "steps", "between 1 and 50"),
    ({"prompt": "a", "steps": 51}, "steps", "between 1 and 50"),
    ({"prompt": "a", "guidance_scale": -1}, "guidance_scale", "between 0 and 20"),
    ({"prompt": "a", "guidance_scale": 21}, "guidance_scale", "between 0 and 20"),
    ({"prompt": "a", "guidance_scale": "nan"}, "guidance_scale", "finite"),
    ({"prompt": "a", "guidance_scale": "inf"}, "guidance_scale", "finite"),
    ({"prompt": "a", "seed": -2}, "seed", "-1 (random)"),
    ({"prompt": "a", "seed": 2**32}, "seed", "-1 (random)"),
    ({"prompt": "a", "format": "gif"}, "format", "png"),
    ({"prompt": "a", "colour": "red"}, "colour", "not permitted"),
]


@pytest.mark.parametrize(("params", "field", "words"), BAD_REQUESTS)
def test_bad_input_gets_422_naming_the_field(server: Server, params: dict, field: str, words: str) -> None:
    resp = server.client.get("/run", params=params)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert [d["loc"] for d in detail] == [["query", field]]
    assert words in detail[0]["msg"]
    assert "Traceback" not in resp.text


def test_bad_generate_query_gets_422_and_no_cache_is_read(server: Server) -> None:
    body = {"prompt": "a no-cache probe", "width": 64, "height": 64}
    bad = server.client.post("/generate", params={"no_cache": "maybe"}, json=body)
    assert bad.status_code == 422, bad.text
    assert [d["loc"] for d in bad.json()["detail"]] == [["query", "no_cache"]]
    first = server.client.post("/generate", json=body)
    assert first.headers["x-cache"] in ("miss", "memory")
    assert (
        server.client.post("/generate", params={"no_cache": "true"}, json=body).headers["x-cache"] == "bypass"
    )
    assert server.client.post("/generate", params={"no_cache": "0"}, json=body).headers["x-cache"] == "memory"


@pytest.mark.parametrize(("params", "field", "words"), [b for b in BAD_REQUESTS if b[1] != "guidance_scale"])
def test_bad_generate_body_gets_422_naming_the_field(
    server: Server, params: dict, field: str, words: str
) -> None:
    resp = server.client.post("/generate", json=params)
    assert resp.status_code == 422, resp.text
    assert [d["loc"][-1] for d in resp.json()["detail"]] == [field]


def test_a_hit_answers_while_a_long_generation_runs(server: Server) -> None:
    warm = run(server, prompt="quick hit", width=64, height=64)
    generations = server.client.get("/api/cache/stats").json()["generations"]
    long_result: dict = {}

    def long_generation() -> None:
        long_result.update(
            run(server, prompt="a slow, large image", width=1024, height=1024, steps=30, seed=11)
        )

    worker = threading.Thread(target=long_generation)
    worker.start()
    # Wait until the engine is busy with it (submitted, and out of the queue), then ask
    # for the cached image.
    wait_generating(server.client, generations, "the long generation to start")
    hit = run(server, prompt="quick hit", width=64, height=64)
    still_running = worker.is_alive()
    worker.join()
    assert hit["cache"] == "memory"
    assert hit["key"] == warm["key"]
    assert still_running, "the hit should have answered while the generation was running"
    assert long_result["cache"] == "miss"
    assert hit["duration"] < long_result["duration"] / 10


def test_one_generation_serves_every_format(server: Server) -> None:
    body = {"prompt": "a format probe", "width": 64, "height": 64}
    generations = server.client.get("/api/cache/stats").json()["generations"]
    png = server.client.post("/generate", json=body)
    webp = server.client.post("/generate", json={**body, "format": "webp"})
    # One key, one generation: the WebP is made from the stored PNG, a hit on its tier.
    assert png.headers["x-key"] == webp.headers["x-key"]
    assert (png.headers["x-cache"], webp.headers["x-cache"]) == ("miss", "memory")
    assert "encode_webp;dur=" in webp.headers["server-timing"]
    assert server.client.get("/api/cache/stats").json()["generations"] == generations + 1
    assert webp.headers["content-type"] == "image/webp"
    assert webp.content[:4] == b"RIFF" and webp.content[8:12] == b"WEBP"
    with Image.open(io.BytesIO(webp.content)) as made, Image.open(io.BytesIO(png.content)) as stored:
        assert made.size == stored.size == (64, 64)
        # Lossy (and the demo model's noise is the worst case for it: about 11 on
        # average), but of the same image: another noise image differs by about 85.
        diff = [abs(a - b) for a, b in zip(made.convert("RGB").tobytes(), stored.tobytes(), strict=True)]
        assert sum(diff) / len(diff) < 30
    # Made once, then stored: a second WebP is the same bytes without an encode.
    again = server.client.post("/generate", json={**body, "format": "webp"})
    assert again.content == webp.content and "encode_webp" not in again.headers["server-timing"]
    assert server.client.get(f"/images/{webp.headers['x-key']}.webp").content == webp.content


def test_a_jpeg_of_an_image_first_asked_for_as_png_is_a_hit(server: Server) -> None:
    first = run(server, prompt="a jpeg probe", width=64, height=80, seed=5)
    assert first["cache"] == "miss" and first["image_url"].endswith(".png")
    key = first["key"]
    made = server.client.get(f"/images/{key}.jpeg")
    assert made.status_code == 200 and made.headers["content-type"] == "image/jpeg"
    assert made.headers["x-cache"] == "memory"  # the tier the stored PNG came from
    assert "encode_jpeg;dur=" in made.headers["server-timing"]
    assert made.content[:3] == b"\xff\xd8\xff"
    # The parameters travel into the JPEG's EXIF, as A1111 writes them there.
    with Image.open(io.BytesIO(made.content)) as jpeg:
        assert "Seed: 5" in piexif_user_comment(jpeg.info["exif"])
    stored = server.client.get(f"/images/{key}.jpeg")
    assert stored.content == made.content and "encode_jpeg" not in stored.headers["server-timing"]
    via_run = run(server, prompt="a jpeg probe", width=64, height=80, seed=5, format="jpeg")
    assert (via_run["key"], via_run["cache"]) == (key, "memory")
    assert via_run["image_url"] == f"/images/{key}.jpeg"
    assert server.client.get(f"/images/{'0' * 64}.jpeg").status_code == 404


def piexif_user_comment(exif: bytes) -> str:
    import piexif
    import piexif.helper

    return piexif.helper.UserComment.load(piexif.load(exif)["Exif"][piexif.ExifIFD.UserComment])
