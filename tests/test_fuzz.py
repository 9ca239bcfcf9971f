"""Schemathesis against the OpenAPI schema of every route: whatever a client sends, no 500.

The server's model fails to load on purpose, so that valid requests end in a
quick 503 instead of minutes of CPU generation at random sizes; every route
still parses, validates, authenticates and looks up the cache as always.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.conftest import Server


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("fuzz")
    model = base / "unloadable-model"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}')
    srv = Server(base / "cache", "--model", str(model), "--admin-token", "fuzz-admin-token-0123")
    srv.wait_model("failed")  # up, with the model failed
    yield srv
    srv.stop()


def test_no_request_gets_a_server_error(fuzzed: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9  # every route of the API, the admin route included
    tried: dict[str, set[int]] = {}
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):
        label = f"{operation.label} ({mode.value})"

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call(case) -> None:
            response = case.call(
                base_url=fuzzed.url, headers={"Authorization": "Bearer fuzz-admin-token-0123"}
            )
            tried.setdefault(label, set()).add(response.status_code)  # noqa: B023 (called at once)
            # 503 is the documented answer while the model is unavailable; any other 5xx is a bug.
            assert response.status_code < 500 or response.status_code == 503, (label, response.text)  # noqa: B023

        try:
            call()
        except Unsatisfiable:  # a route with no inputs has no invalid ones (GET /health)
            assert mode is schemathesis.GenerationMode.NEGATIVE, label
    assert len(tried) > len(operations)
    assert any(422 in codes for codes in tried.values())  # bad input was generated, and refused
    assert any(200 in codes for codes in tried.values())


def test_the_fuzzed_server_is_still_healthy(fuzzed: Server) -> None:
    assert fuzzed.client.get("/health").json()["status"] == "ok"
    assert "Exception in ASGI application" not in Path(fuzzed.log_path).read_text(errors="replace")
