"""One access policy for every front: the same cases against ``loraserve serve``'s app and the
Ray ingress's app, both in process. The checks run before any route, so the Ray ingress needs
no cluster here: its replica caller is a fake that fails the test if a route reaches it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from loraserve.api.app import create_app
from loraserve.config import ServerConfig

BASE = "http://127.0.0.1:8080"
SETTINGS = {
    "api_token": "api-tok",
    "management_token": "mgmt-tok",
    "max_request_bytes": 1000,
    "max_json_depth": 8,
}
API = {"Authorization": "Bearer api-tok"}
MGMT = {"Authorization": "Bearer mgmt-tok"}
FORM = {**MGMT, "Content-Type": "application/x-www-form-urlencoded"}
REGISTER = "/models/nope/adapters?name=a&src=/x"  # management; no model "nope" on either front
BIG = json.dumps({"inputs": "x" * 2000}).encode()
DEEP = b"[" * 20 + b"]" * 20


class NoReplica:
    """Where the ingress would call an engine replica: no case here may get that far."""

    async def broadcast(self, *_args):
        raise AssertionError("the access checks must answer before any replica call")

    async def generate(self, *_args):
        raise AssertionError("the access checks must answer before any replica call")


def serve_front(tmp_path: Path, settings: dict) -> TestClient:
    """``loraserve serve``'s app factory (no lifespan: no model is loaded, routes still answer)."""
    return TestClient(create_app(ServerConfig(**settings)), base_url=BASE)


def ray_front(tmp_path: Path, settings: dict) -> TestClient:
    """The Ray ingress's FastAPI app, as ``Ingress.__serve_build_asgi_app__`` builds it."""
    from loraserve.ray_serve.config import RayAppConfig
    from loraserve.ray_serve.ingress import build_ingress_app
    from loraserve.ray_serve.ray_model import RayModel, RayModelManager

    (tmp_path / "serving.properties").write_text("option.model_id=/nowhere\n")
    model = RayModel(RayAppConfig(model_dir=tmp_path, model_name="tiny", **settings), NoReplica())  # type: ignore[arg-type]
    return TestClient(build_ingress_app(RayModelManager(model)), base_url=BASE)


@pytest.fixture(params=[serve_front, ray_front], ids=["serve", "ray"])
def front(request, tmp_path: Path) -> Callable[..., TestClient]:
    return lambda **settings: request.param(tmp_path, settings)


# (method, path, request kwargs, status, error type); 404 = past every check, to the route.
CASES = {
    "cross-origin management POST": (
        "POST",
        REGISTER,
        {"headers": {**MGMT, "Origin": "http://evil.example"}},
        403,
        "ForbiddenException",
    ),
    "cross-site management POST": (
        "POST",
        REGISTER,
        {"headers": {**MGMT, "Sec-Fetch-Site": "cross-site"}},
        403,
        "ForbiddenException",
    ),
    "Origin null DELETE": (
        "DELETE",
        "/models/nope/adapters/a",
        {"headers": {**MGMT, "Origin": "null"}},
        403,
        "ForbiddenException",
    ),
    "foreign Host": ("GET", "/ping", {"headers": {"Host": "evil.example:8080"}}, 400, "BadRequestException"),
    "inference without a token": (
        "POST",
        "/invocations",
        {"json": {"inputs": "hi"}},
        401,
        "UnauthorizedException",
    ),
    "inference with a wrong token": (
        "POST",
        "/predictions/nope",
        {"json": {}, "headers": {"Authorization": "Bearer api-to"}},
        401,
        "UnauthorizedException",
    ),
    "API token on management": (
        "GET",
        "/models/nope/adapters",
        {"headers": API},
        401,
        "UnauthorizedException",
    ),
    "management without a token": ("DELETE", "/models/nope/adapters/a", {}, 401, "UnauthorizedException"),
    "body over the limit": (
        "POST",
        "/predictions/nope",
        {"content": BIG, "headers": API},
        413,
        "PayloadTooLargeException",
    ),
    "form body on management": (
        "POST",
        REGISTER,
        {"content": b"url=/tmp/x", "headers": FORM},
        415,
        "UnsupportedMediaTypeException",
    ),
    "management token on management": ("GET", "/models/nope/adapters", {"headers": MGMT}, 404, None),
    "same-origin management DELETE": (
        "DELETE",
        "/models/nope/adapters/a",
        {"headers": {**MGMT, "Origin": BASE}},
        404,
        None,
    ),
    "API token on inference": ("POST", "/predictions/nope", {"json": {}, "headers": API}, 404, None),
    "management token on inference": ("POST", "/predictions/nope", {"json": {}, "headers": MGMT}, 404, None),
}


@pytest.mark.parametrize("case", CASES)
def test_the_same_access_rules_on_every_front(front, case):
    method, path, kwargs, status, kind = CASES[case]
    reply = front(**SETTINGS).request(method, path, **kwargs)
    assert reply.status_code == status, reply.text
    if kind:
        assert reply.json()["type"] == kind
    if status == 401:
        assert reply.headers["www-authenticate"] == "Bearer"


def test_deep_json_is_refused_on_every_front(front):
    reply = front(**SETTINGS).post(
        "/v1/chat/completions", content=DEEP, headers={**API, "Content-Type": "application/json"}
    )
    assert reply.status_code == 400 and "nested" in reply.text


def test_health_stays_open_and_no_token_means_open(front):
    assert front(**SETTINGS).get("/ping").status_code != 401
    open_front = front()
    assert open_front.get("/models/nope/adapters").status_code == 404
    assert open_front.post("/predictions/nope", json={}).status_code == 404


def test_allowed_origins_and_hosts_on_every_front(front):
    api = front(allowed_origins=["https://dash.example"], allowed_hosts=["models.example"])
    named = {"Host": "models.example", "Origin": "https://dash.example"}
    assert api.delete("/models/nope/adapters/a", headers=named).status_code == 404
    assert api.get("/ping", headers={"Host": "localhost:8080"}).status_code == 400


def test_serve_and_ray_commands_parse_the_same_access_settings(tmp_path: Path, monkeypatch):
    from loraserve import cli
    from loraserve.access_options import ACCESS_SETTINGS
    from loraserve.ray_serve import launcher

    (tmp_path / "serving.properties").write_text("option.model_id=/nowhere\n")
    monkeypatch.setenv("LORASERVE_API_TOKEN", "env-api")
    monkeypatch.setenv("LORASERVE_MAX_REQUEST_BYTES", "4096")
    given = ["--management-token", "m", "--allowed-origins", "https://d.example", "--allowed-hosts", "h"]
    parser = cli.build_parser()
    serve = cli.config_from_args(parser.parse_args(["serve", "--model-store", str(tmp_path), *given]))
    ray = launcher.config_from_args(parser.parse_args(["ray", "--model", str(tmp_path), *given]))
    assert serve.api_token == "env-api" and serve.max_request_bytes == 4096
    for key in ACCESS_SETTINGS:
        assert getattr(ray.server_config(), key) == getattr(serve, key), key


def test_a_model_store_that_does_not_exist_is_a_start_up_error(tmp_path):
    """It used to start a "healthy" server with no models."""
    from loraserve import cli
    from loraserve.errors import ConfigError

    with pytest.raises(ConfigError, match="not a directory"):
        cli.config_from_args(
            cli.build_parser().parse_args(["serve", "--model-store", str(tmp_path / "nope")])
        )
