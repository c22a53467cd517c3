"""Security against a real daphne: headers on every kind of response, a Content-Security-Policy the pages
satisfy in a real browser, CSRF where cookies authenticate, CORS only on event streams, production
settings (``DJANGO_SECURE=1``) and ``check --deploy``, and every credential refused without a trace
of a secret in the log.

Credential cases already covered elsewhere (missing or wrong API key on each endpoint in
test_api.py; no, forged, expired, other-channel and other-client tokens on WebSockets in
test_private_channels.py) are not repeated; this file fills the gaps.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time

import httpx
import jwt
import pytest
import websockets
from playwright.sync_api import expect, sync_playwright

from channels_app.http.security import CONTENT_SECURITY_POLICY
from tests.conftest import TEST_CONFIG
from tests.support.auth import API_KEY, AUTH
from tests.support.configs import CHAT_AND_FEED, memory_config
from tests.support.hostile import assert_no_server_error, assert_still_serving, raw_request
from tests.support.processes import ROOT, base_environment, manage

TOKEN_SECRET = "security-token-secret-0123456789abcdef"
ADMIN_PASSWORD = "admin-pass-Zq8!" + "p" * 8
CONFIG = (
    TEST_CONFIG.replace(
        "allow_push_server_messages: true",
        "allow_push_server_messages: true\n  render_chat_html: true\n  render_notifications_html: true\n"
        '  allowed_origins: ["https://app.example.com"]',
    )
    + '  vault:\n    id: "vault-1"\n    type: "WS"\n    private: true\n'
    + '  alerts:\n    id: "alerts-1"\n    type: "SSE"\n    private: true\n'
)


@pytest.fixture(scope="module")
def server(start_module_server):
    server = start_module_server(CONFIG, env={"REALTIME_API_KEYS": API_KEY, "REALTIME_TOKEN_SECRET": TOKEN_SECRET})
    created = manage(
        "createsuperuser",
        "--noinput",
        "--username",
        "admin",
        "--email",
        "admin@example.com",
        env={**server.env, "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD},
        check=False,
    )
    assert created.returncode == 0, created.stderr
    return server


def mint(server, channel: str, client_id: str, **options) -> str:
    body = {"channel": channel, "clientId": client_id, **options}
    response = httpx.post(f"{server.http}/api/v1/tokens", json=body, headers=AUTH, timeout=5)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def token(channel: str, client_id: str, *, secret: str = TOKEN_SECRET, expires_in: int = 60, **extra) -> str:
    claims = {"channel": channel, "sub": client_id, "exp": int(time.time()) + expires_in, "pub": True, **extra}
    return jwt.encode(claims, secret, algorithm="HS256")


def unsigned(channel: str, client_id: str) -> str:
    """A token with ``alg: none``: claims anyone could write."""
    return jwt.encode({"channel": channel, "sub": client_id, "exp": int(time.time()) + 60}, None, algorithm="none")


async def ws_refusal(url: str) -> tuple[dict, int]:
    async with websockets.connect(url) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    return frame, closed.value.rcvd.code


# --- headers -----------------------------------------------------------------------------------


def assert_security_headers(response: httpx.Response) -> None:
    headers = response.headers
    assert headers.get("x-content-type-options") == "nosniff", response.url
    assert headers.get("x-frame-options") == "DENY" or "frame-ancestors 'none'" in headers.get(
        "content-security-policy", ""
    ), response.url
    assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), response.url
    assert headers.get("referrer-policy") == "same-origin", response.url


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/web/chat/", 200),
        ("GET", "/web/notifications/", 200),
        ("GET", "/admin/login/", 200),
        ("GET", "/admin/", 302),
        ("GET", "/api/v1/channels", 401),
        ("POST", "/api/v1/channels/chat-1/messages", 401),
        ("GET", "/api/v1/openapi.json", 200),
        ("GET", "/api/v1/channels/chat-1?upgrade=0", 200),
        ("GET", "/api/v1/channels/nope", 404),
        ("GET", "/api/v1/channels/chat-1", 400),
        ("GET", "/healthz", 200),
        ("GET", "/metrics", 200),
        ("GET", "/static/realtime/realtime.js", 200),
        ("GET", "/no/such/page", 404),
    ],
)
def test_every_kind_of_response_carries_the_security_headers(server, method, path, status):
    response = httpx.request(method, server.http + path, timeout=5)
    assert response.status_code == status
    assert_security_headers(response)


def test_event_streams_carry_the_security_headers(server):
    with httpx.stream("GET", f"{server.http}/api/v1/channels/feed-1?clientId=headers", timeout=5) as response:
        assert response.status_code == 200
        assert_security_headers(response)


def test_content_security_policy_is_strict(server):
    policy = httpx.get(f"{server.http}/web/chat/", timeout=5).headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in policy


@pytest.mark.browser
def test_pages_and_admin_satisfy_the_policy_in_a_browser(server):
    """Chromium loads the pages with the policy the server sends: no violation, and they still work."""
    violations: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        try:
            context = browser.new_context()
            context.add_init_script(
                "document.addEventListener('securitypolicyviolation', e =>"
                " console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));"
            )
            page = context.new_page()
            page.on("console", lambda message: "violat" in message.text.lower() and violations.append(message.text))
            page.on("pageerror", lambda error: violations.append(f"uncaught error: {error}"))

            page.goto(f"{server.http}/web/chat/")
            page.get_by_label("Display name").fill("Csp")
            page.keyboard.press("Enter")
            expect(page.get_by_role("status").first).to_have_text("Connected to chat as Csp.", timeout=15_000)

            page.goto(f"{server.http}/web/notifications/?channel=feed")
            expect(page.get_by_role("status").first).to_have_text("Listening to feed.", timeout=15_000)

            page.goto(f"{server.http}/admin/login/")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(ADMIN_PASSWORD)
            page.get_by_role("button", name=re.compile("Log in", re.I)).click()
            page.goto(f"{server.http}/admin/channels_app/channel/add/")
            expect(page.locator("#channel_form")).to_be_visible()
            context.close()
        finally:
            browser.close()
    assert violations == []


# --- CSRF, cookies and CORS --------------------------------------------------------------------


def admin_login(server, client: httpx.Client) -> None:
    page = client.get(f"{server.http}/admin/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post(
        f"{server.http}/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": csrf, "username": "admin", "password": ADMIN_PASSWORD},
    )
    assert response.status_code == 302 and response.headers["location"] == "/admin/", response.text[:300]


def test_admin_forms_need_the_csrf_token_and_cookies_never_open_the_api(server):
    with httpx.Client(timeout=5) as anonymous:
        # No CSRF token: refused before the password is even looked at.
        forged_login = anonymous.post(
            f"{server.http}/admin/login/", data={"username": "admin", "password": ADMIN_PASSWORD}
        )
        assert forged_login.status_code == 403
    with httpx.Client(timeout=5) as admin:
        admin_login(server, admin)
        session = admin.cookies.get("sessionid")
        assert session and admin.get(f"{server.http}/admin/").status_code == 200
        # A cross-site form posting with the admin's cookies but no token is refused, and changes nothing.
        with httpx.Client(timeout=5, cookies={"sessionid": session}) as cross_site:
            before = httpx.get(f"{server.http}/api/v1/channels", headers=AUTH).json()["channels"]
            forged_add = cross_site.post(
                f"{server.http}/admin/channels_app/channel/add/",
                data={"name": "csrf", "public_id": "csrf-1", "type": "WS", "max_connections": 5},
                headers={"Origin": "https://evil.example.com"},
            )
            assert forged_add.status_code == 403
            # The admin's session is not a credential for the server API.
            push = cross_site.post(f"{server.http}/api/v1/channels/chat-1/messages", json={"payload": "x"})
            assert push.status_code == 401
            assert httpx.get(f"{server.http}/api/v1/channels", headers=AUTH).json()["channels"] == before
    cookies = httpx.get(f"{server.http}/admin/login/", timeout=5).headers.get_list("set-cookie")
    csrf_cookie = next(cookie for cookie in cookies if cookie.startswith("csrftoken="))
    # Plain HTTP (the embedded run): not Secure, or browsers would never send it back.
    assert "secure" not in csrf_cookie.lower()
    assert "samesite=lax" in csrf_cookie.lower()


def test_admin_without_login_does_nothing(server):
    with httpx.Client(timeout=5) as anonymous:
        listing = anonymous.get(f"{server.http}/admin/channels_app/channel/")
        assert listing.status_code == 302 and "/admin/login/" in listing.headers["location"]
        page = anonymous.get(f"{server.http}/admin/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        attempts = [
            ("/admin/channels_app/channel/add/", {"name": "anon", "public_id": "anon-1", "type": "WS"}),
            ("/admin/channels_app/channel/", {"action": "disconnect_everyone", "_selected_action": "1"}),
            ("/admin/channels_app/channel/", {"action": "send_test_message", "_selected_action": "1"}),
            ("/admin/channels_app/channel/1/delete/", {"post": "yes"}),
            ("/admin/login/", {"username": "admin", "password": "wrong-password"}),
        ]
        for path, data in attempts:
            response = anonymous.post(server.http + path, data={"csrfmiddlewaretoken": csrf, **data})
            assert response.status_code in (200, 302), (path, response.status_code)
            if response.status_code == 302:
                assert "/admin/login/" in response.headers["location"], path
            else:
                assert "Please enter the correct username and password" in response.text
    channels = httpx.get(f"{server.http}/api/v1/channels", headers=AUTH, timeout=5).json()["channels"]
    assert "anon-1" not in {channel["id"] for channel in channels}
    history = httpx.get(f"{server.http}/api/v1/channels/chat-1/messages", headers=AUTH, timeout=5).json()
    assert not any("Test message from the admin" in message["payload"] for message in history["messages"])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/channels"),
        ("POST", "/api/v1/channels/chat-1/messages"),
        ("GET", "/api/v1/channels/chat-1/messages"),
        ("OPTIONS", "/api/v1/channels/chat-1/messages"),
        ("OPTIONS", "/api/v1/channels"),
        ("POST", "/api/v1/tokens"),
        ("GET", "/api/v1/openapi.json"),
    ],
)
def test_the_json_api_never_grants_cross_origin_reads(server, method, path):
    """Even for an origin allowed to read event streams: the API is for backends, not pages."""
    headers = {
        **AUTH,
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    response = httpx.request(method, server.http + path, headers=headers, json={"payload": "x"}, timeout=5)
    assert response.status_code < 500
    assert not any(name.startswith("access-control-") for name in response.headers), dict(response.headers)


def test_cors_on_streams_only_for_allowed_origins(server):
    allowed = httpx.get(
        f"{server.http}/api/v1/channels/feed-1?upgrade=0", headers={"Origin": "https://app.example.com"}, timeout=5
    )
    other = httpx.get(
        f"{server.http}/api/v1/channels/feed-1?upgrade=0", headers={"Origin": "https://evil.example.com"}, timeout=5
    )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-credentials" not in allowed.headers
    # Another origin may read its refusal, and only that: no description of the channel.
    assert other.status_code == 403
    assert other.json()["error"] == "origin_not_allowed"
    assert set(other.json()) == {"error", "message"}
    assert "access-control-allow-credentials" not in other.headers


# --- credentials: the gaps ---------------------------------------------------------------------


def test_api_keys_must_match_exactly(server):
    near_misses = [
        API_KEY[:-1],
        API_KEY + "x",
        API_KEY.upper(),
        " " + API_KEY + "x",
        API_KEY + " x",
        f"{API_KEY},{API_KEY}",
        "",
        "é" + API_KEY,
    ]
    subscriber_token = mint(server, "vault-1", "reader")
    for presented in [*near_misses, subscriber_token]:
        for scheme in ("Bearer", "bearer", "Token"):
            value = f"{scheme} {presented}".strip().encode()
            response = httpx.post(
                f"{server.http}/api/v1/channels/chat-1/messages",
                json={"payload": "x"},
                headers={"Authorization": value},
                timeout=5,
            )
            assert response.status_code == 401, (scheme, presented)
    # The same key in the query string is no credential either.
    in_query = httpx.post(
        f"{server.http}/api/v1/channels/chat-1/messages?api_key={API_KEY}", json={"payload": "x"}, timeout=5
    )
    assert in_query.status_code == 401


def test_private_event_streams_refuse_every_wrong_token(server):
    def get(**query) -> httpx.Response:
        return httpx.get(f"{server.http}/api/v1/channels/alerts-1", params=query, timeout=5)

    cases = {
        "garbage": (get(token="garbage"), 401, "token_invalid"),
        "forged": (get(token=token("alerts-1", "a", secret="not-ours-" * 4)), 401, "token_invalid"),
        "unsigned": (get(token=unsigned("alerts-1", "a")), 401, "token_invalid"),
        "other client": (get(clientId="mallory", token=mint(server, "alerts-1", "alice")), 403, "token_forbidden"),
        "other channel": (get(token=mint(server, "feed-1", "alice")), 403, "token_forbidden"),
        "the api key": (get(token=API_KEY), 401, "token_invalid"),
        "header only": (
            httpx.get(f"{server.http}/api/v1/channels/alerts-1", headers={"Authorization": f"Bearer {API_KEY}"}),
            401,
            "token_required",
        ),
    }
    for case, (response, status, error) in cases.items():
        assert (response.status_code, response.json()["error"]) == (status, error), case


def test_private_websockets_refuse_unsigned_tokens_and_api_keys(server):
    for case, url in {
        "unsigned": server.channel_url("vault-1", token=unsigned("vault-1", "a")),
        "api key": server.channel_url("vault-1", token=API_KEY),
        "token of another service": server.channel_url("vault-1", token=token("vault-1", "a", secret="x" * 40)),
    }.items():
        frame, code = asyncio.run(ws_refusal(url))
        assert (code, frame["error"]) == (4401, "token_invalid"), case


def test_an_expired_token_closes_nothing_it_did_not_open_and_opens_nothing(server):
    """A token minted with the shortest ttl works until it expires, then is refused."""
    short = mint(server, "vault-1", "brief", ttl=1)

    async def scenario():
        async with websockets.connect(server.channel_url("vault-1", token=short)) as ws:
            await ws.send("within the ttl")
        await asyncio.sleep(2.1)
        return await ws_refusal(server.channel_url("vault-1", token=short))

    frame, code = asyncio.run(scenario())
    assert (code, frame["error"]) == (4401, "token_invalid")
    assert "expired" in frame["message"]


def test_no_secret_ever_reaches_the_log(server):
    """Runs last in this module: everything above has been tried against this server."""
    time.sleep(0.5)
    log = server.log()
    assert "refused" in log or "401" in log
    for secret in (API_KEY, TOKEN_SECRET, ADMIN_PASSWORD, "wrong-password"):
        assert secret not in log, secret
    for jwt_like in re.findall(r"eyJ[\w-]+\.[\w-]+\.[\w-]*", log):
        pytest.fail(f"a token was logged: {jwt_like[:20]}...")


# --- production settings -----------------------------------------------------------------------


def production_env(**overrides: str) -> dict[str, str]:
    return base_environment(
        CONFIG_FOLDER_PATH=str(ROOT / "configs/memory.config.yaml"),
        DJANGO_SECURE="1",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
        DJANGO_ALLOWED_HOSTS="realtime.example.com,localhost,127.0.0.1",
        REALTIME_API_KEYS="deploy-key-" + secrets.token_hex(16),
        **overrides,
    )


def test_check_deploy_is_clean_with_production_settings():
    checked = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(), check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "System check identified no issues" in checked.stdout
    # Without it, the deploy checks do complain: the test above is not vacuous.
    embedded = base_environment(CONFIG_FOLDER_PATH=str(ROOT / "configs/memory.config.yaml"))
    complaining = manage("check", "--deploy", "--fail-level", "WARNING", env=embedded, check=False)
    assert complaining.returncode != 0
    assert "security.W012" in complaining.stderr + complaining.stdout


def test_production_mode_requires_a_secret_key():
    env = production_env()
    del env["DJANGO_SECRET_KEY"]
    refused = manage("check", env=env, check=False)
    assert refused.returncode == 2
    assert "DJANGO_SECURE=1 needs DJANGO_SECRET_KEY" in refused.stderr


def test_production_mode_secures_cookies_and_redirects_to_https_except_the_probes(start_server):
    env = production_env()
    server = start_server(env={key: env[key] for key in ("DJANGO_SECURE", "DJANGO_SECRET_KEY")})
    behind_tls = {"X-Forwarded-Proto": "https"}
    with httpx.Client(timeout=5) as client:
        plain = client.get(f"{server.http}/admin/login/")
        assert plain.status_code == 301
        assert plain.headers["location"].startswith("https://127.0.0.1")
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert client.get(server.http + probe).status_code == 200, probe
        # The channel URL is served before Django: TLS for it is the proxy's job (docs/security.md).
        assert client.get(f"{server.http}/api/v1/channels/chat-1?upgrade=0").status_code == 200
        secure = client.get(f"{server.http}/admin/login/", headers=behind_tls)
        assert secure.status_code == 200
        assert secure.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
        csrf_cookie = next(c for c in secure.headers.get_list("set-cookie") if c.startswith("csrftoken="))
        assert "secure" in csrf_cookie.lower()
        assert_security_headers(secure)


# --- Hostile headers, a huge body and foreign hosts, on raw sockets (moved from test_hardening_paths.py) ----

HOSTILE_CONFIG = memory_config(allow_create_new_channels=True) + CHAT_AND_FEED


@pytest.fixture(scope="module")
def hostile_server(start_module_server):
    """A daphne of its own for hostile requests: its log must stay free of tracebacks."""
    return start_module_server(HOSTILE_CONFIG, env={"REALTIME_API_KEYS": API_KEY})


@pytest.mark.parametrize(
    "headers",
    [
        [b"X-Big: " + b"x" * 70_000],
        [b"X-H%d: v" % index for index in range(2_000)],
        [b"Last-Event-ID: " + b"x" * 8_000],
        [b"Last-Event-ID: \xff\xfe"],
        [b"Origin: " + b"https://" + b"a" * 8_000],
        [b"Origin: \xff"],
        [b"X-Request-ID: " + b"\xff" * 100],
        [b"Authorization: Bearer " + b"k" * 60_000],
        [b"Cookie: " + b"sessionid=x; " * 2_000],
        [b"Content-Length: -1"],
        [b"Content-Length: 99999999999999999999"],
        [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
        [b"Host: 127.0.0.1", b"Host: evil.example.com"],
    ],
    ids=lambda headers: repr(headers[0][:30]),
)
def test_huge_and_malformed_headers(hostile_server, headers):
    # A Content-Length over the body limit is refused at once (413); one within it that is never sent
    # would keep the server waiting until the body deadline (60 s, see docs/security.md).
    timeout = 2 if headers[0].startswith(b"Content-Length: 9") else 10
    for path in (b"/api/v1/channels/feed-1?clientId=hdr", b"/api/v1/channels/chat-1/messages", b"/healthz"):
        status, response = raw_request(hostile_server, b"GET", path, headers, timeout=timeout)
        assert_no_server_error(status, response, (path, headers[0][:40]))
    assert_still_serving(hostile_server)


def test_a_huge_body_is_refused_without_reading_it_all(hostile_server):
    body = json.dumps({"payload": "x" * (3 * 1024 * 1024)}).encode()
    response = httpx.post(
        f"{hostile_server.http}/api/v1/channels/chat-1/messages", content=body, headers=AUTH, timeout=30
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert_still_serving(hostile_server)


def test_hosts_outside_allowed_hosts_are_refused_on_the_channel_url(hostile_server):
    """DNS rebinding: a page on evil.example.com resolving to this service sends its own Host and Origin."""
    rebinding = {"Host": "evil.example.com", "Origin": "http://evil.example.com"}
    for url in (
        f"{hostile_server.http}/api/v1/channels/feed-1",
        f"{hostile_server.http}/api/v1/channels/feed-1?upgrade=0",
    ):
        response = httpx.get(url, headers=rebinding, timeout=5)
        assert response.status_code == 400
        assert response.json()["error"] == "host_not_allowed"
        assert "access-control-allow-origin" not in response.headers
    assert httpx.get(f"{hostile_server.http}/healthz", headers=rebinding, timeout=5).status_code == 400

    async def websocket_refusal():
        async with websockets.connect(
            f"ws://evil.example.com:{hostile_server.port}/api/v1/channels/chat-1?clientId=rebound",
            origin=f"http://evil.example.com:{hostile_server.port}",
            host="127.0.0.1",
            port=hostile_server.port,
        ) as ws:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        return frame, closed.value.rcvd.code

    frame, code = asyncio.run(websocket_refusal())
    assert (code, frame["error"]) == (4400, "host_not_allowed")
    assert httpx.get(f"{hostile_server.http}/api/v1/channels/chat-1?upgrade=0", timeout=5).json()["connections"] == 0
