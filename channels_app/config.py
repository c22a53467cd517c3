"""Load and validate the service's YAML configuration file.

The file is validated whole before anything is served: every mistake is collected and reported
in one ``ConfigError`` naming the file, the key path and what to write instead. Each key is one
field of its section's dataclass, carrying its ``Key`` (type, default, documentation); a channel's
keys come from the declaration of a channel's fields (channel.py). ``docs/configuration.md`` is
checked against these declarations by a test, so a new key is added here and documented there.

This module is imported by the settings module, so it must not import Django.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .channel import CHANNEL_FIELDS, ChannelField
from .configreader import KIND_TYPES, ConfigError, Key, Reader, keys_of, load_yaml, yaml_type
from .configreader import config_key as _key
from .identity import IDENTIFIER_PATTERN, IDENTIFIER_RULE, ChannelIdentity, Collision, identity_collisions

DEFAULT_CONFIG = "configs/memory.config.yaml"
CONFIG_ENV_VAR = "CONFIG_FOLDER_PATH"
FOLDER_CONFIG_NAME = "config.yaml"


def _check_identifier(value: str) -> str | None:
    if set(value) == {"."}:
        return f"{value!r} cannot be used in a URL (clients resolve it as a path segment): add a letter or digit"
    if not IDENTIFIER_PATTERN.match(value):
        return f"{value!r} cannot be used in a URL or a group name: use {IDENTIFIER_RULE}"
    return None


def _check_redis_url(value: str) -> str | None:
    if not value:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        # urlsplit refuses an unbalanced "[" (an IPv6 host missing its "]").
        return f"{value!r} is not a valid URL: write redis://[user:password@]host:port/db"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return f"{value!r} is not a Redis URL: write redis://[user:password@]host:port/db or rediss://... for TLS"
    if parts.scheme != "unix" and not parts.hostname:
        return f"{value!r} has no host: write redis://[user:password@]host:port/db"
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        return f"{value!r} has an invalid port: write a number such as 6379"
    return None


def _check_shards(value: list[str]) -> str | None:
    if len(value) == 1:
        return f'lists one Redis: write it as  url: "{value[0]}"  or add the other shards\' URLs'
    for url in value:
        if not url:
            return "has an empty entry: write each shard as redis://host:port/db"
        problem = _check_redis_url(url)
        if problem is not None:
            return problem
    duplicates = sorted({url for url in value if value.count(url) > 1})
    if duplicates:
        return f"lists {duplicates[0]!r} twice: each shard is a different Redis, remove the repeat"
    return None


def _check_sentinels(value: list[str]) -> str | None:
    for address in value:
        host, _, port = address.rpartition(":")
        # isdigit() alone accepts digits int() refuses, such as "²".
        if not host or not (port.isascii() and port.isdigit()):
            return f"{address!r} is not host:port: write for example 'sentinel-1:26379'"
    return None


def _check_hook_url(value: str) -> str | None:
    if not value:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return f"{value!r} is not a valid URL: write http(s)://host[:port]/path"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{value!r} is not an HTTP URL: write http(s)://host[:port]/path, e.g. https://backend.internal/realtime"
    return None


@dataclass(frozen=True)
class HooksConfig:
    """The ``server.hooks`` section: hooks over HTTP (docs/hooks.md#hooks-over-http)."""

    connect_url: str = _key(
        "str", "", "URL asked (POST) before a subscriber is admitted; empty: none.", check=_check_hook_url
    )
    publish_url: str = _key(
        "str",
        "",
        "URL asked (POST) before a client's WebSocket message is published; empty: none.",
        check=_check_hook_url,
    )
    events_url: str = _key(
        "str", "", "URL sent batches of channel and member events (POST); empty: none.", check=_check_hook_url
    )
    timeout: float = _key("number", 2.0, "Seconds one connect or publish request may take.", minimum=0.001)
    max_concurrency: int = _key(
        "int", 64, "Connect and publish requests in flight per instance; beyond, refused (4500 `busy`).", minimum=1
    )


@dataclass(frozen=True)
class ServerConfig:
    """The ``server`` section."""

    allow_create_new_channels: bool = _key("bool", False, "Allow `POST /api/v1/channels` to create channels.")
    allow_push_server_messages: bool = _key("bool", True, "Allow backends to push messages over HTTP.")
    render_chat_html: bool = _key("bool", False, "Serve the chat demo page at `/web/chat/`.")
    render_notifications_html: bool = _key("bool", False, "Serve the notifications page at `/web/notifications/`.")
    allow_all_origins: bool = _key("bool", False, "Accept WebSocket handshakes and SSE reads from any `Origin`.")
    allowed_origins: tuple[str, ...] = _key(
        "str_list", (), "Origins (`https://app.example.com`) allowed besides the service's own hosts."
    )
    api_keys: tuple[str, ...] = _key(
        "str_list", (), "API keys for the server API; `${VAR}` keeps them out of the file."
    )
    max_message_size: int = _key("int", 65536, "Largest message payload in bytes (WebSocket frame or push).", minimum=1)
    publish_rate: float = _key(
        "number", 50.0, "Messages per second one WebSocket connection may publish.", minimum=0.001
    )
    publish_burst: int = _key(
        "int", 100, "Messages a WebSocket connection may publish at once above the rate.", minimum=1
    )
    max_pending_messages: int = _key(
        "int",
        1000,
        "Messages queued for one slow connection before it is disconnected (code 4408).",
        minimum=1,
    )
    max_pending_bytes: int = _key(
        "int",
        4 * 1024 * 1024,
        "Bytes buffered for one slow connection before it is disconnected (code 4408).",
        minimum=1024,
    )
    history_size: int = _key("int", 100, "Default number of recent messages each channel keeps.", minimum=0)
    history_ttl: int = _key("int", 3600, "Default seconds a message stays in a channel's history.", minimum=1)
    sse_keepalive: float = _key("number", 15.0, "Seconds between SSE keep-alive comments.", minimum=0.1)
    sse_retry: int = _key(
        "int", 3000, "Reconnect delay in milliseconds suggested to SSE clients (`retry:`).", minimum=0
    )
    duplicate_client_id: str = _key(
        "choice",
        "refuse",
        "A connection whose `clientId` is already connected: `refuse` it (4409 / 409), or `replace` the "
        "older one (closed with 4001 `replaced`).",
        choices=("refuse", "replace"),
    )
    max_channels_per_connection: int = _key(
        "int",
        32,
        "Channels one multiplexed connection may follow (`/api/v1/events`, `/api/v1/connect`).",
        minimum=1,
        check=lambda value: None if value <= 1000 else "must be at most 1000",
    )
    hooks: HooksConfig


# Queued messages the hub fans out before it lets the connections' writers run. A writer then
# sends a turn's frames in one run: under daphne one socket write and one arm and disarm of the
# write watch for all of them; under uvicorn back-to-back sends that find the client already
# awake. Measured at 1,000 subscribers, this doubled deliveries per CPU-second under uvicorn and
# tripled them under daphne (docs/performance.md); 64 was no better than 16.
EVENTS_PER_TURN = 16


def events_per_turn(server: ServerConfig) -> int:
    """How many queued messages the hub fans out per turn, and the longest run of publishes
    (``publish_queue``). A run that arrives when the turn has room for one more message is still
    taken whole, so a turn holds at most twice this many: every connection that keeps up must have
    room for that many of the largest messages with half of its bound to spare."""
    by_count = server.max_pending_messages // 4
    by_bytes = server.max_pending_bytes // (4 * server.max_message_size)
    return max(1, min(EVENTS_PER_TURN, by_count, by_bytes))


@dataclass(frozen=True)
class RedisConfig:
    """The ``pubsub.redis`` section."""

    url: str = _key("str", "", "`redis://[user:password@]host:port/db` or `rediss://` for TLS.", check=_check_redis_url)
    shards: tuple[str, ...] = _key(
        "str_list",
        (),
        "Two or more Redis URLs to spread the channel layer and channels' state over, instead of `url`; "
        "see docs/scaling.md.",
        check=_check_shards,
    )
    sentinels: tuple[str, ...] = _key(
        "str_list", (), "Sentinel addresses as `host:port`; use with `master_name`.", check=_check_sentinels
    )
    master_name: str = _key("str", "", "The Sentinel master name.")
    prefix: str = _key("str", "realtime", "Key prefix, so several deployments can share one Redis.")
    layer: str = _key(
        "choice",
        "pubsub",
        "channels-redis layer: `pubsub` (RedisPubSubChannelLayer) or `core` (RedisChannelLayer); see docs/scaling.md.",
        choices=("pubsub", "core"),
    )


@dataclass(frozen=True)
class PubSubConfig:
    """The ``pubsub`` section."""

    driver: str = _key(
        "choice", "MEMORY", "`MEMORY` (one instance) or `REDIS` (many instances).", choices=("MEMORY", "REDIS")
    )
    redis: RedisConfig


def _channel_key(channel_field: ChannelField) -> Key:
    """A channel field's key under ``channels.<name>``; an inherited default is filled in from ``server``."""
    kind, check = ("str", _check_identifier) if channel_field.kind == "identifier" else (channel_field.kind, None)
    default = None if channel_field.inherited else channel_field.default
    return Key(
        channel_field.yaml,
        kind,
        default,
        channel_field.doc,
        required=channel_field.required,
        choices=channel_field.choices,
        minimum=channel_field.minimum,
        check=check,
    )


SERVER_KEYS = keys_of(ServerConfig)
HOOKS_KEYS = keys_of(HooksConfig)
PUBSUB_KEYS = keys_of(PubSubConfig)
REDIS_KEYS = keys_of(RedisConfig)
CHANNEL_KEYS = tuple(_channel_key(channel_field) for channel_field in CHANNEL_FIELDS.values() if channel_field.yaml)
# Channel keys whose default is the server key of the same name.
_INHERITED_KEYS = tuple(channel_field.yaml for channel_field in CHANNEL_FIELDS.values() if channel_field.inherited)

# One channel declared under ``channels``: its name (its key there), then its keys.
ChannelSpec = make_dataclass(
    "ChannelSpec",
    [("name", str), *((channel_key.name, KIND_TYPES[channel_key.kind]) for channel_key in CHANNEL_KEYS)],
    frozen=True,
    namespace={"__doc__": "One channel declared under ``channels``.", "__module__": __name__},
)

SECTIONS = {
    "server": SERVER_KEYS,
    "server.hooks": HOOKS_KEYS,
    "pubsub": PUBSUB_KEYS,
    "pubsub.redis": REDIS_KEYS,
    "channels.<name>": CHANNEL_KEYS,
}
TOP_LEVEL_KEYS = ("server", "pubsub", "channels")


@dataclass(frozen=True)
class RealtimeConfig:
    """The whole validated configuration file."""

    path: str
    server: ServerConfig
    pubsub: PubSubConfig
    channels: tuple[ChannelSpec, ...] = field(default=())


def resolve_config_path(raw: str | os.PathLike | None = None, *, base_dir: Path | None = None) -> Path:
    """Turn ``CONFIG_FOLDER_PATH`` (a file, or a folder holding ``config.yaml``) into a file path."""
    candidate = Path(raw if raw not in (None, "") else DEFAULT_CONFIG)
    tries = [candidate]
    if not candidate.is_absolute() and base_dir is not None:
        tries.append(base_dir / candidate)
    for path in tries:
        if path.is_dir():
            path = path / FOLDER_CONFIG_NAME
        if path.is_file():
            return path
    shown = tries[-1] / FOLDER_CONFIG_NAME if tries[-1].is_dir() else tries[-1]
    raise ConfigError(
        str(shown),
        [
            (
                "",
                f"no configuration file here: point {CONFIG_ENV_VAR} at a YAML file "
                f"or a folder holding {FOLDER_CONFIG_NAME}",
            )
        ],
    )


def load_config(
    raw_path: str | os.PathLike | None = None, *, base_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> RealtimeConfig:
    """Read, interpolate and validate a configuration file; raise ``ConfigError`` listing every mistake."""
    path = resolve_config_path(raw_path, base_dir=base_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [("", f"cannot read the file: {exc}")]) from exc
    return parse_config(text, path=str(path), environ=os.environ if environ is None else environ)


def parse_config(text: str, *, path: str = "<string>", environ: Mapping[str, str] | None = None) -> RealtimeConfig:
    """Validate configuration text; ``path`` is only used in messages."""
    problems: list[tuple[str, str]] = []
    document = load_yaml(text, path, problems)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(path, [("", "the file must be a mapping with the keys server, pubsub and channels")])
    reader = Reader(problems, os.environ if environ is None else environ)
    reader.reject_unknown("", document, TOP_LEVEL_KEYS)

    server_raw = reader.mapping("server", document.get("server"))
    server_values = reader.section("server", server_raw, SERVER_KEYS, extra=("hooks",))
    hooks_values = reader.section("server.hooks", reader.mapping("server.hooks", server_raw.get("hooks")), HOOKS_KEYS)
    pubsub_raw = reader.mapping("pubsub", document.get("pubsub"))
    pubsub_values = reader.section("pubsub", pubsub_raw, PUBSUB_KEYS, extra=("redis",))
    redis_values = reader.section("pubsub.redis", reader.mapping("pubsub.redis", pubsub_raw.get("redis")), REDIS_KEYS)
    _check_redis_source(redis_values, driver=pubsub_values.get("driver"), problems=problems)

    channels = _read_channels(reader, document.get("channels"), server_values)
    if problems:
        raise ConfigError(path, problems)
    return RealtimeConfig(
        path=path,
        server=ServerConfig(**server_values, hooks=HooksConfig(**hooks_values)),
        pubsub=PubSubConfig(driver=pubsub_values["driver"], redis=RedisConfig(**redis_values)),
        channels=tuple(channels),
    )


def _check_redis_source(values: dict[str, Any], *, driver: str | None, problems: list[tuple[str, str]]) -> None:
    """The REDIS driver names a ``url``, ``shards`` or ``sentinels`` (with ``master_name``); ``shards`` stands
    alone (a ``url`` beside ``sentinels`` is accepted, as before shards: Sentinel is used)."""
    sources = [name for name in ("url", "shards", "sentinels") if values.get(name)]
    reported = any(
        where.startswith(("pubsub.redis.url", "pubsub.redis.shards", "pubsub.redis.sentinels")) for where, _ in problems
    )
    if driver == "REDIS" and not sources and not reported:
        problems.append(
            (
                "pubsub.redis.url",
                'the REDIS driver needs a url: add  redis: { url: "redis://host:6379/0" }  under pubsub',
            )
        )
    others = [name for name in sources if name != "shards"]
    if "shards" in sources and others:
        problems.append(
            (
                "pubsub.redis.shards",
                f"cannot be combined with {' or '.join(others)}: keep one of them ({_REDIS_SOURCES})",
            )
        )
    if values.get("sentinels") and not values.get("master_name"):
        problems.append(("pubsub.redis.master_name", "sentinels need the master's name: add master_name: mymaster"))


# How each way of naming Redis is written, for the message that refuses two of them.
_REDIS_SOURCES = (
    "url for one Redis, shards: [url, url, ...] for several, sentinels with master_name for one Redis behind Sentinel"
)


def _read_channels(reader: Reader, raw: Any, server_values: dict[str, Any]) -> list[ChannelSpec]:
    channels: list[ChannelSpec] = []
    identities: list[ChannelIdentity] = []
    for name, body in reader.mapping("channels", raw).items():
        key_path = f"channels.{name}"
        name_problem = _check_channel_name(name)
        if name_problem is not None:
            reader.problems.append((key_path, name_problem))
        if not isinstance(body, dict):
            shown = "nothing" if body is None else yaml_type(body)
            reader.problems.append(
                (key_path, f'must be a mapping such as  {{ id: "{name}-1", type: "WS" }},  not {shown}')
            )
            continue
        values = reader.section(key_path, body, CHANNEL_KEYS)
        channel_id = values.get("id")
        if name_problem is not None or channel_id is None or values.get("type") is None:
            continue
        # Each pair of channels is compared once, when the second of them is read.
        collisions = identity_collisions(ChannelIdentity(channel_id, name), identities)
        reader.problems.extend(_identity_problem(key_path, collision) for collision in collisions)
        if collisions:
            continue
        identities.append(ChannelIdentity(channel_id, name))
        for inherited in _INHERITED_KEYS:
            if values.get(inherited) is None:
                values[inherited] = server_values.get(inherited)
        if any(value is None for value in values.values()):
            continue
        channels.append(ChannelSpec(name=name, **values))
    return channels


def _identity_problem(key_path: str, collision: Collision) -> tuple[str, str]:
    value, other = collision.value, collision.other.name
    # A YAML channel's name is its key, so two channels never share a name here.
    if collision.field == "name":
        return key_path, (
            f"the name {value!r} is the id of channel {other!r}, so URLs naming it reach {other!r}: "
            "rename this channel or change that id"
        )
    if collision.other_field == "id":
        return f"{key_path}.id", f"{value!r} is already the id of channel {other!r}: ids must be unique"
    return f"{key_path}.id", (
        f"{value!r} is the name of channel {other!r}, and ids are looked up first, so URLs naming "
        f"{other!r} would reach this channel: change this id or rename that channel"
    )


def _check_channel_name(name: Any) -> str | None:
    if not isinstance(name, str):
        return f"the channel name {name!r} is read as {yaml_type(name)}: put it in quotes"
    problem = _check_identifier(name)
    return None if problem is None else f"the channel name {problem}"
