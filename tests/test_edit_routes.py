"""The image-input routes on a real server with the tiny model: our `/api/edit`,
OpenAI's `/v1/images/edits` (the `openai` SDK) and A1111's `/sdapi/v1/img2img`
(`webuiapi`); the key by decoded pixels, namespaces, the upload limit."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import httpx2
import numpy as np
import openai
import pytest
import webuiapi
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from tests.conftest import Server
from tests.engines import pixels
from tests.test_image_input import encoded, picture, square_mask
from tests.test_mcp import mcp_session

SIZE = 64


def edit(
    server: Server, image: bytes, *, mask: bytes | None = None, headers: dict | None = None, **fields: object
):
    files = {"image": ("in.png", image, "image/png")}
    if mask is not None:
        files["mask"] = ("mask.png", mask, "image/png")
    data = {
        "prompt": "an edited lantern",
        "steps": "4",
        "seed": "3",
        **{k: str(v) for k, v in fields.items()},
    }
    return server.client.post("/api/edit", files=files, data=data, headers=headers)


def ok(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_api_edit_hits_by_pixels_misses_on_one_pixel_and_differs_from_text_to_image(server: Server) -> None:
    array = picture(11)
    first = ok(edit(server, encoded(array)))
    assert first["kind"] == "img2img" and (first["width"], first["height"]) == (SIZE, SIZE)
    assert first["images"][0]["cache"] == "miss"
    again = ok(edit(server, encoded(array)))
    assert again["images"][0] | {"duration": 0} == first["images"][0] | {"duration": 0, "cache": "memory"}
    webp = ok(edit(server, encoded(array, "WEBP", lossless=True)))
    assert (webp["images"][0]["key"], webp["images"][0]["cache"]) == (first["images"][0]["key"], "memory")
    changed = array.copy()
    changed[10, 20, 2] ^= 1
    other = ok(edit(server, encoded(changed)))
    assert other["images"][0]["cache"] == "miss" and other["images"][0]["key"] != first["images"][0]["key"]
    stronger = ok(edit(server, encoded(array), strength=0.9))
    assert stronger["images"][0]["cache"] == "miss"

    made = server.client.get(first["images"][0]["image_url"]).content
    plain = ok(
        server.client.get(
            "/run",
            params={"prompt": "an edited lantern", "steps": 4, "seed": 3, "width": SIZE, "height": SIZE},
        )
    )
    assert plain["key"] != first["images"][0]["key"]
    assert not np.array_equal(pixels(made), pixels(server.client.get(plain["image_url"]).content))


def test_api_edit_inpaints_with_a_mask_and_edits_are_namespaced(server: Server) -> None:
    array = picture(12)
    masked = ok(
        edit(server, encoded(array), mask=encoded(square_mask()), headers={"X-Namespace": "tenant-a"})
    )
    assert masked["kind"] == "inpaint" and masked["strength"] == 1.0
    assert masked["images"][0]["cache"] == "miss"
    # Another tenant asking for the very same edit learns nothing: its own miss.
    theirs = ok(
        edit(server, encoded(array), mask=encoded(square_mask()), headers={"X-Namespace": "tenant-b"})
    )
    assert theirs["images"][0]["cache"] == "miss"
    mine = ok(edit(server, encoded(array), mask=encoded(square_mask()), headers={"X-Namespace": "tenant-a"}))
    assert mine["images"][0]["cache"] == "memory"


@pytest.mark.parametrize(
    ("files", "fields", "where"),
    [
        ({"image": ("x.png", b"not an image at all", "image/png")}, {}, "image"),
        ({"image": ("x.gif", b"GIF89a" + bytes(40), "image/gif")}, {}, "image"),
        ({}, {}, "image"),
        ({"image": ("x.png", encoded(picture()), "image/png")}, {"strength": "1.5"}, "strength"),
        ({"image": ("x.png", encoded(picture()), "image/png")}, {"strength": "lots"}, "strength"),
        ({"image": ("x.png", encoded(picture()), "image/png")}, {"steps": "500"}, "steps"),
        (
            {
                "image": ("x.png", encoded(picture()), "image/png"),
                "mask": ("m.png", b"\x89PNG broken", "image/png"),
            },
            {},
            "mask",
        ),
    ],
)
def test_api_edit_bad_input_is_a_422_naming_the_field(
    server: Server, files: dict, fields: dict, where: str
) -> None:
    data = {"prompt": "a bad edit", **fields}
    resp = server.client.post("/api/edit", files=files or {"other": ("o.txt", b"x", "text/plain")}, data=data)
    assert resp.status_code == 422, resp.text
    assert [d["loc"][-1] for d in resp.json()["detail"]] == [where]


def test_api_edit_takes_loras_each_scale_its_own_key_and_image(server: Server) -> None:
    image = encoded(picture(15))

    def with_lora(scale: float, name: str = "tiny-demo") -> httpx.Response:
        return edit(server, image, loras=json.dumps([{"name": name, "scale": scale}]))

    plain = ok(edit(server, image))["images"][0]
    first = ok(with_lora(0.5))["images"][0]
    again = ok(with_lora(0.5))["images"][0]
    other = ok(with_lora(0.8))["images"][0]
    assert (first["cache"], again["cache"], other["cache"]) == ("miss", "memory", "miss")
    assert again["key"] == first["key"] and len({plain["key"], first["key"], other["key"]}) == 3
    shown = [pixels(server.client.get(i["image_url"]).content) for i in (plain, first, other)]
    assert not np.array_equal(shown[0], shown[1]) and not np.array_equal(shown[1], shown[2])
    for resp in (with_lora(0.5, "nope"), with_lora(99), edit(server, image, loras="tiny-demo:0.5")):
        assert resp.status_code == 422 and resp.json()["detail"][0]["loc"][1] == "loras", resp.text


def test_uploads_take_20_mb_on_the_edit_routes_only(server: Server) -> None:
    noisy = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    big = encoded(noisy)  # ~200 KB: over every other route's 64 KB
    assert len(big) > 64 * 1024
    body = ok(edit(server, big, steps=1, width=64, height=64))
    assert body["images"][0]["cache"] in ("miss", "memory")
    too_big = server.client.post(
        "/api/edit",
        content=b"x" * (21 * 1024 * 1024),
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert too_big.status_code == 413
    elsewhere = server.client.post("/api/generate", content=big, headers={"Content-Type": "application/json"})
    assert elsewhere.status_code == 413


def test_openai_sdk_images_edit_with_and_without_a_mask(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    image = encoded(picture(13))
    extra = {"seed": 21, "steps": 4}
    first = client.images.edit(
        image=("in.png", image, "image/png"),
        prompt="an openai edit",
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body=extra,
    )
    assert [d.cache for d in first.data] == ["miss", "miss"] and first.size == "64x64"
    again = client.images.edit(
        image=("in.webp", encoded(picture(13), "WEBP", lossless=True), "image/webp"),
        prompt="an openai edit",
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body=extra,
    )
    assert [d.cache for d in again.data] == ["memory", "memory"]
    assert [d.b64_json for d in again.data] == [d.b64_json for d in first.data]
    masked = client.images.edit(
        image=("in.png", image, "image/png"),
        mask=("m.png", encoded(square_mask()), "image/png"),
        prompt="an openai edit",
        size="64x64",
        response_format="url",
        extra_body=extra,
    )
    assert masked.data[0].cache == "miss"
    fetched = httpx.get(masked.data[0].url)
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    assert fetched.content != base64.b64decode(first.data[0].b64_json)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("in.png", b"nope", "image/png"), prompt="an openai edit")
    assert caught.value.body["param"] == "image"  # type: ignore[index]


def test_webuiapi_img2img_and_inpainting(server: Server) -> None:
    api = webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1")
    image = Image.fromarray(picture(14))
    ask = {"prompt": "an a1111 edit", "seed": 31, "steps": 4, "width": 64, "height": 64, "cfg_scale": 1}
    first = api.img2img(images=[image], denoising_strength=0.6, **ask)
    assert first.info["cache"] == ["miss"]
    again = api.img2img(images=[image], denoising_strength=0.6, **ask)
    assert again.info["cache"] == ["memory"]
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))
    other = api.img2img(images=[image], denoising_strength=0.7, **ask)
    assert other.info["cache"] == ["miss"]
    mask = Image.fromarray(square_mask())
    inpainted = api.img2img(images=[image], mask_image=mask, denoising_strength=0.6, **ask)
    inverted = api.img2img(
        images=[image], mask_image=mask, inpainting_mask_invert=1, denoising_strength=0.6, **ask
    )
    assert inpainted.info["cache"] == ["miss"] and inverted.info["cache"] == ["miss"]
    assert inpainted.info["keys"] != inverted.info["keys"]
    bad = server.client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": ["!!notbase64"]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "init_images[0]"
    empty = server.client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": []})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"][-1] == "init_images"


def test_mcp_edit_image_takes_base64_or_a_cached_url_of_its_own_namespace(server: Server) -> None:
    made = ok(
        server.client.get(
            "/run", params={"prompt": "an mcp source", "steps": 1, "width": 64, "height": 64, "seed": 1}
        )
    )
    url = f"{server.url}{made['image_url']}"
    source = server.client.get(made["image_url"]).content
    ask = {"prompt": "an mcp edit", "seed": 5, "steps": 4, "strength": 0.6}

    async def calls() -> list:
        async with mcp_session(server) as client:
            return [
                await client.call_tool("edit_image", {**ask, "image": base64.b64encode(source).decode()}),
                await client.call_tool("edit_image", {**ask, "image": url}),
                await client.call_tool("edit_image", {**ask, "image": made["image_url"]}),
                await client.call_tool("edit_image", {**ask, "image": f"{server.url}/images/{'0' * 64}.png"}),
                await client.call_tool("edit_image", {**ask, "image": "http://example.com/cat.png"}),
                await client.call_tool("edit_image", {**ask, "image": "bm90IGFuIGltYWdl"}),
            ]

    by_bytes, by_url, by_path, unknown, foreign, garbage = asyncio.run(calls())
    assert not by_bytes.is_error and by_bytes.structured_content["cache"] == "miss"
    assert by_url.structured_content["cache"] == "memory" == by_path.structured_content["cache"]
    assert by_url.structured_content["key"] == by_bytes.structured_content["key"]
    for refused in (unknown, foreign, garbage):
        assert refused.is_error and "image" in refused.content[0].text

    async def other_tenant() -> object:
        http = httpx2.AsyncClient(headers={"X-Namespace": "tenant-mcp"}, timeout=120)
        async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client:
            return await client.call_tool("edit_image", {**ask, "image": url})

    # Another namespace cannot use this one's cached image by its URL.
    theirs = asyncio.run(other_tenant())
    assert theirs.is_error and "cache" in theirs.content[0].text
