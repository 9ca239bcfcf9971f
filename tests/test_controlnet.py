"""ControlNet (`--controlnet tiny`): a control image, its kind and scale through
`/api/edit`, A1111's ControlNet unit (`webuiapi`'s ControlNetUnit) and MCP's
edit_image on a real server, each in the key, one key across the routes; bad
control fields a 422 naming them; and refused without `--controlnet`."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import webuiapi
from PIL import Image

from tests.conftest import Server
from tests.engines import pixels
from tests.test_image_input import encoded, picture
from tests.test_mcp import mcp_session

SIZE = 64


@pytest.fixture(scope="module")
def controlled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("controlnet") / "cache", "--controlnet", "tiny").wait_ready()
    yield srv
    srv.stop()


def control(server: Server, image: bytes, **fields: object) -> httpx.Response:
    data = {"prompt": "a controlled lantern", "steps": "2", "seed": "4", "control_kind": "canny"}
    data |= {k: str(v) for k, v in fields.items()}
    return server.client.post(
        "/api/edit", files={"control_image": ("edges.png", image, "image/png")}, data=data
    )


def ok(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_control_image_kind_and_scale_are_in_the_key_and_change_the_image(controlled: Server) -> None:
    edges = picture(21)
    first = ok(control(controlled, encoded(edges)))
    assert first["kind"] == "control" and first["images"][0]["cache"] == "miss"
    key = first["images"][0]["key"]
    again = ok(control(controlled, encoded(edges, "WEBP", lossless=True)))
    assert (again["images"][0]["key"], again["images"][0]["cache"]) == (key, "memory")
    scaled = ok(control(controlled, encoded(edges), control_scale=0.2))
    depth = ok(control(controlled, encoded(edges), control_kind="depth"))
    changed = edges.copy()
    changed[1, 1, 1] ^= 1
    other = ok(control(controlled, encoded(changed)))
    keys = {key, scaled["images"][0]["key"], depth["images"][0]["key"], other["images"][0]["key"]}
    assert len(keys) == 4
    plain = ok(
        controlled.client.get(
            "/run",
            params={"prompt": "a controlled lantern", "steps": 2, "seed": 4, "width": SIZE, "height": SIZE},
        )
    )
    made = pixels(controlled.client.get(first["images"][0]["image_url"]).content)
    assert not np.array_equal(made, pixels(controlled.client.get(plain["image_url"]).content))
    weaker = pixels(controlled.client.get(scaled["images"][0]["image_url"]).content)
    assert not np.array_equal(made, weaker)


@pytest.mark.parametrize(
    ("fields", "where"),
    [({"control_kind": "sketchy"}, "control_kind"), ({"control_scale": "9"}, "control_scale")],
)
def test_bad_control_fields_are_a_422_naming_them(controlled: Server, fields: dict, where: str) -> None:
    resp = control(controlled, encoded(picture()), **fields)
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"][-1] == where


def test_without_controlnet_a_control_image_is_a_422(server: Server) -> None:
    resp = control(server, encoded(picture()))
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"][-1] == "control_image"
    assert "--controlnet" in resp.json()["detail"][0]["msg"]


# -- A1111's ControlNet extension (alwayson_scripts), with the real webuiapi client ----------

A1111_ASK = {
    "prompt": "a controlled lantern",
    "seed": 4,
    "steps": 2,
    "width": SIZE,
    "height": SIZE,
    "cfg_scale": 1,
}
UNIT = "alwayson_scripts.controlnet.args[0]"


def unit(image: Image.Image, weight: float = 0.75, module: str = "canny") -> webuiapi.ControlNetUnit:
    return webuiapi.ControlNetUnit(image=image, module=module, model="None", weight=weight)


def test_webuiapi_controlnet_unit_is_a_control_generation_with_one_key_across_routes(
    controlled: Server,
) -> None:
    api = webuiapi.WebUIApi(baseurl=f"{controlled.url}/sdapi/v1")
    edges = Image.fromarray(picture(22))
    first = api.txt2img(controlnet_units=[unit(edges)], alwayson_scripts={}, **A1111_ASK)
    assert first.info["cache"] == ["miss"]
    again = api.txt2img(controlnet_units=[unit(edges)], alwayson_scripts={}, **A1111_ASK)
    assert again.info["cache"] == ["memory"] and again.info["keys"] == first.info["keys"]
    weaker = api.txt2img(controlnet_units=[unit(edges, weight=0.5)], alwayson_scripts={}, **A1111_ASK)
    assert weaker.info["cache"] == ["miss"]
    # Every call passes its own empty dict: webuiapi's default `alwayson_scripts={}` is one
    # dict shared by every call of the process, and keeps a call's ControlNet unit in it
    # (it leaked into test_edit_routes' and test_lora_routes' calls in CI).
    plain = api.txt2img(alwayson_scripts={}, **A1111_ASK)
    assert len({first.info["keys"][0], weaker.info["keys"][0], plain.info["keys"][0]}) == 3
    assert not np.array_equal(np.asarray(first.image), np.asarray(plain.image))
    # The same control image, kind and scale through /api/edit: the same key, a hit.
    ours = ok(control(controlled, encoded(picture(22)), control_scale=0.75))
    assert (ours["images"][0]["key"], ours["images"][0]["cache"]) == (first.info["keys"][0], "memory")


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"weight": 9}, f"{UNIT}.weight"),
        ({"weight": "strong"}, f"{UNIT}.weight"),
        ({"module": "lineart", "model": "None"}, f"{UNIT}.module"),
        ({"image": "!!notbase64"}, f"{UNIT}.image"),
        ({"image": ""}, f"{UNIT}.image"),
    ],
)
def test_a1111_bad_controlnet_units_are_a_422_naming_the_field(
    controlled: Server, change: dict, where: str
) -> None:
    args = [unit(Image.fromarray(picture())).to_dict() | change]
    body = A1111_ASK | {"alwayson_scripts": {"ControlNet": {"args": args}}}
    resp = controlled.client.post("/sdapi/v1/txt2img", json=body)
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"][-1] == where, resp.text


def test_a1111_two_units_or_a_unit_on_img2img_are_a_422(controlled: Server) -> None:
    one = unit(Image.fromarray(picture())).to_dict()
    two = A1111_ASK | {"alwayson_scripts": {"controlnet": {"args": [one, one]}}}
    resp = controlled.client.post("/sdapi/v1/txt2img", json=two)
    assert (
        resp.status_code == 422
        and resp.json()["detail"][0]["loc"][-1] == "alwayson_scripts.controlnet.args[1]"
    )
    # A disabled second unit is skipped.
    skipped = A1111_ASK | {"alwayson_scripts": {"controlnet": {"args": [one, one | {"enabled": False}]}}}
    assert controlled.client.post("/sdapi/v1/txt2img", json=skipped).status_code == 200
    api = webuiapi.WebUIApi(baseurl=f"{controlled.url}/sdapi/v1")
    with pytest.raises(RuntimeError, match=r"alwayson_scripts\.controlnet"):
        api.img2img(
            images=[Image.fromarray(picture())],
            controlnet_units=[unit(Image.fromarray(picture()))],
            alwayson_scripts={},
            **A1111_ASK,
        )


def test_without_controlnet_an_a1111_unit_is_a_422_naming_the_flag(server: Server) -> None:
    body = A1111_ASK | {
        "alwayson_scripts": {"controlnet": {"args": [unit(Image.fromarray(picture())).to_dict()]}}
    }
    resp = server.client.post("/sdapi/v1/txt2img", json=body)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"][-1] == "alwayson_scripts.controlnet"
    assert "--controlnet" in resp.json()["detail"][0]["msg"]


# -- MCP edit_image's control_image ----------------------------------------------------------------


def mcp_calls(server: Server, *calls: dict) -> list:
    async def run() -> list:
        async with mcp_session(server) as client:
            return [await client.call_tool("edit_image", arguments) for arguments in calls]

    return asyncio.run(run())


def test_mcp_edit_image_takes_a_control_image(controlled: Server) -> None:
    edges = base64.b64encode(encoded(picture(23))).decode()
    ask = {
        "prompt": "a controlled lantern",
        "seed": 4,
        "steps": 2,
        "control_image": edges,
        "control_kind": "canny",
    }
    first, again, weaker, bad_scale, bad_kind, both = mcp_calls(
        controlled,
        ask,
        ask,
        ask | {"control_scale": 0.5},
        ask | {"control_scale": 9},
        ask | {"control_kind": "sketchy"},
        ask | {"image": edges},
    )
    assert not first.is_error and first.structured_content["cache"] == "miss"
    assert again.structured_content["cache"] == "memory"
    assert again.structured_content["key"] == first.structured_content["key"]
    assert weaker.structured_content["cache"] == "miss"
    assert weaker.structured_content["key"] != first.structured_content["key"]
    for refused, field in ((bad_scale, "control_scale"), (bad_kind, "control_kind"), (both, "control_image")):
        assert refused.is_error and field in refused.content[0].text


def test_without_controlnet_mcp_control_image_names_the_flag(server: Server) -> None:
    edges = base64.b64encode(encoded(picture(23))).decode()
    (refused,) = mcp_calls(server, {"prompt": "x", "control_image": edges, "control_kind": "canny"})
    assert refused.is_error and "--controlnet" in refused.content[0].text


# -- OpenAI's image edits: no ControlNet in its shape, said rather than ignored -------------------


@pytest.mark.parametrize("field", ["control_kind", "control_scale"])
def test_openai_images_edit_refuses_control_fields_naming_them(controlled: Server, field: str) -> None:
    client = openai.OpenAI(base_url=f"{controlled.url}/v1", api_key="unused", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(
            image=("in.png", encoded(picture()), "image/png"),
            prompt="a controlled lantern",
            extra_body={field: "canny" if field == "control_kind" else 0.5},
        )
    assert caught.value.body["param"] == field  # type: ignore[index]
    assert "/api/edit" in caught.value.body["message"]  # type: ignore[index]
