"""The OpenAPI document describes exactly the API's routes and methods, with the code's limits and patterns."""

import os
import re
from types import SimpleNamespace

import httpx
import jsonschema
import pytest
import schemathesis
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection

from channels_app.channel import ChannelInfo
from channels_app.core.channel_services import channel_draft_parse
from channels_app.core.selectors import channel_as_dict
from channels_app.errors import ApplicationError
from channels_app.http.api import BATCH_KEY_MAX_LENGTH, MAX_BATCH_MESSAGES, MAX_HISTORY_PAGE
from channels_app.http.openapi import openapi_document
from channels_app.identity import IDENTIFIER_JSON_PATTERN, IDENTIFIER_PATTERN
from channels_app.messages import position_parse
from channels_app.naming import client_id_parse
from channels_app.state.idempotency import idempotency_key_parse
from channels_app.tokens import token_mint
from channels_app.transports.routing import CHANNEL_PATH
from tests.support.auth import API_KEY
from tests.support.configs import memory_config
from tests.support.processes import ROOT


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


# The document's limits and patterns are the code's


def _operation(method: str, path: str) -> dict:
    return openapi_document()["paths"][path][method]


def _parameter(method: str, path: str, name: str) -> dict:
    item = openapi_document()["paths"][path]
    parameters = [*item.get("parameters", []), *item[method].get("parameters", [])]
    return next(parameter["schema"] for parameter in parameters if parameter["name"] == name)


def _schema(name: str) -> dict:
    return openapi_document()["components"]["schemas"][name]


def _body(method: str, path: str) -> dict:
    return _operation(method, path)["requestBody"]["content"]["application/json"]["schema"]


def _refused(call) -> bool:
    try:
        call()
    except ApplicationError as error:
        assert error.status == 400, error.as_dict()
        return True
    return False


def _matches(pattern: str, value: str) -> bool:
    # Python's "$" also matches before a final newline; no sample here ends with one.
    return re.search(pattern, value) is not None


IDENTIFIERS = ["a", "chat-1", "A.b_c-9", "x" * 100, "x" * 101, "", "a b", "a/b", "é", "chat?", "-", "_."]
CLIENT_IDS = ["a", "user@example.com", "svc:worker.1", "x" * 128, "x" * 129, "", "a b", "a/b", "é", "server-message"]
POSITIONS = ["", "0", "42", "9" * 18, "9" * 19, "k3x9a-42", "K3X9A-42", "a" * 32 + "-1", "a" * 33 + "-1", "k-", "-1"]
POSITIONS += ["1.5", "0f8fa5e2-3a6b-4f43-9b57-2f9c2a3d4e5f", "0f8fa5e23a6b4f439b572f9c2a3d4e5f", "0f8fa5e2-3a6b", "²"]


def test_the_identifier_pattern_is_the_codes():
    assert _parameter("get", "/api/v1/channels/{channel}", "channel")["pattern"] == IDENTIFIER_JSON_PATTERN
    for name in ("id", "name"):
        assert _schema("ChannelCreate")["properties"][name]["pattern"] == IDENTIFIER_JSON_PATTERN
    for value in IDENTIFIERS:
        assert _matches(IDENTIFIER_JSON_PATTERN, value) == bool(IDENTIFIER_PATTERN.match(value)), value
    # Names made only of dots are refused by the code alone (documented in identity.py).
    assert _matches(IDENTIFIER_JSON_PATTERN, "..") and not IDENTIFIER_PATTERN.match("..")


def test_the_client_id_pattern_is_the_codes():
    schema = _parameter("get", "/api/v1/channels/{channel}", "clientId")
    for value in CLIENT_IDS:
        documented = _matches(schema["pattern"], value) and value != schema["not"]["const"]
        assert documented == (not _refused(lambda value=value: client_id_parse(value))), value


def test_the_position_pattern_is_the_codes():
    for method, path in (("get", "/api/v1/channels/{channel}"), ("get", "/api/v1/channels/{channel}/messages")):
        pattern = _parameter(method, path, "since")["pattern"]
        for value in POSITIONS:
            assert _matches(pattern, value) == (not _refused(lambda value=value: position_parse(value))), value


def test_the_history_page_and_batch_limits_are_the_codes():
    limit = _parameter("get", "/api/v1/channels/{channel}/messages", "limit")
    assert (limit["minimum"], limit["maximum"]) == (1, MAX_HISTORY_PAGE)
    batch = _body("post", "/api/v1/messages")["properties"]["messages"]
    assert (batch["minItems"], batch["maxItems"]) == (1, MAX_BATCH_MESSAGES)
    assert str(MAX_BATCH_MESSAGES) in _operation("post", "/api/v1/messages")["summary"]


def test_the_idempotency_key_lengths_are_the_codes():
    push = _parameter("post", "/api/v1/channels/{channel}/messages", "Idempotency-Key")
    assert push["minLength"] == 1
    assert not _refused(lambda: idempotency_key_parse("k" * push["maxLength"], payload="x"))
    assert _refused(lambda: idempotency_key_parse("k" * (push["maxLength"] + 1), payload="x"))
    assert _refused(lambda: idempotency_key_parse("", payload="x"))
    # A batch's key is at most as long as leaves its last item's key "<key>#<index>" within the limit.
    batch = _parameter("post", "/api/v1/messages", "Idempotency-Key")
    last_item = f"#{_body('post', '/api/v1/messages')['properties']['messages']['maxItems'] - 1}"
    assert batch["maxLength"] == BATCH_KEY_MAX_LENGTH
    assert not _refused(lambda: idempotency_key_parse("k" * batch["maxLength"] + last_item, payload="x"))
    assert _refused(lambda: idempotency_key_parse("k" * (batch["maxLength"] + 1) + last_item, payload="x"))


def test_the_token_ttl_bounds_are_the_codes():
    ttl = _body("post", "/api/v1/tokens")["properties"]["ttl"]
    for value, refused in ((ttl["minimum"], False), (ttl["maximum"], False), (ttl["minimum"] - 1, True)):
        assert _refused(lambda value=value: token_mint(channel_id="c", client_id="a", ttl=value)) == refused, value
    assert _refused(lambda: token_mint(channel_id="c", client_id="a", ttl=ttl["maximum"] + 1))


def test_the_channel_create_body_is_what_the_api_accepts():
    schema = _schema("ChannelCreate")
    server = SimpleNamespace(history_size=100, history_ttl=3600)
    required = {name: "WS" if name == "type" else "chan-1" for name in schema["required"]}

    def parse(**fields):
        return lambda: channel_draft_parse({**required, **fields}, server=server)

    assert not _refused(parse())
    for name in schema["required"]:
        without = {key: value for key, value in required.items() if key != name}
        assert _refused(lambda without=without: channel_draft_parse(without, server=server)), name
    assert _refused(parse(unknownField=1)) and schema["additionalProperties"] is False
    for name, property_schema in schema["properties"].items():
        if property_schema["type"] == "integer":
            low, high = property_schema["minimum"], property_schema["maximum"]
            assert not _refused(parse(**{name: low})) and not _refused(parse(**{name: high})), name
            assert _refused(parse(**{name: low - 1})) and _refused(parse(**{name: high + 1})), name
        elif "enum" in property_schema:
            assert all(not _refused(parse(**{name: value})) for value in property_schema["enum"]), name
            assert _refused(parse(**{name: "other"})), name
        elif property_schema["type"] == "boolean":
            assert not _refused(parse(**{name: True})) and _refused(parse(**{name: "yes"})), name
        else:
            assert property_schema["pattern"] == IDENTIFIER_JSON_PATTERN, name
            assert _refused(parse(**{name: "a b"})), name


def test_the_channel_schema_describes_the_api_answers():
    schema = _schema("Channel")
    channel = ChannelInfo("chan-1", "chan", "SSE", 5, 10, 60, private=True, source="api", incarnation=3)
    json_types = {str: "string", int: "integer", bool: "boolean"}
    listed, preflight = channel_as_dict(channel, 2), channel_as_dict(channel, 2, preflight=True)
    assert list(listed) == list(schema["properties"])
    assert set(schema["required"]) <= set(preflight) <= set(listed)
    for key, value in listed.items():
        assert json_types[type(value)] == schema["properties"][key]["type"], key
        assert value in schema["properties"][key].get("enum", [value]), key


# --- Examples: valid against their schemas, and what a real server accepts and answers ---------

OPERATIONS = ("get", "post", "put", "patch", "delete")


def _operations():
    for path, item in openapi_document()["paths"].items():
        for method in OPERATIONS:
            if method in item:
                yield path, method, item[method]


def _json_media(operation: dict) -> tuple[dict | None, dict[str, dict]]:
    """The operation's JSON request body, and its JSON answers by status."""
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    answers = {
        status: response["content"]["application/json"]
        for status, response in operation["responses"].items()
        if "application/json" in response.get("content", {})
    }
    return body, answers


def _validator(schema: dict) -> jsonschema.Draft202012Validator:
    # The document's "#/components/schemas/..." references resolve against a root that carries them.
    return jsonschema.Draft202012Validator({**schema, "components": openapi_document()["components"]})


def test_every_body_and_answer_has_examples_that_match_its_schema():
    checked = 0
    for path, method, operation in _operations():
        body, answers = _json_media(operation)
        for where, media in [("request", body), *answers.items()]:
            if media is None:
                continue
            assert media.get("examples"), f"{method.upper()} {path} {where}: no example"
            for name, example in media["examples"].items():
                errors = [error.message for error in _validator(media["schema"]).iter_errors(example["value"])]
                assert errors == [], f"{method.upper()} {path} {where} example {name!r}: {errors}"
                checked += 1
    assert checked >= 40


def _example_values(operation: dict, status: int) -> list:
    media = operation["responses"][str(status)]["content"]["application/json"]
    return [example["value"] for example in media["examples"].values()]


def _same_shape(answer, example) -> bool:
    """The same keys at every level of objects (a list's items are compared with the example's first)."""
    if isinstance(example, dict):
        return (
            isinstance(answer, dict)
            and set(answer) == set(example)
            and all(_same_shape(answer[key], example[key]) for key in example if example[key] is not None)
        )
    if isinstance(example, list) and example and answer:
        return all(_same_shape(item, example[0]) for item in answer)
    return True


@pytest.fixture(scope="module")
def example_server(start_module_server):
    """configs/memory.config.yaml, whose channels the examples name, with an API key."""
    config = (ROOT / "configs" / "memory.config.yaml").read_text()
    return start_module_server(config, env={"REALTIME_API_KEYS": API_KEY})


def test_request_examples_are_accepted_and_answered_as_documented(example_server):
    document_paths = openapi_document()["paths"]
    sent = 0
    with httpx.Client(base_url=example_server.http, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        for path, method, operation in _operations():
            body, _ = _json_media(operation)
            if body is None:
                continue
            url = path.replace("{channel}", "my-chat-example")
            for name, example in body["examples"].items():
                response = client.request(method, url, json=example["value"])
                documented = [int(status) for status in operation["responses"] if status.startswith("2")]
                assert response.status_code == min(documented), (method, path, name, response.text)
                assert any(
                    _same_shape(response.json(), value) for value in _example_values(operation, response.status_code)
                ), (method, path, name, response.json())
                sent += 1
                if path == "/api/v1/channels":
                    # Each create example makes the channel "news"; the delete's answer is the documented one.
                    deleted = client.delete("/api/v1/channels/news")
                    delete = document_paths["/api/v1/channels/{channel}"]["delete"]
                    assert _same_shape(deleted.json(), _example_values(delete, 200)[0]), deleted.json()
    assert sent >= 6


def test_answers_without_a_body_look_like_their_examples(example_server):
    paths = openapi_document()["paths"]
    with httpx.Client(base_url=example_server.http, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        client.post("/api/v1/channels/my-chat-example/messages", json={"payload": "hello"})
        listed = client.get("/api/v1/channels").json()
        history = client.get("/api/v1/channels/my-chat-example/messages", params={"since": "0"}).json()
        gap = client.get("/api/v1/channels/my-chat-example/messages", params={"since": "zzzz-1"}).json()
        preflight = httpx.get(f"{example_server.http}/api/v1/channels/my-chat-example?upgrade=0").json()
    assert _same_shape(listed, _example_values(paths["/api/v1/channels"]["get"], 200)[0])
    messages, with_gap = _example_values(paths["/api/v1/channels/{channel}/messages"]["get"], 200)
    assert _same_shape(history, messages) and history["messages"]
    assert _same_shape(gap, with_gap) and gap["gap"]
    assert _same_shape(preflight, _example_values(paths["/api/v1/channels/{channel}"]["get"], 200)[0])


def test_error_examples_are_the_errors_the_api_gives(example_server):
    push = ("/api/v1/channels/{channel}/messages", "post")
    create = ("/api/v1/channels", "post")
    channels = f"{example_server.http}/api/v1/channels"
    url = f"{channels}/my-chat-example/messages"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    httpx.post(url, json={"payload": "first"}, headers=auth | {"Idempotency-Key": "example-422"})
    answers = [
        (push, 400, httpx.post(url, json={"text": "hello"}, headers=auth)),
        (push, 401, httpx.post(url, json={"payload": "hello"})),
        (push, 404, httpx.post(url.replace("my-chat-example", "nope"), json={"payload": "x"}, headers=auth)),
        (push, 413, httpx.post(url, json={"payload": "x" * 70_000}, headers=auth)),
        (push, 422, httpx.post(url, json={"payload": "other"}, headers=auth | {"Idempotency-Key": "example-422"})),
        (create, 400, httpx.post(channels, json={"id": "news", "type": "XMPP"}, headers=auth)),
    ]
    for (path, method), status, response in answers:
        operation = _operation(method, path)
        assert response.status_code == status, (method, path, response.text)
        examples = _example_values(operation, status)
        assert [value["error"] for value in examples] == [response.json()["error"]], (method, path, status)
        assert _same_shape(response.json(), examples[0]), response.json()


# --- The API fuzzed from its own document (moved from test_hardening_openapi.py) ------------------
# schemathesis generates requests, valid and invalid, for every operation of /api/v1/openapi.json
# against a real daphne with an API key; every response must be a non-5xx that conforms to the
# document (status, content type, body schema). Bounded by MAX_EXAMPLES per operation
# (SCHEMATHESIS_MAX_EXAMPLES raises it) to stay under about a minute.

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "60"))
FUZZED_CONFIG = (
    memory_config(allow_create_new_channels=True, allow_push_server_messages=True)
    + """
  chat: {id: "chat-1", type: "WS"}
  vault: {id: "vault-1", type: "WS", private: true}
  feed: {id: "feed-1", type: "SSE"}
"""
)

schema = schemathesis.openapi.from_dict(openapi_document())
QUERY_PARAMETERS_OF_LENIENT_OPERATIONS = {("GET", "/api/v1/channels"): {"limit", "after"}}


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
    excluded = []
    known = QUERY_PARAMETERS_OF_LENIENT_OPERATIONS.get((case.method, case.path))
    if known is not None and set(case.query or {}) - known:
        # The channel list ignores query parameters it does not know (a cache buster, say), as the Go
        # service's does: such a request is not refused, though the document lists no such parameter.
        excluded = [negative_data_rejection]
    case.call_and_validate(
        base_url=api_server.http,
        headers={"Authorization": f"Bearer {API_KEY}"},
        excluded_checks=excluded,
        timeout=10,
    )


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
