"""The OpenAPI document describes exactly the API's routes and methods."""

import os
import re

import pytest
import schemathesis
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import HealthCheck, settings

from channels_app.http.openapi import openapi_document
from channels_app.transports.routing import CHANNEL_PATH
from tests.support.auth import API_KEY


def _django_routes(patterns, prefix: str = "") -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            routes.update(_django_routes(pattern.url_patterns, route))
        elif isinstance(pattern, URLPattern) and route.startswith("api/v1/"):
            methods = getattr(pattern.callback, "allowed_methods", ())
            path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
            routes[path] = {method.lower() for method in methods}
    return routes


def test_every_route_and_method_is_documented_and_nothing_else():
    routes = _django_routes(get_resolver().url_patterns)
    # GET on the channel URL is routed before Django (transports/routing.py): streams, WebSockets, preflight.
    assert CHANNEL_PATH.startswith("^api/v1/channels/")
    routes.setdefault("/api/v1/channels/{channel}", set()).add("get")
    documented = {
        path: {method for method in item if method in ("get", "post", "put", "patch", "delete")}
        for path, item in openapi_document()["paths"].items()
    }
    assert documented == routes


def test_every_reference_resolves():
    document = openapi_document()
    text = repr(document)
    for name in re.findall(r"#/components/schemas/(\w+)", text):
        assert name in document["components"]["schemas"], name


# --- The API fuzzed from its own document (moved from test_hardening_openapi.py) ------------------
# schemathesis generates requests, valid and invalid, for every operation of /api/v1/openapi.json
# against a real daphne with an API key; every response must be a non-5xx that conforms to the
# document (status, content type, body schema). Bounded by MAX_EXAMPLES per operation
# (SCHEMATHESIS_MAX_EXAMPLES raises it) to stay under about a minute.

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "60"))
FUZZED_CONFIG = """
server:
  allow_create_new_channels: true
  allow_push_server_messages: true
pubsub:
  driver: "MEMORY"
channels:
  chat: {id: "chat-1", type: "WS"}
  vault: {id: "vault-1", type: "WS", private: true}
  feed: {id: "feed-1", type: "SSE"}
"""

schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def api_server(start_module_server):
    return start_module_server(FUZZED_CONFIG, env={"REALTIME_API_KEYS": API_KEY})


@pytest.fixture
def fuzzed_server(api_server):
    return api_server


@schema.exclude(path="/api/v1/channels/{channel}", method="GET").parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@pytest.mark.timeout(120)
def test_api_conforms_to_its_document(case, api_server):
    case.call_and_validate(base_url=api_server.http, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)


@schema.include(path="/api/v1/channels/{channel}", method="GET").parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@pytest.mark.timeout(120)
def test_channel_preflight_conforms_to_its_document(case, api_server):
    """The channel URL itself, as a preflight: an event stream would never end, so ``upgrade=0`` is forced."""
    case.query = {**(case.query or {}), "upgrade": "0"}
    case.call_and_validate(base_url=api_server.http, timeout=10)


@schema.parametrize()
@settings(max_examples=max(MAX_EXAMPLES // 3, 10), deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.timeout(120)
def test_without_a_key_every_write_is_refused_as_documented(case, api_server):
    if case.operation.method.upper() == "GET" and case.operation.path == "/api/v1/channels/{channel}":
        case.query = {**(case.query or {}), "upgrade": "0"}
    response = case.call(base_url=api_server.http, timeout=10)
    assert response.status_code < 500
    if case.operation.definition.raw.get("security"):
        # 400: a body Django cannot even parse (multipart without a boundary) is refused before the key check.
        refused = (400, 401, 405)
        assert response.status_code in refused, (case.as_curl_command(), response.status_code, response.text[:200])
