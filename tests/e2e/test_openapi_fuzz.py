"""A bounded schemathesis run against the declared OpenAPI document of a real server (the
echo model): for every operation, positive and negative examples (and, where a route takes a
model name, examples aimed at the loaded model); no answer may be a 5xx, and the server
stays healthy."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from loraserve.testing.server import ServerProcess  # noqa: E402
from tests.e2e.helpers import make_store  # noqa: E402

pytestmark = pytest.mark.slow
EXAMPLES = 6  # per operation and mode: ~35 operations x 2 modes (+ the model-targeted ones)


def fuzz(operation, base_url: str, failures: list[str], **fixed) -> None:
    modes = [GenerationMode.POSITIVE]
    if len(operation.query) or len(operation.body):  # a path of strings cannot be made invalid
        modes.append(GenerationMode.NEGATIVE)
    for mode in modes:

        @given(case=operation.as_strategy(generation_mode=mode, **fixed))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case) -> None:
            response = case.call(base_url=base_url, timeout=30)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} {case.query} -> "
                    f"{response.status_code} {response.text[:300]}"
                )

        try:
            run()
        except Unsatisfiable:  # every parameter is a free string: nothing is invalid
            assert mode is GenerationMode.NEGATIVE


def test_no_generated_request_gets_a_server_error(tmp_path):
    store = make_store(tmp_path)
    with ServerProcess(["--model-store", str(store)]) as server:
        schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
        failures: list[str] = []
        for result in schema.get_all_operations():
            operation = result.ok()
            fuzz(operation, server.base_url, failures)
            if "{model_name}" in operation.path:
                fuzz(operation, server.base_url, failures, path_parameters={"model_name": "echo"})
        assert failures == []
        assert server.client.get("/ping").status_code == 200
