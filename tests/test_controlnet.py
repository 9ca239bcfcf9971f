"""ControlNet (`--controlnet tiny`): a control image, its kind and scale through
`/api/edit` on a real server, each in the key; and refused without `--controlnet`."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import Server
from tests.engines import pixels
from tests.test_image_input import encoded, picture

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
