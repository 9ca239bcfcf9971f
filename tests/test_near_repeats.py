"""Near-repeats through the HTTP API of real servers: suggestions on a miss, the opt-in
approximate hit, the namespace rules, what never goes in, counts, restarts, and two
replicas on one real Redis."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.procs import wait_until
from tests.conftest import RedisServer, Server, replica_pair
from web.ui_stats import latency_text

ON = ("--similar-prompts",)
FOX = "a red fox standing in the snow"
FOX_ZH = "雪地里站着一只红狐狸"
ADMIN = "admin-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("near")
    patterns = root / "no-cache.txt"
    patterns.write_text("classified\\s+\\w+\n")
    srv = Server(root / "cache", *ON, "--no-cache-patterns", str(patterns), "--admin-token", ADMIN)
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def run(server: Server, prompt: str, namespace: str = "public", **params: Any) -> dict[str, Any]:
    query = {"prompt": prompt, "width": 64, "height": 64, "seed": 7, **params}
    resp = server.client.get("/run", params=query, headers={"X-Namespace": namespace})
    assert resp.status_code == 200, resp.text
    return {**resp.json(), "x-cache": resp.headers["x-cache"]}


def near_stats(server: Server) -> dict[str, int]:
    return server.client.get("/api/cache/stats").json()["near_repeats"]


def test_a_reworded_prompt_is_offered_what_was_made_and_never_served_it_unasked(server: Server) -> None:
    made = run(server, FOX)
    assert made["cache"] == "miss" and made["similar"] == []
    for reworded in ("a red fox in the snow, photo", FOX_ZH):
        result = run(server, reworded)
        assert result["cache"] == "miss"  # suggested, not substituted: it was generated
        first = result["similar"][0]
        assert (first["key"], first["prompt"]) == (made["key"], FOX)
        assert 0.7 <= first["similarity"] < 1
        offered = server.client.get(first["image_url"], headers={"X-Namespace": "public"})
        assert offered.status_code == 200
        assert (
            offered.content == server.client.get(made["image_url"], headers={"X-Namespace": "public"}).content
        )
    # an exact hit needs no suggestions
    assert run(server, FOX)["cache"] != "miss"


def test_an_image_made_with_a_lora_is_never_offered_or_served_for_a_prompt_alone(server: Server) -> None:
    made = run(server, "a paper boat on a quiet pond", lora="tiny-demo:0.8")
    assert (made["cache"], made["similar"]) == ("miss", [])
    before = near_stats(server)["approximate_hits"]
    plain = run(server, "a paper boat on a quiet pond, photo", similar_threshold=0.5)
    assert plain["cache"] == "miss"  # generated: the LoRA's image is not this prompt's
    assert made["key"] not in [s["key"] for s in plain["similar"]]
    assert near_stats(server)["approximate_hits"] == before
    # and a prompt with a LoRA is not served the plain image either
    assert (
        run(server, "a paper boat on a quiet pond", lora="tiny-demo:0.8", seed=8, similar_threshold=0.5)[
            "cache"
        ]
        == "miss"
    )


def test_similar_threshold_serves_the_nearest_labelled_with_its_prompt(server: Server) -> None:
    made = run(server, "a lighthouse on a cliff at sunset")
    before = near_stats(server)["approximate_hits"]
    near = run(server, "a lighthouse on a cliff at dusk", similar_threshold=0.8)
    assert (near["cache"], near["x-cache"]) == ("similar", "similar")
    assert near["key"] == made["key"] and near["image_url"] == made["image_url"]
    assert near["original_prompt"] == "a lighthouse on a cliff at sunset" and 0.8 <= near["similarity"] < 1
    assert near_stats(server)["approximate_hits"] == before + 1
    # too far for the threshold, or another size: generated
    assert (
        run(server, "a lighthouse on a cliff at dusk, oil painting", similar_threshold=0.99)["cache"]
        == "miss"
    )
    assert (
        run(server, "a lighthouse on a cliff at night", similar_threshold=0.8, width=128)["cache"] == "miss"
    )
    # through /api/generate too
    body = {
        "prompt": "a lighthouse on a cliff at sundown",
        "width": 64,
        "height": 64,
        "similar_threshold": 0.8,
    }
    batch = server.client.post("/api/generate", json=body, headers={"X-Namespace": "public"}).json()
    assert batch["images"][0]["cache"] == "similar" and batch["images"][0]["key"] == made["key"]


def test_similar_mode_refine_answers_a_labelled_refinement_and_a_repeat_hits(server: Server) -> None:
    made = run(server, "a windmill in a tulip field")
    refine = {"similar_threshold": 0.8, "similar_mode": "refine"}
    refined = run(server, "a windmill in a field of tulips", **refine)
    assert (refined["cache"], refined["x-cache"]) == ("refined", "refined")
    assert refined["refined_from"] == made["key"] != refined["key"]
    assert refined["original_prompt"] == "a windmill in a tulip field" and 0.8 <= refined["similarity"] < 1
    again = run(server, "a windmill in a field of tulips", **refine)
    assert (again["cache"], again["key"], again["refined_from"]) == ("memory", refined["key"], made["key"])
    body = {"prompt": "a windmill in the tulip field", "width": 64, "height": 64, "seed": 7, **refine}
    batch = server.client.post("/api/generate", json=body, headers={"X-Namespace": "public"}).json()
    assert (batch["images"][0]["cache"], batch["images"][0]["refined_from"]) == ("refined", made["key"])


@pytest.mark.parametrize(
    "params", [{"similar_mode": "refine"}, {"similar_mode": "remix", "similar_threshold": 0.8}]
)
def test_a_bad_similar_mode_is_a_422_naming_it(server: Server, params: dict[str, Any]) -> None:
    resp = server.client.get("/run", params={"prompt": "x", "width": 64, "height": 64, **params})
    assert resp.status_code == 422, resp.text
    assert "similar_mode" in resp.text


@pytest.mark.parametrize(
    ("where", "body"),
    [
        ("query", {"similar_threshold": 0}),
        ("query", {"similar_threshold": 1.5}),
        ("body", {"similar_threshold": 0.9, "batch_size": 2}),
    ],
)
def test_a_bad_similar_threshold_is_a_422_naming_it(server: Server, where: str, body: dict[str, Any]) -> None:
    if where == "query":
        resp = server.client.get("/run", params={"prompt": "x", **body})
    else:
        resp = server.client.post("/api/generate", json={"prompt": "x", "width": 64, "height": 64, **body})
    assert resp.status_code == 422, resp.text
    assert "similar_threshold" in resp.text


def test_suggestions_never_cross_namespaces(server: Server) -> None:
    mine = run(server, "a green tractor in a muddy field", namespace="alice")
    assert [s["key"] for s in run(server, "a green tractor stuck in mud", namespace="alice")["similar"]][
        :1
    ] == [mine["key"]]
    theirs = run(server, "a green tractor stuck in mud", namespace="bob")
    assert theirs["similar"] == []  # alice's tractor is not offered to bob
    # an approximate hit in carol's namespace never serves alice's or bob's image
    assert (
        run(server, "a green tractor in the mud", namespace="carol", similar_threshold=0.5)["cache"] == "miss"
    )
    # bob's finds bob's own
    near = run(server, "a green tractor in the mud", namespace="bob", similar_threshold=0.5)
    assert (near["cache"], near["key"]) == ("similar", theirs["key"])


def test_a_cleared_namespace_offers_nothing_it_no_longer_holds(server: Server) -> None:
    made = run(server, "an old steam train crossing a bridge", namespace="dave")
    assert [s["key"] for s in run(server, "a steam train on a bridge", namespace="dave")["similar"]] == [
        made["key"]
    ]
    before = near_stats(server)["prompts"]
    resp = server.client.delete(
        "/api/cache", params={"namespace": "dave"}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert resp.status_code == 200, resp.text
    # the cleared images are not offered, and the index forgets them as it meets them
    assert run(server, "an old steam train on a bridge", namespace="dave")["similar"] == []
    assert near_stats(server)["prompts"] < before + 1  # the new one in, the cleared ones met out


def test_bypassed_and_do_not_store_prompts_never_go_in(server: Server) -> None:
    before = near_stats(server)["prompts"]
    assert run(server, "a purple submarine under the ice", no_cache="true")["cache"] == "bypass"
    assert run(server, "classified falcon over the desert")["cache"] == "bypass"
    assert near_stats(server)["prompts"] == before
    assert run(server, "a purple submarine beneath the ice")["similar"] == []
    assert run(server, "classified falcon above the desert")["similar"] == []


def test_counts_show_in_stats_and_metrics(server: Server) -> None:
    run(server, "a bowl of ramen on a wooden table")
    before = near_stats(server)
    assert run(server, "ramen in a bowl on a wooden table")["similar"]
    after = near_stats(server)
    assert after["suggested"] == before["suggested"] + 1
    assert after["suggestions"] >= before["suggestions"] + 1
    # the Stats tab draws the same counts, in both languages
    stats = server.client.get("/api/cache/stats").json()
    assert f"{after['suggested']} misses given {after['suggestions']} suggestions" in latency_text(
        "en", stats
    )
    assert f"{after['suggested']} 次未命中给出 {after['suggestions']} 条建议" in latency_text("zh", stats)
    metrics = server.client.get("/metrics").text
    assert f"zimage_similar_suggested_total {after['suggested']}.0" in metrics
    assert "zimage_similar_approximate_hits_total" in metrics


def test_the_index_survives_a_restart_and_is_rebuilt_if_lost(tmp_path: Path) -> None:
    srv = Server(tmp_path / "cache", *ON)
    try:
        made = run(srv.wait_ready(), FOX)
    finally:
        srv.stop()
    seeds = itertools.count(100)  # a new seed each time: a miss, which is what gets suggestions

    def suggested(server: Server) -> list[str]:
        return [s["key"] for s in run(server, FOX_ZH, seed=next(seeds))["similar"]]

    for lost in (False, True):
        if lost:
            for log in (tmp_path / "cache" / "similar").rglob("*.log"):
                log.unlink()
        srv = Server(tmp_path / "cache", *ON)
        try:
            srv.wait_ready()
            if lost:  # the first look starts the rebuild from the entries; it lands shortly after
                wait_until(lambda s=srv: made["key"] in suggested(s), "the rebuilt index", timeout_s=120)
            else:
                assert suggested(srv)[0] == made["key"]
        finally:
            srv.stop()
    assert list((tmp_path / "cache" / "similar").rglob("*.log"))  # rebuilt on disk too


def test_what_one_replica_stores_the_other_suggests(tmp_path: Path, redis_server: RedisServer) -> None:
    with replica_pair(tmp_path, *ON, "--redis-url", redis_server.url) as (a, b):
        made = run(a, FOX)
        found = run(b, FOX_ZH)
        assert found["cache"] == "miss" and found["similar"][0]["key"] == made["key"]
        # and b's image is served on b from Redis
        assert (
            b.client.get(found["similar"][0]["image_url"], headers={"X-Namespace": "public"}).status_code
            == 200
        )
        near = run(b, "a red fox in the snow", similar_threshold=0.8)
        assert (near["cache"], near["key"]) == ("similar", made["key"])
