"""LoRAs through every route (issue 24): ours (`/generate`, `/api/generate`, `/run`),
A1111's prompt tags and `/sdapi/v1/loras` with the `webuiapi` package, the OpenAI
SDK's `extra_body`, the MCP SDK, and `/api/info`; one server with a `--lora-dir`."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import webuiapi
from PIL import Image
from sd_parsers import ParserManager
from sd_parsers.data import Generators

from pipeline.lora import a1111_short_hash
from pipeline.png_info import parse_parameters
from pipeline.tiny_model import DEMO_LORA_NAME, ensure_demo_lora
from tests.conftest import Server
from tests.test_mcp import mcp_session

ASK = {"prompt": "a lora lantern", "width": 64, "height": 64, "steps": 2, "seed": 5}
DEMO = {"name": DEMO_LORA_NAME, "scale": 0.8}


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("lora-server")
    loras = root / "loras"
    loras.mkdir()
    shutil.copy(ensure_demo_lora(root / "built"), loras / "style.safetensors")
    (loras / "broken.safetensors").write_bytes(b"not a safetensors file")
    srv = Server(root / "cache", "--lora-dir", str(loras)).wait_ready(timeout_s=600)
    yield srv
    srv.stop()


def test_our_routes_key_a_lora_by_content_and_scale(lora_server: Server) -> None:
    client = lora_server.client
    plain = client.post("/generate", json=ASK)
    first = client.post("/generate", json=ASK | {"loras": [DEMO]})
    again = client.post("/generate", json=ASK | {"loras": [DEMO]})
    assert (plain.status_code, first.status_code) == (200, 200)
    assert first.headers["X-Cache"] == "miss" and again.headers["X-Cache"] == "memory"
    assert first.content == again.content != plain.content
    # The same file under another name: the same key; another scale: another image.
    renamed = client.post("/api/generate", json=ASK | {"loras": [{"name": "style", "scale": 0.8}]}).json()
    assert renamed["images"][0]["key"] == first.headers["X-Key"]
    assert renamed["images"][0]["cache"] == "memory"
    other = client.post("/api/generate", json=ASK | {"loras": [DEMO | {"scale": 0.3}]}).json()
    assert other["images"][0]["cache"] == "miss"
    # /run: the repeatable `lora=name:scale`.
    run = client.get("/run", params=[*ASK.items(), ("lora", f"{DEMO_LORA_NAME}:0.8")]).json()
    assert (run["key"], run["cache"]) == (first.headers["X-Key"], "memory")
    two = client.get("/run", params=[*ASK.items(), ("lora", "style:0.5"), ("lora", f"{DEMO_LORA_NAME}:0.2")])
    assert two.status_code == 200 and two.json()["cache"] == "miss"


def test_bad_loras_get_422_naming_them_and_the_server_stays_up(lora_server: Server) -> None:
    client = lora_server.client
    unknown = client.post("/generate", json=ASK | {"loras": [{"name": "nope", "scale": 1}]})
    assert unknown.status_code == 422 and "'nope'" in unknown.text and "style" in unknown.text
    corrupt = client.post("/api/generate", json=ASK | {"loras": [{"name": "broken"}]})
    assert corrupt.status_code == 422 and "broken.safetensors" in corrupt.text
    five = client.post("/generate", json=ASK | {"loras": [{"name": f"l{i}"} for i in range(5)]})
    assert five.status_code == 422 and "at most 4" in five.text
    bad_scale = client.get("/run", params=[*ASK.items(), ("lora", "style:lots")])
    assert bad_scale.status_code == 422 and "lora" in bad_scale.text
    assert client.get("/health").status_code == 200
    assert client.post("/generate", json=ASK | {"prompt": "still serving"}).status_code == 200


def test_api_info_and_a1111_list_the_loras(lora_server: Server) -> None:
    listed = lora_server.client.get("/api/info").json()["loras"]
    assert [lora["name"] for lora in listed] == ["broken", "style", DEMO_LORA_NAME]
    assert all("/" not in lora["file"] for lora in listed)  # no server paths
    api = webuiapi.WebUIApi(baseurl=f"{lora_server.url}/sdapi/v1")
    assert [lora["name"] for lora in api.get_loras()] == ["broken", "style", DEMO_LORA_NAME]


def test_a1111_prompt_tags_name_loras_as_a1111_reads_them(lora_server: Server) -> None:
    api = webuiapi.WebUIApi(baseurl=f"{lora_server.url}/sdapi/v1")
    plain = lora_server.client.post("/api/generate", json=ASK | {"prompt": "an a1111 tag"}).json()
    with_tag = lora_server.client.post(
        "/api/generate", json=ASK | {"prompt": "an a1111 tag", "loras": [{"name": "style", "scale": 0.7}]}
    ).json()
    result = api.txt2img(
        prompt="an a1111 tag <lora:style:0.7>", width=64, height=64, steps=2, seed=5, cfg_scale=1
    )
    info = json.loads(json.dumps(result.info))
    assert info["keys"] == [with_tag["images"][0]["key"]] != [plain["images"][0]["key"]]
    assert info["cache"] == ["memory"] and info["prompt"] == "an a1111 tag"
    assert info["infotexts"][0].startswith("an a1111 tag <lora:style:0.7>\n")  # as A1111 writes it
    with pytest.raises(RuntimeError, match="nope"):  # webuiapi raises on a non-200 answer
        api.txt2img(prompt="x <lora:nope:1>", width=64, height=64, steps=2)


def test_the_image_names_its_loras_as_a1111_writes_them(lora_server: Server, tmp_path: Path) -> None:
    data = lora_server.client.post("/generate", json=ASK | {"loras": [DEMO]}).content
    text = Image.open(io.BytesIO(data)).info["parameters"]
    short = a1111_short_hash(ensure_demo_lora(tmp_path))
    prompt_line, fields = text.split("\n")
    assert prompt_line == "a lora lantern <lora:tiny-demo:0.8>"
    assert fields.endswith(f'Lora hashes: "tiny-demo: {short}"')
    # sd-parsers (a real reader) still finds the A1111 fields, the tag in the prompt.
    parsed = ParserManager().parse(io.BytesIO(data))
    assert parsed is not None and parsed.generator == Generators.AUTOMATIC1111
    (sampler,) = parsed.samplers
    assert sampler.name == "Euler" and sampler.parameters["seed"] == "5"
    assert [p.value for p in sampler.prompts] == [prompt_line]
    # Read back (PNG Info): the prompt without its tag, and the LoRA.
    read = parse_parameters(text)
    assert (read["prompt"], read["loras"]) == ("a lora lantern", [DEMO])


def test_the_openai_sdk_takes_loras_in_extra_body(lora_server: Server) -> None:
    sdk = openai.OpenAI(base_url=f"{lora_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    extra = {"seed": 5, "steps": 2, "loras": [DEMO]}
    plain = sdk.images.generate(
        prompt="an openai lora", size="64x64", response_format="b64_json", extra_body=extra | {"loras": []}
    )
    first = sdk.images.generate(
        prompt="an openai lora", size="64x64", response_format="b64_json", extra_body=extra
    )
    again = sdk.images.generate(
        prompt="an openai lora", size="64x64", response_format="b64_json", extra_body=extra
    )
    assert first.data[0].model_extra["cache"] == "miss" and again.data[0].model_extra["cache"] == "memory"
    assert base64.b64decode(first.data[0].b64_json) != base64.b64decode(plain.data[0].b64_json)
    with pytest.raises(openai.BadRequestError, match="nope"):
        sdk.images.generate(prompt="x", size="64x64", extra_body={"loras": [{"name": "nope"}]})


def test_the_mcp_tool_takes_loras(lora_server: Server) -> None:
    async def calls() -> tuple:
        async with mcp_session(lora_server) as client:
            args = {"prompt": "an mcp lora", "width": 64, "height": 64, "seed": 5, "steps": 2}
            plain = await client.call_tool("generate_image", args)
            first = await client.call_tool("generate_image", args | {"loras": [DEMO]})
            again = await client.call_tool("generate_image", args | {"loras": [DEMO]})
            bad = await client.call_tool("generate_image", args | {"loras": [{"name": "nope"}]})
        return plain, first, again, bad

    plain, first, again, bad = asyncio.run(calls())
    assert first.structured_content["cache"] == "miss" and again.structured_content["cache"] == "memory"
    assert (
        first.structured_content["key"] == again.structured_content["key"] != plain.structured_content["key"]
    )
    assert bad.is_error and "nope" in bad.content[0].text
