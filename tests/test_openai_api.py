"""The OpenAI-compatible Images API, with the official `openai` package as the client,
and raw requests in the shapes Open WebUI and LiteLLM send."""

from __future__ import annotations

import base64
import io
import json

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import KEYED_TOKEN, Server


def sdk(server: Server, api_key: str = "unused-without-api-keys") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0, timeout=120)


def generations(server: Server, body: dict, headers: dict[str, str] | None = None) -> dict:
    """POST /v1/images/generations as a raw client sends it: the JSON of its 200 answer."""
    resp = server.client.post("/v1/images/generations", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(data)).size


def test_sdk_generates_n_images_snapped_to_16_with_extra_body_and_hits_the_shared_cache(
    server: Server,
) -> None:
    extra = {"seed": 11, "steps": 4, "negative_prompt": "blurry", "guidance_scale": 1.5}
    ask = {"model": "z-image-turbo", "prompt": "an openai fox", "n": 2, "size": "100x70"}
    first = sdk(server).images.generate(**ask, response_format="b64_json", user="u-1", extra_body=extra)
    assert first.size == "96x64" and first.output_format == "png"
    assert [image.seed for image in first.data] == [11, 12]
    assert [image.cache for image in first.data] == ["miss", "miss"]
    images = [base64.b64decode(image.b64_json) for image in first.data]
    assert [png_size(data) for data in images] == [(96, 64), (96, 64)]
    parameters = Image.open(io.BytesIO(images[1])).info["parameters"]
    assert "Negative prompt: blurry" in parameters and "Seed: 12" in parameters and "Steps: 4" in parameters

    again = sdk(server).images.generate(**ask, response_format="b64_json", extra_body=extra)
    assert [image.cache for image in again.data] == ["memory", "memory"]
    assert [base64.b64decode(image.b64_json) for image in again.data] == images

    # The same cache as every other route: /run finds the second image.
    run = server.client.get(
        "/run",
        params={"prompt": "an openai fox", "width": 96, "height": 64, **extra, "seed": 12},
    ).json()
    assert run["cache"] == "memory"
    assert server.client.get(run["image_url"]).content == images[1]


def test_url_response_is_absolute_fetchable_and_in_the_requested_format(server: Server) -> None:
    result = sdk(server).images.generate(
        prompt="an openai heron",
        size="64x64",
        response_format="url",
        output_format="webp",
        extra_body={"seed": 3},
    )
    assert result.output_format == "webp"
    (image,) = result.data
    assert image.b64_json is None
    assert image.url.startswith(f"{server.url}/images/") and image.url.endswith(".webp")
    fetched = httpx.get(image.url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/webp"
    assert fetched.content[:4] == b"RIFF" and fetched.content[8:12] == b"WEBP"


def test_size_is_clamped_to_the_models_range_and_auto_means_1024(server: Server) -> None:
    body = {"prompt": "an openai clamp", "size": "10x20", "response_format": "url", "seed": 1}
    assert server.client.post("/v1/images/generations", json=body).json()["size"] == "64x64"
    models = sdk(server).models.list()
    assert [m.id for m in models.data] == ["z-image-turbo"]


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": "a", "n": 9}, "n", "8"),
        ({"prompt": "a", "size": "big"}, "size", "WIDTHxHEIGHT"),
        ({"prompt": "a", "extra_body": {"steps": 99}}, "steps", "between 1 and 50"),
        ({"prompt": "a", "extra_body": {"colour": "red"}}, "colour", "unrecognized"),
        ({"prompt": "a", "extra_body": {"seed": -5}}, "seed", "-1 (random)"),
    ],
)
def test_bad_input_is_a_400_in_openais_error_shape(
    server: Server, kwargs: dict, param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).images.generate(**kwargs)
    error = caught.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]


def test_an_oversized_body_is_a_413_in_openais_shape(server: Server) -> None:
    body = json.dumps({"prompt": "x" * 70_000}).encode()
    sized = server.client.post(
        "/v1/images/generations", content=body, headers={"content-type": "application/json"}
    )
    chunked = server.client.post(
        "/v1/images/generations", content=iter([body]), headers={"content-type": "application/json"}
    )
    for resp in (sized, chunked):
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "request_too_large"


def test_open_webui_request_shape(server: Server) -> None:
    # open_webui/routers/images.py, engine "openai": model, prompt, n, size, response_format.
    ask = {"model": "z-image-turbo", "prompt": "an open webui owl", "n": 1, "size": "128x128"}
    headers = {"Authorization": "Bearer sk-anything", "Content-Type": "application/json"}
    (image,) = generations(server, {**ask, "response_format": "b64_json"}, headers)["data"]
    assert png_size(base64.b64decode(image["b64_json"])) == (128, 128)
    assert "url" not in image


def test_librechat_dalle3_request_shape_gets_a_url_by_default(server: Server) -> None:
    # LibreChat's DALL-E 3 tool (DALLE_REVERSE_PROXY): no response_format, reads data[0].url
    # (its sizes start at 1024x1024; a smaller one keeps the test fast).
    ask = {"model": "dall-e-3", "quality": "standard", "style": "vivid", "prompt": "a librechat loon", "n": 1}
    (image,) = generations(server, {**ask, "size": "256x192"})["data"]
    assert "b64_json" not in image and image["url"].endswith(".png")
    assert png_size(httpx.get(image["url"]).content) == (256, 192)
    gpt_image = server.client.post(
        "/v1/images/generations", json={"model": "gpt-image-1", "prompt": "a librechat loon", "size": "64x64"}
    )
    assert "b64_json" in gpt_image.json()["data"][0]


def test_litellm_request_shape(server: Server) -> None:
    # LiteLLM's OpenAI-compatible provider: its optional params, `user` and `quality` included.
    ask = {"model": "z-image-turbo", "prompt": "a litellm lynx", "n": 1, "size": "64x64"}
    body = generations(
        server, {**ask, "quality": "standard", "user": "litellm-user", "response_format": "url"}
    )
    assert isinstance(body["created"], int)
    assert httpx.get(body["data"][0]["url"]).status_code == 200


def test_with_api_keys_the_sdk_key_is_the_token_and_errors_keep_the_shape(keyed_server: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(keyed_server, "wrong-token-0123456789").images.generate(prompt="a keyed fox", size="64x64")
    error = caught.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        sdk(keyed_server, "wrong-token-0123456789").models.list()

    result = sdk(keyed_server, KEYED_TOKEN).images.generate(
        prompt="a keyed fox", size="64x64", response_format="url", extra_body={"seed": 4}
    )
    url = result.data[0].url
    # Stored in the token's namespace: the URL is signed for it (tests/test_signed_urls.py),
    # and its path alone needs the token.
    assert httpx.get(url).status_code == 200
    path = url.partition("?")[0]
    assert httpx.get(path).status_code == 401
    assert httpx.get(path, headers={"Authorization": f"Bearer {KEYED_TOKEN}"}).status_code == 200
