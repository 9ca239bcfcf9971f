"""HTTP done right: HEAD on every GET route, a complete and valid OpenAPI document
that a generated client (openapi-python-client) can use, CORS as configured, and
metrics that negotiate OpenMetrics and pass `promtool check metrics`."""

from __future__ import annotations

import importlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Header, Query
from fastapi.security import HTTPAuthorizationCredentials
from openapi_spec_validator import validate
from PIL import Image
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus
from pydantic import create_model

from pipeline.request import GenerationRequest
from tests.conftest import ALLOWED_ORIGIN, KEYED_TOKEN, Server
from web.auth import BEARER, NAMESPACE_HELP
from web.schemas import RunQuery

AUTHED_ROUTES = {"/health", "/ready", "/metrics"}  # the routes that need no token (the complement)
GENERATING = {"/run", "/generate", "/api/generate", "/v1/images/generations", "/sdapi/v1/txt2img"}
IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp"}


@pytest.fixture(scope="module")
def spec(server: Server) -> dict:
    return server.client.get("/openapi.json").json()


def test_head_answers_every_get_route_like_get_without_a_body(server: Server, spec: dict) -> None:
    made = server.client.get("/run", params={"prompt": "a head probe", "width": 64, "height": 64}).json()
    fill = {"/run": "/run?prompt=a+head+probe&width=64&height=64", "/images/{name}": made["image_url"]}
    paths = [fill.get(path, path) for path, ops in spec["paths"].items() if "get" in ops]
    assert len(paths) >= 12
    # Not in the OpenAPI document: the docs, their assets, and Gradio's own routes.
    paths += ["/docs", "/openapi.json", "/docs-assets/swagger-ui.css", "/", "/config", "/theme.css"]
    stable = {fill["/images/{name}"], "/health", "/docs", "/docs-assets/swagger-ui.css", "/sdapi/v1/samplers"}
    for path in paths:
        got, head = server.client.get(path), server.client.head(path)
        assert got.status_code == 200, path
        assert head.status_code == 200, (path, head.status_code)
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        if path in stable:
            assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content)), (
                path
            )
    assert server.client.head(fill["/images/{name}"]).headers["etag"] == f'"{made["key"]}"'
    assert server.client.head(f"/images/{'0' * 64}.png").status_code == 404
    assert server.client.head("/generate").status_code == server.client.get("/generate").status_code


def test_openapi_is_valid_typed_and_lists_every_error(spec: dict) -> None:
    validate(spec)  # openapi-spec-validator: raises on an invalid document
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["HTTPBearer"]["description"],
    }
    operations = [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    assert len(operations) >= 17
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        content = responses["200"].get("content", {})
        assert content, where
        for media, body in content.items():
            assert body.get("schema"), (where, media)  # never an empty schema
            if media == "application/json":
                assert set(body["schema"]) & {"$ref", "type", "items", "anyOf"}, where
        if path in ("/generate", "/images/{name}"):
            assert set(content) == IMAGE_TYPES, where
            assert all(c["schema"] == {"type": "string", "format": "binary"} for c in content.values())
        if path not in AUTHED_ROUTES:
            assert {"401", "403"} <= set(responses), where
            assert {"HTTPBearer": []} in op["security"] and {} in op["security"], where
        if method == "post":
            assert "413" in responses, where
        if path in GENERATING:
            assert {"500", "503"} <= set(responses), where
            assert "Retry-After" in responses["503"]["headers"], where
        bad_input = "400" if path.startswith("/v1/") else "422"
        if op.get("parameters") or op.get("requestBody"):
            assert bad_input in responses, where
    assert "404" in spec["paths"]["/images/{name}"]["get"]["responses"]
    error = spec["paths"]["/v1/images/generations"]["post"]["responses"]["400"]["content"]["application/json"]
    assert error["schema"] == {"$ref": "#/components/schemas/OpenAIError"}


async def declared_namespace(
    x_namespace: Annotated[str | None, Header(description=NAMESPACE_HELP)] = None,
    _token: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
) -> str:
    """What `caller_namespace` reads, as FastAPI parameters (for the test below)."""
    return x_namespace or "public"


Caller = Annotated[str, Depends(declared_namespace)]


# RunQuery as FastAPI would declare it: its `loras` is filled from the `lora=name:0.8`
# strings and hidden from the schema (FastAPI cannot take a list of models as a query
# parameter at all).
DeclaredRunQuery = create_model(
    "RunQuery", **{n: (f.annotation, f) for n, f in RunQuery.model_fields.items() if n != "loras"}
)


def test_parameters_read_by_hand_are_documented_as_declared_ones(spec: dict) -> None:
    """/run and /generate read their query strings (read_query), and every route the
    namespace (caller_namespace), themselves: OpenAPI lists them exactly as FastAPI
    lists the same parameters declared in the signature."""
    declared = FastAPI()

    @declared.get("/run")
    async def run(params: Annotated[DeclaredRunQuery, Query()], ns: Caller) -> None: ...

    @declared.post("/generate")
    async def generate(
        body: GenerationRequest,
        ns: Caller,
        no_cache: Annotated[bool, Query(description="Neither read nor write the cache.")] = False,
    ) -> None: ...

    @declared.get("/images/{name}")
    async def image(name: str, ns: Caller) -> None: ...

    twin = declared.openapi()
    for path, method in [("/run", "get"), ("/generate", "post"), ("/images/{name}", "get")]:
        ours, theirs = spec["paths"][path][method], twin["paths"][path][method]
        assert ours["parameters"] == theirs["parameters"], path
        assert ours["security"] == [*theirs["security"], {}], path  # finish_openapi's optional token
    assert (
        spec["paths"]["/generate"]["post"]["requestBody"] == twin["paths"]["/generate"]["post"]["requestBody"]
    )
    assert spec["components"]["securitySchemes"] == twin["components"]["securitySchemes"]


GENERATOR_CONFIG = {
    "project_name_override": "zimage-client",
    "package_name_override": "zimage_client",
    "post_hooks": [],
    # The generator reads bytes only from application/octet-stream; our images are those bytes.
    "content_type_overrides": {media: "application/octet-stream" for media in IMAGE_TYPES},
}


@pytest.fixture(scope="module")
def generated(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """A client package generated from the live /openapi.json by openapi-python-client."""
    root = tmp_path_factory.mktemp("generated")
    (root / "openapi.json").write_text(server.client.get("/openapi.json").text)
    (root / "config.json").write_text(json.dumps(GENERATOR_CONFIG))
    tool = Path(sys.executable).parent / "openapi-python-client"
    done = subprocess.run(
        [
            tool,
            "generate",
            "--path",
            root / "openapi.json",
            "--output-path",
            root / "out",
            "--config",
            root / "config.json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr  # every route understood
    sys.path.insert(0, str(root / "out"))
    try:
        yield importlib.import_module("zimage_client")
    finally:
        sys.path.remove(str(root / "out"))
        for name in [n for n in sys.modules if n.split(".")[0] == "zimage_client"]:
            del sys.modules[name]


def test_a_generated_client_calls_run_generate_and_api_generate(
    server: Server, generated: ModuleType
) -> None:
    from zimage_client.api.default import (
        api_info_api_info_get,
        cache_stats_api_cache_stats_get,
        generate_batch_api_generate_post,
        generate_generate_post,
        run_run_get,
    )
    from zimage_client.models import BatchRequest, BatchResult, ErrorResponse, GenerationRequest, RunResult
    from zimage_client.models.generation_request_format import GenerationRequestFormat
    from zimage_client.types import File

    client = generated.Client(base_url=server.url, timeout=120, raise_on_unexpected_status=True)
    run = run_run_get.sync(client=client, prompt="a generated-client gull", width=64, height=64, seed=9)
    assert isinstance(run, RunResult) and run.seed == 9 and run.cache in ("miss", "memory")

    png = generate_generate_post.sync(
        client=client, body=GenerationRequest(prompt="a generated-client gull", width=64, height=64, seed=9)
    )
    assert isinstance(png, File)
    data = png.payload.read()
    assert data == server.client.get(run.image_url).content  # the same cached image
    webp = generate_generate_post.sync(
        client=client,
        body=GenerationRequest(
            prompt="a generated-client gull", width=64, height=64, format_=GenerationRequestFormat.WEBP
        ),
    )
    assert Image.open(io.BytesIO(webp.payload.read())).format == "WEBP"

    batch = generate_batch_api_generate_post.sync(
        client=client,
        body=BatchRequest(prompt="a generated-client gull", width=64, height=64, seed=9, batch_size=2),
    )
    assert isinstance(batch, BatchResult)
    assert [(image.seed, image.cache) for image in batch.images] == [(9, "memory"), (10, "miss")]

    bad = generate_batch_api_generate_post.sync(client=client, body=BatchRequest(prompt="x", width=100))
    assert isinstance(bad, ErrorResponse)
    assert [d.loc for d in bad.detail] == [["body", "width"]]
    assert cache_stats_api_cache_stats_get.sync(client=client).generations >= 2
    assert api_info_api_info_get.sync(client=client).model.state == "ready"


def test_cors_off_by_default_answers_no_origin(server: Server) -> None:
    preflight = server.client.options(
        "/run", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers
    for path in ("/health", "/config"):  # ours, and Gradio's (which would otherwise allow localhost)
        resp = server.client.get(path, headers={"Origin": "http://localhost:3000"})
        assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers, path


def test_cors_origins_apply_to_preflights_and_actual_responses(keyed_server: Server) -> None:
    c = keyed_server.client
    asks = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = c.options("/v1/images/generations", headers={"Origin": ALLOWED_ORIGIN, **asks})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert {"authorization", "content-type"} <= set(
        allowed.headers["access-control-allow-headers"].lower().split(", ")
    )
    assert "POST" in allowed.headers["access-control-allow-methods"]
    refused = c.options("/v1/images/generations", headers={"Origin": "https://evil.example", **asks})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers

    token = {"Authorization": f"Bearer {KEYED_TOKEN}"}
    run = {"prompt": "a cors probe", "width": 64, "height": 64}
    actual = c.get("/run", params=run, headers={"Origin": ALLOWED_ORIGIN, **token})
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-cache" in actual.headers["access-control-expose-headers"].lower()
    assert "origin" in actual.headers["vary"].lower()
    other = c.get("/run", params=run, headers={"Origin": "https://evil.example", **token})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    # Errors carry it too (a browser script can read why it was refused), Gradio's routes as well.
    assert (
        c.get("/api/info", headers={"Origin": ALLOWED_ORIGIN}).headers["access-control-allow-origin"]
        == ALLOWED_ORIGIN
    )
    assert (
        "access-control-allow-origin"
        not in c.get("/config", headers={"Origin": "https://evil.example"}).headers
    )


def promtool(exposition: bytes) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail(
            "promtool is missing: run `make system-deps` (it unpacks it from Debian's prometheus package)"
        )
    return subprocess.run(
        [tool, "check", "metrics"], input=exposition.decode(), capture_output=True, text=True, timeout=60
    )


def test_metrics_negotiate_openmetrics_and_pass_promtool(server: Server) -> None:
    server.client.get("/run", params={"prompt": "a metrics probe", "width": 64, "height": 64})
    text = server.client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    linted = promtool(text.content)
    assert (linted.returncode, linted.stdout, linted.stderr) == (0, "", "")

    accept = "application/openmetrics-text; version=1.0.0, text/plain; version=0.0.4; q=0.5"
    om = server.client.get("/metrics", headers={"Accept": accept})
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    # The strict OpenMetrics parser rejects anything out of the format (promtool reads
    # only the Prometheus text format, where OpenMetrics' `_total` counters look like
    # other families), and both say the same.
    families = {f.name: f for f in parse_openmetrics(om.text)}
    plain = {f.name: f for f in parse_prometheus(text.text)}
    assert set(families) == {"zimage_" + name for name in METRIC_NAMES}
    assert families["zimage_requests"].type == plain["zimage_requests"].type == "counter"
    assert families["zimage_generation_seconds"].type == "histogram"
    assert {s.labels["tier"] for s in families["zimage_requests"].samples} >= {"miss"}


METRIC_NAMES = [
    "requests",
    "generation_seconds",
    "hit_seconds",
    "generations",
    "generated_images",
    "queue_depth",
    "model_ready",
    "cache_entries",
    "cache_bytes",
    "cache_errors",
    "embedding_cache_hits",
    "embedding_cache_misses",
    "engine_batch_size",
]
