"""A1111 compatibility: `/sdapi/v1/txt2img` as A1111 clients call it, and the
generation parameters inside PNG, JPEG and WebP files as image tools read them
(`sd-parsers`, `sd-prompt-reader`, Pillow)."""

from __future__ import annotations

import base64
import io
import json
import threading

import httpx
import pytest
import webuiapi
from PIL import Image
from sd_parsers import ParserManager
from sd_parsers.data import Generators
from sd_prompt_reader.image_data_reader import ImageDataReader

from pipeline.image_metadata import SAMPLER
from tests.conftest import KEYED_NAMESPACE, KEYED_TOKEN, Server

EXIF_IFD, USER_COMMENT, IMAGE_DESCRIPTION, SOFTWARE = 0x8769, 0x9286, 0x010E, 0x0131


def test_txt2img_in_the_shape_open_webui_sends(server: Server) -> None:
    # open_webui/routers/images.py, engine "automatic1111", with steps, CFG, sampler
    # and scheduler configured; sizes in multiples of 8, as A1111 allows.
    body = {
        "prompt": "an a1111 kingfisher",
        "batch_size": 2,
        "width": 72,
        "height": 64,
        "steps": 4,
        "negative_prompt": "",
        "cfg_scale": 1,
        "sampler_name": "Euler a",
        "scheduler": "Automatic",
        "seed": 40,
    }
    resp = server.client.post("/sdapi/v1/txt2img", json=body)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    info = json.loads(answer["info"])
    assert info["all_seeds"] == [40, 41]
    assert (info["width"], info["height"], info["steps"]) == (80, 64, 4)  # 72 snapped to 80
    assert answer["parameters"]["width"] == 80 and answer["parameters"]["sampler_name"] == "Euler"
    images = [base64.b64decode(image) for image in answer["images"]]
    assert [Image.open(io.BytesIO(data)).size for data in images] == [(80, 64), (80, 64)]
    for data, infotext in zip(images, info["infotexts"], strict=True):
        assert Image.open(io.BytesIO(data)).info["parameters"] == infotext
    assert "Sampler: Euler, Schedule type: Simple, CFG scale: 1, Seed: 41" in info["infotexts"][1]
    assert info["cache"] == ["miss", "miss"]
    again = server.client.post("/sdapi/v1/txt2img", json=body).json()
    assert json.loads(again["info"])["cache"] == ["memory", "memory"]
    assert again["images"] == answer["images"]


def test_cfg_scale_is_a1111s_and_bad_input_names_the_field(server: Server) -> None:
    crane = {"prompt": "an a1111 crane", "width": 64, "height": 64, "negative_prompt": "fog"}
    resp = server.client.post("/sdapi/v1/txt2img", json={**crane, "cfg_scale": 3.5})
    info = json.loads(resp.json()["info"])
    assert "Negative prompt: fog" in info["infotexts"][0] and "CFG scale: 3.5" in info["infotexts"][0]
    # Our guidance 2.5 is A1111's 3.5: /run with it finds the same image.
    run = server.client.get("/run", params={**crane, "guidance_scale": 2.5, "seed": info["seed"]})
    assert run.json()["cache"] == "memory"
    for body, field in [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "a", "cfg_scale": 30}, "cfg_scale"),
        ({"prompt": "a", "batch_size": 4, "n_iter": 3}, "batch_size"),
        ({"prompt": "a", "steps": 0}, "steps"),
    ]:
        bad = server.client.post("/sdapi/v1/txt2img", json=body)
        assert bad.status_code == 422, bad.text
        assert bad.json()["detail"][0]["loc"] == ["body", field]


@pytest.mark.parametrize(
    "field", ["override_settings", "script_args", "alwayson_scripts", "sampler_name", "x"]
)
def test_anything_in_a_field_we_ignore_is_ignored_never_a_500(server: Server, field: str) -> None:
    # A lone surrogate cannot be written out as JSON: echoed back, it was a 500 after
    # the image had been made and stored.
    odd = {
        "override_settings": {"k": "\ud800"},
        "script_args": ["\udfff"],
        "alwayson_scripts": {"\ud800": {}},
    }
    body = {"prompt": f"an ignored {field}", "width": 64, "height": 64, field: odd.get(field, "\ud800")}
    resp = server.client.post(
        "/sdapi/v1/txt2img", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 200, resp.text
    shown = resp.json()["parameters"]
    assert field not in shown or (field, shown[field]) == ("sampler_name", SAMPLER)  # what served it
    assert base64.b64decode(resp.json()["images"][0]).startswith(b"\x89PNG")


def test_the_lookups_a1111_clients_make_when_connecting(server: Server) -> None:
    (model,) = server.client.get("/sdapi/v1/sd-models").json()
    assert model["model_name"] == "tiny-z-image-v1" and len(model["hash"]) == 10
    assert server.client.get("/sdapi/v1/options").json() == {"sd_model_checkpoint": model["title"]}
    assert (
        server.client.post("/sdapi/v1/options", json={"sd_model_checkpoint": model["title"]}).json() is None
    )
    assert [s["name"] for s in server.client.get("/sdapi/v1/samplers").json()] == ["Euler"]
    assert [s["label"] for s in server.client.get("/sdapi/v1/schedulers").json()] == ["Simple"]


def test_a1111_api_auth_is_http_basic_namespace_and_token(keyed_server: Server) -> None:
    body = {"prompt": "a keyed a1111 wren", "width": 64, "height": 64, "seed": 1}
    url = f"{keyed_server.url}/sdapi/v1/txt2img"
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, auth=("other", KEYED_TOKEN)).status_code == 401
    assert httpx.post(url, json=body, auth=(KEYED_NAMESPACE, "wrong-token-0123456789")).status_code == 401
    resp = httpx.post(url, json=body, auth=(KEYED_NAMESPACE, KEYED_TOKEN), timeout=120)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["images"]) == 1


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_image_tools_read_the_parameters_in_every_format(server: Server, fmt: str) -> None:
    request = {
        "prompt": "a metadata fox, in snow",
        "negative_prompt": "blurry",
        "guidance_scale": 1.5,
        "seed": 123,
        "steps": 6,
        "width": 96,
        "height": 64,
        "format": fmt,
    }
    data = server.client.post("/generate", json=request).content
    model = server.client.get("/sdapi/v1/sd-models").json()[0]

    # sd-parsers: recognised as A1111, with sampler, scheduler, model, prompts.
    parsed = ParserManager().parse(io.BytesIO(data))
    assert parsed is not None and parsed.generator == Generators.AUTOMATIC1111
    (sampler,) = parsed.samplers
    assert sampler.name == "Euler"
    assert sampler.parameters == {"scheduler": "Simple", "cfg_scale": "2.5", "seed": "123", "steps": "6"}
    assert (sampler.model.name, sampler.model.hash) == (model["model_name"], model["hash"])
    assert [p.value for p in sampler.prompts] == ["a metadata fox, in snow"]
    assert [p.value for p in sampler.negative_prompts] == ["blurry"]
    assert parsed.metadata["Size"] == "96x64"

    # sd-prompt-reader (what its viewer shows).
    reader = ImageDataReader(io.BytesIO(data))
    assert reader.tool == "A1111 webUI"
    assert (reader.positive, reader.negative) == ("a metadata fox, in snow", "blurry")
    assert reader.parameter == {
        "model": model["model_name"],
        "sampler": "Euler",
        "seed": "123",
        "cfg": "2.5",
        "steps": "6",
        "size": "96x64",
    }

    # Pillow: where A1111 puts it.
    image = Image.open(io.BytesIO(data))
    assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    if fmt == "png":
        text = image.info["parameters"]
        assert json.loads(image.info["zimage"])["seed"] == 123
    else:
        exif = image.getexif()
        assert EXIF_IFD in exif and exif[SOFTWARE] == "Z-Image-Turbo service"
        assert json.loads(exif[IMAGE_DESCRIPTION])["seed"] == 123
        comment = exif.get_ifd(EXIF_IFD)[USER_COMMENT]
        assert comment.startswith(b"UNICODE\x00")
        text = comment[8:].decode("utf-16-be")
    assert text.splitlines() == [
        "a metadata fox, in snow",
        "Negative prompt: blurry",
        f"Steps: 6, Sampler: Euler, Schedule type: Simple, CFG scale: 2.5, Seed: 123, Size: 96x64, "
        f"Model hash: {model['hash']}, Model: {model['model_name']}",
    ]


def test_progress_reports_the_running_step_and_webuiapi_waits_for_ready(server: Server) -> None:
    api = webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1")
    api.util_wait_for_ready(check_interval=0.05)  # idle: returns at once (KeyError: 'progress' before)
    idle = api.get_progress()
    assert idle["progress"] == 0.0 and idle["state"]["job_count"] == 0
    assert api.get_cmd_flags() == {} and httpx.get(f"{server.url}/sdapi/v1/upscalers").json() == []

    body = {"prompt": "a slow progress heron", "width": 512, "height": 512, "steps": 40, "seed": 9}
    done = threading.Event()
    worker = threading.Thread(
        target=lambda: (httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=300), done.set())
    )
    worker.start()
    seen = []
    while not done.wait(0.02):
        state = api.get_progress()
        if state["state"]["sampling_steps"]:
            seen.append(state)
    worker.join()
    assert seen, "no step was reported while the generation ran"
    assert all(s["state"]["sampling_steps"] == 40 and s["state"]["job_count"] >= 1 for s in seen)
    assert all(0 < s["progress"] <= 1 and s["progress"] == s["state"]["sampling_step"] / 40 for s in seen)
    assert len({s["state"]["sampling_step"] for s in seen}) > 1  # it moves
    api.util_wait_for_ready(check_interval=0.05)
    assert api.get_progress()["state"]["job_count"] == 0
