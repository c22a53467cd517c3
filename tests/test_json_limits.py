"""Every endpoint that reads a JSON body refuses hostile JSON with a 400, under daphne and under uvicorn.

Nesting 3,000 and 100,000 levels deep and a 5,000-digit integer answered 500 with a traceback in
the log; NaN, Infinity and 1e999 were published as text that is not JSON. Each is sent as the
whole body and inside the field each endpoint reads; nothing may be published or created.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import TEST_CONFIG
from tests.support.auth import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
PRIVATE_CONFIG = TEST_CONFIG + '  vault:\n    id: "vault-1"\n    type: "WS"\n    private: true\n'

HOSTILE = {
    "3,000 levels": "[" * 3_000 + "]" * 3_000,
    "100,000 levels": "[" * 100_000 + "]" * 100_000,
    "5,000 digits": "1" * 5_000,
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "1e999": "1e999",
}
# Each endpoint with a body, and where in its body a value goes.
ENDPOINTS = {
    "/api/v1/tokens": '{{"channel": "vault-1", "clientId": "a", "ttl": {}}}',
    "/api/v1/channels/chat-1/messages": '{{"payload": {{"reading": [1, {}]}}}}',
    "/api/v1/messages": '{{"messages": [{{"channel": "chat-1", "payload": {}}}]}}',
    "/api/v1/channels": '{{"id": "created-by-hostile-json", "type": "WS", "maxOfChannelConnections": {}}}',
}


@pytest.fixture(scope="module")
def server(start_module_server, asgi_server):
    return start_module_server(PRIVATE_CONFIG, env={"REALTIME_API_KEYS": API_KEY}, server=asgi_server)


def test_hostile_json_is_refused_with_400_on_every_endpoint_and_nothing_is_published(server):
    answers = {}
    with httpx.Client(base_url=server.http, headers=AUTH, timeout=10) as client:
        for path, template in ENDPOINTS.items():
            for name, value in HOSTILE.items():
                for where, body in (("as the body", value), ("inside it", template.format(value))):
                    response = client.post(path, content=body)
                    answers[path, name, where] = (response.status_code, response.json())
        history = client.get("/api/v1/channels/chat-1/messages").json()["messages"]
        channels = [channel["id"] for channel in client.get("/api/v1/channels").json()["channels"]]

    wrong = {case: answer for case, answer in answers.items() if answer[0] != 400 or "message" not in answer[1]}
    assert not wrong
    for (_, name, where), (_, body) in answers.items():
        if "levels" in name and where == "inside it":
            assert "more than 64 levels deep" in body["message"]
        if name == "5,000 digits" and where == "inside it":
            assert "more than 100 digits" in body["message"]
    assert history == []
    assert "created-by-hostile-json" not in channels
    log = server.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def test_json_within_the_limits_is_published_exactly(server):
    payload = "[" * 60 + "9" * 100 + "]" * 60
    with httpx.Client(base_url=server.http, headers=AUTH, timeout=10) as client:
        pushed = client.post("/api/v1/channels/chat-2/messages", content=f'{{"payload": {payload}}}')
        assert pushed.status_code == 201, pushed.text
        history = client.get("/api/v1/channels/chat-2/messages").json()["messages"]
    assert [message["payload"] for message in history] == [payload]
