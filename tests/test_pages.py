"""The chat and notifications pages over HTTP: flags, channel lists, settings, and strict-CSP-ready markup.

What the pages do in a browser is tested in test_pages_browser.py.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_CONFIG
from tests.support.auth import API_KEY

STATIC_DIR = Path(__file__).resolve().parent.parent / "channels_app" / "static" / "realtime"


def pages_on(config_text: str) -> str:
    """A configuration with both pages switched on."""
    return config_text.replace(
        "allow_push_server_messages: true",
        "allow_push_server_messages: true\n  render_chat_html: true\n  render_notifications_html: true",
    )


class PageParser(HTMLParser):
    """Collects what a strict Content-Security-Policy would refuse, and the page's JSON settings."""

    def __init__(self):
        super().__init__()
        self.inline_scripts: list[str] = []
        self.script_sources: list[str] = []
        self.inline_handlers: list[str] = []
        self.style_attributes: list[str] = []
        self.style_elements = 0
        self.external_urls: list[str] = []
        self.options: list[tuple[str, str, bool]] = []
        self.ids: set[str] = set()
        self.labels_for: set[str] = set()
        self.links: list[str] = []
        self.json_blocks: dict[str, str] = {}
        self._script: dict | None = None
        self._option: dict | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name, value in attrs:
            if name.startswith("on"):
                self.inline_handlers.append(f"<{tag} {name}={value!r}>")
            if name == "style":
                self.style_attributes.append(f"<{tag} style={value!r}>")
            if name in ("src", "href") and value and re.match(r"^(https?:)?//", value):
                self.external_urls.append(value)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"])
        if tag == "label" and "for" in attributes:
            self.labels_for.add(attributes["for"])
        if tag == "style":
            self.style_elements += 1
        if tag == "script":
            self._script = {"attributes": attributes, "text": ""}
        if tag == "option":
            self._option = {"value": attributes.get("value"), "selected": "selected" in attributes, "text": ""}

    def handle_data(self, data):
        if self._script is not None:
            self._script["text"] += data
        if self._option is not None:
            self._option["text"] += data

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            attributes, text = self._script["attributes"], self._script["text"]
            if "src" in attributes:
                self.script_sources.append(attributes["src"])
            elif attributes.get("type") == "application/json":
                self.json_blocks[attributes.get("id", "")] = text
            else:
                self.inline_scripts.append(text)
            self._script = None
        if tag == "option" and self._option is not None:
            self.options.append((self._option["value"], self._option["text"].strip(), self._option["selected"]))
            self._option = None


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


def page_config(parser: PageParser) -> dict:
    return json.loads(parser.json_blocks["realtime-page-config"])


@pytest.fixture(scope="module")
def pages_server(start_module_server):
    """Both pages on, APP_DEBUG=1 and no API key (the server API is open)."""
    return start_module_server(pages_on(TEST_CONFIG), env={"APP_DEBUG": "1"})


@pytest.mark.parametrize("path", ["/web/chat/", "/web/notifications/"])
def test_pages_are_ready_for_a_strict_content_security_policy(pages_server, path):
    response = httpx.get(pages_server.http + path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = parse(response.text)
    assert page.inline_scripts == []
    assert page.inline_handlers == []
    assert page.style_attributes == []
    assert page.style_elements == 0
    assert page.external_urls == [], "pages must work offline: no CDN"
    assert "/static/realtime/realtime.js" in page.script_sources
    # The multiplexed client extends Realtime, so it loads after realtime.js.
    sources = page.script_sources
    assert sources.index("/static/realtime/realtime-multiplex.js") == sources.index("/static/realtime/realtime.js") + 1
    # Every form field has a label.
    for field_id in {"channel"} | ({"display-name", "message"} if "chat" in path else {"push-text", "api-key"}):
        assert field_id in page.ids and field_id in page.labels_for, field_id


def test_static_files_are_served_by_the_app(pages_server):
    for name, kind in [
        ("realtime.js", "javascript"),
        ("realtime-multiplex.js", "javascript"),
        ("pages.js", "javascript"),
        ("chat.js", "javascript"),
        ("notifications.js", "javascript"),
        ("pages.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ]:
        response = httpx.get(f"{pages_server.http}/static/realtime/{name}")
        assert response.status_code == 200, name
        assert kind in response.headers["content-type"], name


def test_chat_lists_websocket_channels_and_hands_the_script_its_settings(pages_server):
    page = parse(httpx.get(f"{pages_server.http}/web/chat/").text)
    assert page.options == [("chat-1", "chat", True), ("chat-2", "other-chat", False)]
    config = page_config(page)
    assert config["transport"] == "ws"
    assert config["channelsUrl"] == "/api/v1/channels/"
    assert config["selected"] == "chat-1"
    assert config["maxMessageSize"] == 65536
    assert [channel["id"] for channel in config["channels"]] == ["chat-1", "chat-2"]


def test_channel_query_selects_by_name_or_id_and_keeps_an_unknown_one(pages_server):
    by_name = parse(httpx.get(f"{pages_server.http}/web/chat/", params={"channel": "other-chat"}).text)
    assert [option for option in by_name.options if option[2]] == [("chat-2", "other-chat", True)]
    unknown = parse(httpx.get(f"{pages_server.http}/web/chat/", params={"channel": "nope"}).text)
    assert [option for option in unknown.options if option[2]] == [("nope", "nope", True)]
    assert page_config(unknown)["selected"] == "nope"


def test_channel_query_is_escaped(pages_server):
    hostile = '"><script>alert(1)</script>'
    response = httpx.get(f"{pages_server.http}/web/chat/", params={"channel": hostile})
    page = parse(response.text)
    assert page.inline_scripts == []
    assert "<script>alert(1)</script>" not in response.text
    assert page_config(page)["selected"] == hostile


def test_notifications_lists_sse_channels_and_offers_the_push_form(pages_server):
    response = httpx.get(f"{pages_server.http}/web/notifications/")
    page = parse(response.text)
    assert page.options == [("feed-1", "feed", True)]
    config = page_config(page)
    assert config["transport"] == "sse"
    assert config["allowPush"] is True
    # APP_DEBUG=1 without keys: the API is open, so the key field is optional.
    assert config["apiKeyRequired"] is False
    assert "push-form" in page.ids


def test_notifications_follow_several_channels_by_id_each_once(pages_server):
    """``?channel=a&channel=b`` hands the page every channel to follow on one stream (by id, an unknown one kept
    as given); the picker selects the first. One channel, or the chat page, follows no list."""
    params = [("channel", "feed"), ("channel", "chat-1"), ("channel", "feed-1"), ("channel", "nope")]
    page = parse(httpx.get(f"{pages_server.http}/web/notifications/", params=params).text)
    config = page_config(page)
    assert config["follow"] == [
        {"id": "feed-1", "name": "feed"},
        {"id": "chat-1", "name": "chat"},
        {"id": "nope", "name": "nope"},
    ]
    assert config["selected"] == "feed-1"
    assert "following" in page.ids
    single = parse(httpx.get(f"{pages_server.http}/web/notifications/", params={"channel": "feed"}).text)
    assert "follow" not in page_config(single) and "following" not in single.ids
    chat = parse(httpx.get(f"{pages_server.http}/web/chat/", params=[("channel", "chat"), ("channel", "chat-2")]).text)
    assert "follow" not in page_config(chat)
    assert page_config(chat)["selected"] == "chat-2"


def test_pages_answer_only_get_and_head(pages_server):
    assert httpx.head(f"{pages_server.http}/web/chat/").status_code == 200
    # Django's CSRF middleware refuses a bare POST (403) before the view would (405).
    assert httpx.post(f"{pages_server.http}/web/chat/").status_code in (403, 405)
    put = httpx.put(f"{pages_server.http}/web/notifications/", headers={"Origin": pages_server.http})
    assert put.status_code in (403, 405)


def test_pages_answer_404_when_their_flags_are_off(daphne_server):
    for path in ("/web/chat/", "/web/notifications/"):
        assert httpx.get(daphne_server.http + path).status_code == 404, path
    # The shared files are still there; only the pages are off.
    assert httpx.get(f"{daphne_server.http}/static/realtime/realtime.js").status_code == 200


def test_one_page_on_without_the_other(start_server):
    config = TEST_CONFIG.replace(
        "allow_push_server_messages: true",
        "allow_push_server_messages: false\n  render_notifications_html: true",
    )
    server = start_server(config, env={"REALTIME_API_KEYS": API_KEY})
    assert httpx.get(f"{server.http}/web/chat/").status_code == 404
    response = httpx.get(f"{server.http}/web/notifications/")
    assert response.status_code == 200
    page = parse(response.text)
    config = page_config(page)
    assert config["allowPush"] is False
    assert config["apiKeyRequired"] is True
    assert "push-form" not in page.ids
    # No navigation to a page that is off.
    assert 'href="/web/chat/"' not in response.text


def test_page_scripts_never_write_html():
    """Everything the server relays is put on the page as text: no HTML sinks in the scripts."""
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|createContextualFragment|document\.write|\beval\(|new Function"
        r"|setAttribute\(\s*[\"']on"
    )
    for script in STATIC_DIR.glob("*.js"):
        assert not sinks.search(script.read_text()), script.name


# --- The landing page (/) and the API docs (/api/docs/) ------------------------------------------

EVERYWHERE = ["/api/docs/", "/api/v1/openapi.json", "/admin/", "/healthz", "/readyz", "/metrics"]


def assert_strict_csp_ready(page: PageParser) -> None:
    assert page.inline_scripts == []
    assert page.inline_handlers == []
    assert page.style_attributes == []
    assert page.style_elements == 0
    assert page.external_urls == [], "pages must work offline: no CDN"


def test_landing_page_links_everything_switched_on(pages_server):
    response = httpx.get(f"{pages_server.http}/")
    assert response.status_code == 200
    page = parse(response.text)
    assert_strict_csp_ready(page)
    assert page.script_sources == []
    for path in ["/web/chat/", "/web/notifications/", *EVERYWHERE]:
        assert path in page.links, path
    # Every link leads somewhere: the admin to its login page, the rest straight to what they name.
    for link in set(page.links):
        answer = httpx.get(pages_server.http + link)
        assert answer.status_code == (302 if link == "/admin/" else 200), link
    # The snippet names this server's own address; APP_DEBUG=1 without keys: the page says the API is open.
    assert f"{pages_server.http}/api/v1/channels/&lt;channel&gt;/messages" in response.text
    assert 'data-access="open"' in response.text
    assert httpx.head(f"{pages_server.http}/").status_code == 200
    assert httpx.post(f"{pages_server.http}/").status_code in (403, 405)


def test_landing_page_without_the_demos_says_how_to_turn_them_on(start_server):
    server = start_server(env={"REALTIME_API_KEYS": API_KEY, "METRICS_TOKEN": "m" * 24})
    response = httpx.get(f"{server.http}/")
    page = parse(response.text)
    assert not [link for link in page.links if link.startswith("/web/")]
    assert set(EVERYWHERE) <= set(page.links)
    assert "server.render_chat_html: true" in response.text
    assert 'data-access="keys"' in response.text
    assert "Authorization: Bearer &lt;METRICS_TOKEN&gt;" in response.text


def test_landing_page_says_when_the_api_is_closed(daphne_server):
    response = httpx.get(f"{daphne_server.http}/")
    assert 'data-access="closed"' in response.text
    assert "set <code>REALTIME_API_KEYS</code>" in response.text


def test_api_docs_page_loads_swagger_ui_from_this_service(pages_server):
    response = httpx.get(f"{pages_server.http}/api/docs/")
    assert response.status_code == 200
    page = parse(response.text)
    assert_strict_csp_ready(page)
    assert page.script_sources == ["/static/vendor/swagger-ui/swagger-ui-bundle.js", "/static/realtime/api-docs.js"]
    assert 'data-openapi-url="/api/v1/openapi.json"' in response.text
    for path, kind in [
        ("/static/vendor/swagger-ui/swagger-ui-bundle.js", "javascript"),
        ("/static/vendor/swagger-ui/swagger-ui.css", "text/css"),
        ("/static/realtime/api-docs.js", "javascript"),
        ("/static/realtime/api-docs.css", "text/css"),
    ]:
        answer = httpx.get(pages_server.http + path)
        assert answer.status_code == 200 and kind in answer.headers["content-type"], path
    assert httpx.get(f"{pages_server.http}/api/docs", follow_redirects=True).url.path == "/api/docs/"


def test_the_vendored_swagger_ui_is_the_version_its_readme_names():
    vendor = STATIC_DIR.parent / "vendor" / "swagger-ui"
    version = re.search(r"`swagger-ui-dist` \*\*([\d.]+)\*\*", (vendor / "README.md").read_text()).group(1)
    assert f'"{version}"' in (vendor / "swagger-ui-bundle.js").read_text()
    assert "Apache License" in (vendor / "LICENSE").read_text()
