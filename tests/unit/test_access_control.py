"""Access control: which routes need which token, constant-time bearer checks, and refusal of
cross-site (Origin / Sec-Fetch-Site), DNS-rebinding (Host) and form-bodied management requests."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from loraserve.api.app import create_app
from loraserve.api.security import Access, accepted_tokens, access_of, bearer_matches, host_name
from loraserve.config import ServerConfig

BASE = "http://127.0.0.1:8080"


def client(**settings) -> TestClient:
    """The app factory in process (no lifespan: no model is loaded, routes still answer)."""
    return TestClient(create_app(ServerConfig(**settings)), base_url=BASE)


@pytest.mark.parametrize(
    "path,access",
    [
        ("/ping", Access.OPEN),
        ("/console", Access.OPEN),
        ("/console/vendor/uPlot.iife.min.js", Access.OPEN),
        ("/console/vendor/uPlot.min.css", Access.OPEN),
        ("/console/vendor/other.js", Access.MANAGEMENT),
        ("/openapi.json", Access.OPEN),
        ("/predictions/m", Access.INFERENCE),
        ("/invocations", Access.INFERENCE),
        ("/v1/chat/completions", Access.INFERENCE),
        ("/models", Access.MANAGEMENT),
        ("/models/m/adapters", Access.MANAGEMENT),
        ("/adapters", Access.MANAGEMENT),
        ("/workflows", Access.MANAGEMENT),
        ("/metrics", Access.MANAGEMENT),
        ("/console/state", Access.MANAGEMENT),
        ("/no/such/route", Access.MANAGEMENT),
        ("/predictions", Access.MANAGEMENT),
        # other servers' conventions: each as the route it mirrors
        ("/health", Access.OPEN),
        ("/v1/models/tiny", Access.INFERENCE),
        ("/generate", Access.INFERENCE),
        ("/generate_stream", Access.INFERENCE),
        ("/", Access.INFERENCE),
        ("/v1/load_lora_adapter", Access.MANAGEMENT),
        ("/v1/unload_lora_adapter", Access.MANAGEMENT),
        ("/lora-adapters", Access.MANAGEMENT),
    ],
)
def test_route_classes(path, access):
    assert access_of(path) is access


@pytest.mark.parametrize(
    "access,api,mgmt,expected",
    [
        (Access.OPEN, "a", "m", []),
        (Access.INFERENCE, None, None, []),
        (Access.INFERENCE, None, "m", []),  # only a management token: inference stays open
        (Access.INFERENCE, "a", "m", ["a", "m"]),
        (Access.MANAGEMENT, None, None, []),
        (Access.MANAGEMENT, "a", None, ["a"]),  # the API token guards management when alone
        (Access.MANAGEMENT, "a", "m", ["m"]),
    ],
)
def test_accepted_tokens(access, api, mgmt, expected):
    assert accepted_tokens(access, api, mgmt) == expected


@pytest.mark.parametrize(
    "header,ok",
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("Bearer  s3cret ", True),
        ("Bearer s3cre", False),
        ("Bearer s3cret2", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("Bearer ", False),
        (None, False),
        ("Bearer sécret", False),
    ],
)
def test_bearer_matches(header, ok):
    assert bearer_matches(header, ["s3cret"]) is ok


@pytest.mark.parametrize(
    "header,name",
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("[::1]:8080", "::1"),
        ("evil.example:80", "evil.example"),
    ],
)
def test_host_name(header, name):
    assert host_name(header) == name


def test_management_routes_need_the_management_token():
    api = client(api_token="api-tok", management_token="mgmt-tok")
    for path in ("/models", "/workflows", "/metrics", "/console/state", "/adapters"):
        reply = api.get(path)
        assert reply.status_code == 401, path
        assert reply.json()["type"] == "UnauthorizedException"
        assert reply.headers["www-authenticate"] == "Bearer"
        assert api.get(path, headers={"Authorization": "Bearer api-tok"}).status_code == 401
    assert api.get("/models", headers={"Authorization": "Bearer mgmt-tok"}).status_code == 200
    assert api.post("/models?url=x").status_code == 401
    assert api.put("/models/m?min_worker=2").status_code == 401
    assert api.delete("/models/m").status_code == 401


def test_inference_routes_need_a_token_and_ping_stays_open():
    api = client(api_token="api-tok", management_token="mgmt-tok")
    assert api.post("/predictions/m", json={}).status_code == 401
    assert api.post("/v1/completions", json={}).status_code == 401
    for token in ("api-tok", "mgmt-tok"):
        reply = api.post("/predictions/m", json={}, headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 404  # past the check: the model does not exist
    assert api.get("/ping").status_code in (200, 503)  # health, never 401
    assert api.get("/console").status_code == 200
    library = api.get("/console/vendor/uPlot.iife.min.js")  # the page's charts, offline
    assert library.status_code == 200 and library.headers["content-type"].startswith("text/javascript")
    assert "uPlot" in library.text and api.get("/console/vendor/uPlot.min.css").status_code == 200


def test_api_token_alone_also_guards_management():
    api = client(api_token="only")
    assert api.get("/models").status_code == 401
    assert api.get("/models", headers={"Authorization": "Bearer only"}).status_code == 200


def test_no_tokens_configured_means_open():
    assert client().get("/models").status_code == 200


def test_cross_origin_state_change_is_refused():
    api = client()
    # a page on another site posting a "simple" form to /models?url=
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        reply = api.post("/models?url=/tmp/x", headers=headers)
        assert reply.status_code == 403, headers
        assert reply.json()["type"] == "ForbiddenException"
    reply = api.post(
        "/predictions/m",
        headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
        content=b"{}",
    )
    assert reply.status_code == 403
    # the same origin (the console) and non-browser clients pass the check (and reach the route)
    for headers in ({"Origin": BASE}, {}):
        assert api.delete("/models/m", headers=headers).status_code == 404
    assert api.get("/models", headers={"Origin": "http://evil.example"}).status_code == 200


def test_allowed_origins_let_a_named_site_in():
    api = client(allowed_origins=["https://dash.example"])
    reply = api.delete("/models/m", headers={"Origin": "https://dash.example"})
    assert reply.status_code == 404  # past the check


def test_form_bodies_are_refused_on_management_routes():
    api = client()
    for kind in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"):
        reply = api.post("/models", content=b"url=/tmp/x", headers={"Content-Type": kind})
        assert reply.status_code == 415, kind
    assert api.post("/models", json={"url": "/nope"}).status_code in (400, 403)


def test_dns_rebinding_host_is_refused_on_loopback():
    api = client()  # bound to 127.0.0.1 by default
    assert api.get("/ping", headers={"Host": "evil.example:8080"}).status_code == 400
    assert api.get("/models", headers={"Host": "localhost:8080"}).status_code == 200
    anywhere = client(host="0.0.0.0")
    assert anywhere.get("/models", headers={"Host": "evil.example"}).status_code == 200


def test_utf8_token_matches_its_raw_header_bytes():
    raw = "Bearer " + "sécret".encode().decode("latin-1")  # how the ASGI header decodes
    assert bearer_matches(raw, ["sécret"]) and not bearer_matches(raw, ["secret"])
