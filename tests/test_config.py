"""The YAML configuration loader (channels_app/config.py) and its documentation."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, note
from hypothesis import strategies as st

from channels_app.config import (
    CHANNEL_KEYS,
    HOOKS_KEYS,
    IDENTIFIER_PATTERN,
    PUBSUB_KEYS,
    REDIS_KEYS,
    SECTIONS,
    SERVER_KEYS,
    ConfigError,
    RealtimeConfig,
    load_config,
    parse_config,
    resolve_config_path,
)
from tests.support.strategies import IDENTIFIER_ALPHABET, any_text

ROOT = Path(__file__).resolve().parent.parent
FILE = "realtime.yaml"

VALID = """
pubsub:
  driver: "MEMORY"
channels:
  chat:
    id: "chat-1"
    type: "WS"
"""


def parse(text: str, environ: dict[str, str] | None = None):
    """Parse dedented YAML as if read from ``realtime.yaml``."""
    return parse_config(textwrap.dedent(text), path=FILE, environ=environ or {})


def problems_of(text: str, environ: dict[str, str] | None = None) -> ConfigError:
    """The ConfigError raised for ``text``."""
    with pytest.raises(ConfigError) as caught:
        parse(text, environ)
    return caught.value


def assert_problem(error: ConfigError, key_path: str, *fragments: str) -> None:
    """``error`` names the file, and reports ``key_path`` with a message containing ``fragments``."""
    text = str(error)
    assert text.startswith(f"{FILE}: ")
    line = next((line for line in text.splitlines() if line.startswith(f"  - {key_path}: ")), None)
    assert line is not None, f"no problem reported for {key_path}:\n{text}"
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"


# The Go service's example files


def test_memory_example_loads_as_written():
    config = load_config(ROOT / "configs/memory.config.yaml", environ={})
    assert config.pubsub.driver == "MEMORY"
    assert config.server.allow_create_new_channels is True
    assert config.server.render_notifications_html is True
    assert [(c.name, c.id, c.type, c.max_of_channel_connections) for c in config.channels] == [
        ("my-chat-example", "742fc7fe-1527-4184-8945-10b30bf01347", "WS", 100),
        ("my-notification-example", "f71a6fb5-8962-48f4-a0dd-5cf60c42a70f", "SSE", 100),
    ]


def test_redis_example_loads_with_environment_defaults():
    config = load_config(ROOT / "configs/redis.config.yaml", environ={})
    assert config.pubsub.driver == "REDIS"
    assert config.pubsub.redis.url == "redis://default:realtime@localhost:6379/0"
    assert [c.name for c in config.channels] == ["my-chat-example", "my-notification-example"]


def test_redis_example_takes_values_from_environment():
    environ = {"REDIS_USER": "app", "REDIS_PASSWORD": "s3cret", "REDIS_HOST": "redis", "REDIS_PORT": "6380"}
    config = load_config(ROOT / "configs/redis.config.yaml", environ=environ)
    assert config.pubsub.redis.url == "redis://app:s3cret@redis:6380/0"


def test_defaults_fill_absent_keys():
    config = parse(VALID)
    assert config.server.allow_create_new_channels is False
    assert config.server.max_message_size == 65536
    (chat,) = config.channels
    assert chat.max_of_channel_connections == 100
    assert (chat.history_size, chat.history_ttl) == (100, 3600)


def test_channel_history_defaults_to_server_values():
    config = parse(
        """
        server: {history_size: 7, history_ttl: 60}
        channels:
          chat: {id: "chat-1", type: "WS"}
          feed: {id: "feed-1", type: "SSE", history_size: 0}
        """
    )
    chat, feed = config.channels
    assert (chat.history_size, chat.history_ttl) == (7, 60)
    assert (feed.history_size, feed.history_ttl) == (0, 60)


def test_empty_file_is_the_default_configuration():
    config = parse("")
    assert config.pubsub.driver == "MEMORY"
    assert config.channels == ()


def test_yaml_merge_keys_work_inside_a_section():
    config = parse(
        """
        channels:
          chat: &limits {id: "chat-1", type: "WS", max_of_channel_connections: 3}
          other:
            <<: *limits
            id: "chat-2"
        """
    )
    assert [(c.id, c.max_of_channel_connections) for c in config.channels] == [("chat-1", 3), ("chat-2", 3)]


# Where the file is read from


def test_folder_path_reads_config_yaml(tmp_path):
    (tmp_path / "config.yaml").write_text(VALID)
    assert resolve_config_path(str(tmp_path)) == tmp_path / "config.yaml"
    assert [c.id for c in load_config(tmp_path, environ={}).channels] == ["chat-1"]


def test_no_path_means_memory_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(None, base_dir=ROOT) == ROOT / "configs/memory.config.yaml"
    assert resolve_config_path("", base_dir=ROOT) == ROOT / "configs/memory.config.yaml"


def test_relative_path_is_found_from_project_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("configs/redis.config.yaml", base_dir=ROOT) == ROOT / "configs/redis.config.yaml"


def test_missing_file_names_the_path_and_the_variable(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    assert str(caught.value).startswith(f"{tmp_path / 'nope.yaml'}: ")
    assert "point CONFIG_FOLDER_PATH at a YAML file or a folder holding config.yaml" in str(caught.value)


def test_folder_without_config_yaml_names_the_expected_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.path == str(tmp_path / "config.yaml")


# One message per mistake, naming the file, the key path and what to write


def test_unknown_key_suggests_the_closest_known_key():
    error = problems_of("server:\n  alow_all_origins: true\n")
    assert_problem(error, "server.alow_all_origins", "unknown key", "did you mean 'allow_all_origins'?")


def test_unknown_key_without_close_match_lists_the_keys():
    error = problems_of(VALID + "    colour: blue\n")
    assert_problem(error, "channels.chat.colour", "unknown key: remove it", "max_of_channel_connections")


def test_unknown_top_level_key():
    error = problems_of("chanels: {}\n")
    assert_problem(error, "chanels", "did you mean 'channels'?")


def test_wrong_type_for_boolean():
    error = problems_of("server:\n  allow_all_origins: 3\n")
    assert_problem(error, "server.allow_all_origins", "must be true or false, not a number (3)")


def test_quoted_boolean_says_to_drop_the_quotes():
    error = problems_of('server:\n  render_chat_html: "true"\n')
    assert_problem(error, "server.render_chat_html", "not a string ('true')", "write true without quotes")


def test_wrong_type_for_string_says_to_quote():
    error = problems_of("channels:\n  chat: {id: 42, type: WS}\n")
    assert_problem(error, "channels.chat.id", "must be a string, not a number (42): put it in quotes")


def test_wrong_type_for_list():
    error = problems_of("server:\n  allowed_origins: https://a.example\n")
    assert_problem(error, "server.allowed_origins", 'must be a list of strings, such as  ["a", "b"]')


def test_section_that_is_not_a_mapping():
    error = problems_of("server: [1]\n")
    assert_problem(error, "server", "must be a mapping of keys, not a list ([1])")


def test_file_that_is_not_a_mapping():
    error = problems_of("- a\n- b\n")
    assert "the file must be a mapping with the keys server, pubsub and channels" in str(error)


def test_missing_id():
    error = problems_of("channels:\n  chat:\n    type: WS\n")
    assert_problem(error, "channels.chat.id", 'is missing: add  id: "..."')


def test_missing_type_names_the_choices():
    error = problems_of("channels:\n  chat:\n    id: chat-1\n")
    assert_problem(error, "channels.chat.type", 'is missing: add  type: "WS" or "SSE"')


def test_channel_without_body():
    error = problems_of("channels:\n  chat:\n")
    assert_problem(error, "channels.chat", 'must be a mapping such as  { id: "chat-1", type: "WS" },  not nothing')
    assert len(error.problems) == 1


def test_duplicate_id_names_both_channels():
    error = problems_of("channels:\n  chat: {id: same, type: WS}\n  feed: {id: same, type: SSE}\n")
    assert_problem(error, "channels.feed.id", "'same' is already the id of channel 'chat'", "ids must be unique")


def test_name_equal_to_another_channels_id():
    error = problems_of("channels:\n  chat: {id: feed, type: WS}\n  feed: {id: feed-1, type: SSE}\n")
    assert_problem(error, "channels.feed", "is the id of channel 'chat'", "rename this channel or change that id")


def test_id_equal_to_another_channels_name():
    error = problems_of("channels:\n  feed: {id: feed-1, type: SSE}\n  chat: {id: feed, type: WS}\n")
    assert_problem(error, "channels.chat.id", "'feed' is the name of channel 'feed'", "change this id or rename that")
    assert len(error.problems) == 1


def test_bad_type():
    error = problems_of("channels:\n  chat: {id: chat-1, type: websocket}\n")
    assert_problem(error, "channels.chat.type", 'must be "WS" or "SSE", not \'websocket\'')


def test_lowercase_type_says_to_use_capitals():
    error = problems_of("channels:\n  chat: {id: chat-1, type: ws}\n")
    assert_problem(error, "channels.chat.type", "must be written in capitals: 'WS'")


def test_bad_driver():
    error = problems_of("pubsub:\n  driver: KAFKA\n")
    assert_problem(error, "pubsub.driver", 'must be "MEMORY" or "REDIS", not \'KAFKA\'')


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be a positive integer (at least 1), not 0"),
        ("-5", "must be a positive integer (at least 1), not -5"),
        ("1.5", "must be a whole number, not a number (1.5)"),
        ("true", "must be a whole number, not a boolean (True)"),
        ('"10"', "must be a whole number, not a string ('10'): write 10 without quotes"),
        ("many", "must be a whole number, not a string ('many')"),
    ],
)
def test_max_connections_must_be_positive_integer(value, message):
    error = problems_of(f"channels:\n  chat: {{id: chat-1, type: WS, max_of_channel_connections: {value}}}\n")
    assert_problem(error, "channels.chat.max_of_channel_connections", message)


def test_not_finite_number_is_refused():
    error = problems_of("server:\n  publish_rate: .nan\n")
    assert_problem(error, "server.publish_rate", "must be a finite number")


def test_redis_driver_without_url():
    error = problems_of("pubsub:\n  driver: REDIS\n")
    assert_problem(error, "pubsub.redis.url", "the REDIS driver needs a url", 'redis: { url: "redis://host:6379/0" }')


def test_redis_url_that_is_not_redis():
    error = problems_of("pubsub:\n  driver: REDIS\n  redis:\n    url: http://cache:6379\n")
    assert_problem(error, "pubsub.redis.url", "is not a Redis URL: write redis://")
    assert len(error.problems) == 1


def test_redis_url_with_bad_port():
    error = problems_of("pubsub:\n  driver: REDIS\n  redis:\n    url: redis://cache:port/0\n")
    assert_problem(error, "pubsub.redis.url", "has an invalid port: write a number such as 6379")


def test_sentinels_need_master_name():
    error = problems_of("pubsub:\n  driver: REDIS\n  redis:\n    sentinels: [s1:26379]\n")
    assert_problem(error, "pubsub.redis.master_name", "add master_name: mymaster")


@pytest.mark.parametrize("name", ["has space", "a/b", "é", "x" * 101])
def test_channel_name_unusable_in_url(name):
    error = problems_of(f'channels:\n  "{name}": {{id: ok-1, type: WS}}\n')
    assert_problem(
        error, f"channels.{name}", "cannot be used in a URL", "use 1 to 100 characters from A-Z a-z 0-9 . _ -"
    )


@pytest.mark.parametrize("channel_id", ["has space", "a/b", "a#b", "x" * 101, "abc\\n"])
def test_channel_id_unusable_in_url_or_group_name(channel_id):
    error = problems_of(f'channels:\n  chat: {{id: "{channel_id}", type: WS}}\n')
    assert_problem(error, "channels.chat.id", "cannot be used in a URL or a group name", "A-Z a-z 0-9 . _ -")


def test_dot_only_id_is_refused():
    error = problems_of('channels:\n  chat: {id: "..", type: WS}\n')
    assert_problem(error, "channels.chat.id", "'..' cannot be used in a URL", "add a letter or digit")


def test_numeric_channel_name_must_be_quoted():
    error = problems_of("channels:\n  123: {id: ok-1, type: WS}\n")
    assert_problem(error, "channels.123", "is read as a number (123): put it in quotes")


def test_longest_valid_identifiers_are_accepted():
    config = parse(f'channels:\n  "{"n" * 100}": {{id: "{"i" * 100}", type: WS}}\n')
    assert config.channels[0].id == "i" * 100


# All mistakes in one go


def test_all_mistakes_are_reported_together():
    error = problems_of(
        """
        server:
          alow_all_origins: true
          max_message_size: big
        pubsub:
          driver: REDIS
        channels:
          chat:
            id: chat-1
            type: WS
            max_of_channel_connections: 0
          "bad name":
            id: chat-1
            type: SSE
          feed:
            id: chat-1
            type: SMS
          news:
            type: SSE
        """
    )
    reported = [key_path for key_path, _ in error.problems]
    assert reported == [
        "server.alow_all_origins",
        "server.max_message_size",
        "pubsub.redis.url",
        "channels.chat.max_of_channel_connections",
        "channels.bad name",
        "channels.feed.type",
        "channels.news.id",
    ]
    assert str(error).startswith(f"{FILE}: 7 configuration problems:\n")


def test_duplicate_id_reported_with_other_mistakes():
    error = problems_of("channels:\n  a: {id: x, type: WS}\n  b: {id: x, type: WS}\n  c: {id: y, type: XX}\n")
    assert [key_path for key_path, _ in error.problems] == ["channels.b.id", "channels.c.type"]


# Environment variables


def test_env_variable_is_interpolated():
    config = parse('pubsub:\n  driver: REDIS\n  redis:\n    url: "redis://:${PW}@cache:6379/0"\n', {"PW": "pw"})
    assert config.pubsub.redis.url == "redis://:pw@cache:6379/0"


def test_env_default_used_when_unset():
    config = parse('pubsub:\n  redis:\n    prefix: "${PREFIX:-rt}"\n')
    assert config.pubsub.redis.prefix == "rt"


def test_env_value_wins_over_default():
    config = parse('pubsub:\n  redis:\n    prefix: "${PREFIX:-rt}"\n', {"PREFIX": "prod"})
    assert config.pubsub.redis.prefix == "prod"


def test_empty_default_is_allowed():
    config = parse('pubsub:\n  redis:\n    master_name: "${MASTER:-}"\n')
    assert config.pubsub.redis.master_name == ""


def test_env_fills_typed_keys():
    config = parse(
        """
        server:
          allow_all_origins: ${ALL}
          max_message_size: ${SIZE:-1024}
          publish_rate: ${RATE}
          allowed_origins: ${ORIGINS}
        """,
        {"ALL": "true", "RATE": "2.5", "ORIGINS": "https://a.example, https://b.example"},
    )
    assert config.server.allow_all_origins is True
    assert config.server.max_message_size == 1024
    assert config.server.publish_rate == 2.5
    assert config.server.allowed_origins == ("https://a.example", "https://b.example")


def test_env_in_list_items():
    config = parse('server:\n  api_keys: ["${KEY}", "static"]\n', {"KEY": "k1"})
    assert config.server.api_keys == ("k1", "static")


def test_missing_env_variable_is_named():
    error = problems_of('pubsub:\n  driver: REDIS\n  redis:\n    url: "redis://:${REDIS_PASSWORD}@cache/0"\n')
    assert_problem(
        error,
        "pubsub.redis.url",
        "environment variable REDIS_PASSWORD is not set",
        "set it, or write ${REDIS_PASSWORD:-default}",
    )
    assert len(error.problems) == 1


def test_missing_env_variable_in_list_is_reported_once():
    error = problems_of('server:\n  api_keys: ["${API_KEY}"]\n')
    assert error.problems == [
        ("server.api_keys", "environment variable API_KEY is not set: set it, or write ${API_KEY:-default}")
    ]


def test_env_value_is_validated():
    error = problems_of(
        "channels:\n  chat:\n    id: chat-1\n    type: WS\n    max_of_channel_connections: ${MAX}\n", {"MAX": "0"}
    )
    assert_problem(error, "channels.chat.max_of_channel_connections", "must be a positive integer")


# YAML itself


def test_duplicate_mapping_key_is_refused_with_its_path_and_lines():
    error = problems_of("channels:\n  chat:\n    id: chat-1\n    type: WS\n    id: chat-2\n")
    assert_problem(error, "channels.chat.id", "appears twice (lines 3 and 5)", "delete one of them")


def test_duplicate_channel_name_is_refused():
    error = problems_of("channels:\n  chat: {id: a, type: WS}\n  chat: {id: b, type: WS}\n")
    assert_problem(error, "channels.chat", "appears twice (lines 2 and 3)")


def test_duplicate_key_reported_with_other_mistakes():
    error = problems_of("server:\n  sse_retry: 1\n  sse_retry: 2\n  render_chat_html: maybe\n")
    assert [key_path for key_path, _ in error.problems] == ["server.sse_retry", "server.render_chat_html"]


def test_invalid_yaml_gives_line_and_column():
    error = problems_of("channels:\n  chat: {id: a\n")
    assert str(error).startswith(f"{FILE}: 1 configuration problem:\n  - not valid YAML: line ")


def test_python_tags_are_not_executed():
    error = problems_of("server: !!python/object/apply:os.system ['true']\n")
    assert "could not determine a constructor" in str(error)


# docs/configuration.md documents every declared key with its default


DOCS = ROOT / "docs" / "configuration.md"
_HEADING = re.compile(r"^#+\s+`([^`]+)`\s*$")
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|[^|]*\|([^|]*)\|")


def documented_keys() -> dict[str, dict[str, str]]:
    """``{section: {key: default cell}}`` from the tables under each section heading."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        heading = _HEADING.match(line)
        if heading:
            current = heading.group(1) if heading.group(1) in SECTIONS else None
            if current:
                sections[current] = {}
            continue
        row = _ROW.match(line)
        if current and row:
            sections[current][row.group(1)] = row.group(2).strip()
    return sections


def documented_default(cell: str):
    """The YAML literal in a Default cell, or the marker ``"required"``."""
    if cell.startswith("*required*"):
        return "required"
    literal = re.match(r"`([^`]*)`", cell)
    assert literal, f"the default {cell!r} is not a `yaml literal` or *required*"
    value = yaml.safe_load(literal.group(1))
    return tuple(value) if isinstance(value, list) else value


def test_every_section_is_documented():
    assert set(documented_keys()) == set(SECTIONS)
    assert {id(keys) for keys in SECTIONS.values()} == {
        id(SERVER_KEYS),
        id(HOOKS_KEYS),
        id(PUBSUB_KEYS),
        id(REDIS_KEYS),
        id(CHANNEL_KEYS),
    }


@pytest.mark.parametrize(
    ("section", "key"),
    [pytest.param(section, key, id=f"{section}.{key.name}") for section, keys in SECTIONS.items() for key in keys],
)
def test_every_key_is_documented_with_its_default(section, key):
    documented = documented_keys()[section]
    assert key.name in documented, f"{section}.{key.name} is declared but not documented in {DOCS.name}"
    default = documented_default(documented[key.name])
    expected = "required" if key.required else key.default
    assert default == expected and isinstance(default, bool) == isinstance(expected, bool), (
        f"{section}.{key.name}: documented default {documented[key.name]!r}, declared {expected!r}"
    )


def test_no_undeclared_key_is_documented():
    for section, keys in documented_keys().items():
        assert set(keys) <= {key.name for key in SECTIONS[section]}, f"{section} documents unknown keys"


# --- Any document loads or raises ConfigError (hypothesis) (moved from test_hardening_properties.py) ---


def scalar_values():
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=40),
        st.sampled_from(["WS", "SSE", "ws", "MEMORY", "REDIS", "redis://[::1", "redis://h:99999999/0", "${X}", "1"]),
        st.sampled_from(["${HOME}", "${UNSET_VAR_FOR_TESTS}", "${UNSET_VAR_FOR_TESTS:-7}", "h:²", "a:b:c"]),
    )


values = st.recursive(scalar_values(), lambda inner: st.lists(inner, max_size=4), max_leaves=8)


def section_of(keys, extra=()):
    names = [key.name for key in keys] + list(extra) + ["typo_key"]
    return st.dictionaries(st.sampled_from(names), values, max_size=len(names))


channel_names = st.one_of(st.text(alphabet=IDENTIFIER_ALPHABET, min_size=1, max_size=12), st.integers(), any_text)
documents = st.fixed_dictionaries(
    {},
    optional={
        "server": st.one_of(section_of(SERVER_KEYS), values),
        "pubsub": st.one_of(
            st.fixed_dictionaries(
                {"driver": st.sampled_from(["MEMORY", "REDIS", "redis", 3])},
                optional={"redis": st.one_of(section_of(REDIS_KEYS), values)},
            ),
            section_of(PUBSUB_KEYS, ("redis",)),
        ),
        "channels": st.one_of(st.dictionaries(channel_names, st.one_of(section_of(CHANNEL_KEYS), values), max_size=4)),
        "unknown": values,
    },
)


def assert_config_outcome(text: str) -> None:
    try:
        config = parse_config(text, environ={"HOME": "/root", "X": "1"})
    except ConfigError as error:
        assert error.problems, "a ConfigError must list its problems"
        for key_path, message in error.problems:
            assert isinstance(key_path, str) and isinstance(message, str) and message
        return
    assert isinstance(config, RealtimeConfig)
    for channel in config.channels:
        assert IDENTIFIER_PATTERN.match(channel.id) and IDENTIFIER_PATTERN.match(channel.name)


@given(st.text(max_size=400))
def test_any_text_loads_or_raises_config_error(text):
    assert_config_outcome(text)


@given(documents)
def test_any_structured_document_loads_or_raises_config_error(document):
    text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    note(text)
    assert_config_outcome(text)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,  # deep nesting overflows PyYAML's recursive composer
        "a: &x [*x]",
        "server: {max_message_size: 1e400}",
        'pubsub: {driver: "REDIS", redis: {url: "redis://[::1"}}',
        'pubsub: {driver: "REDIS", redis: {sentinels: ["host:²"], master_name: m}}',
        "\x00",
        "\ud800: 1",
        "? [a, b]\n: c",
        "server: !!binary aGVsbG8=",
        "channels: {c: {id: !!timestamp 2001-12-14, type: WS}}",
        'channels: {c: {id: "c", type: WS, max_of_channel_connections: "${UNSET_VAR_FOR_TESTS:-9e999}"}}',
    ],
)
def test_known_hostile_documents(text):
    assert_config_outcome(text)


# --- server.hooks (hooks over HTTP, docs/hooks.md#hooks-over-http) ---


def test_server_hooks_is_a_nested_mapping_with_defaults():
    hooks = parse_config("server:\n  hooks:\n    connect_url: https://backend.internal/connect\n").server.hooks
    assert (hooks.connect_url, hooks.publish_url, hooks.events_url) == ("https://backend.internal/connect", "", "")
    assert (hooks.timeout, hooks.max_concurrency) == (2.0, 64)
    assert parse_config("").server.hooks.connect_url == ""


def test_server_hooks_mistakes_name_the_file_the_key_and_the_fix():
    text = (
        "server:\n  hooks:\n    conect_url: http://x/\n    publish_url: ftp://x/\n"
        "    max_concurrency: 0\n    timeout: fast\n"
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(text, path=FILE)
    message = str(raised.value)
    assert message.startswith(f"{FILE}: 4 configuration problems")
    assert "server.hooks.conect_url: unknown key: did you mean 'connect_url'?" in message
    assert "server.hooks.publish_url: 'ftp://x/' is not an HTTP URL: write http(s)://" in message
    assert "server.hooks.max_concurrency: must be a positive integer (at least 1), not 0" in message
    assert "server.hooks.timeout: must be a number" in message
    with pytest.raises(ConfigError, match="server.hooks: must be a mapping of keys"):
        parse_config("server:\n  hooks: https://x/\n")
