"""Django settings: the one place that reads the environment.

Everything a deployment sets comes from environment variables with safe defaults for the
embedded run (SQLite, in-memory channel layer, ``configs/memory.config.yaml``):

- ``CONFIG_FOLDER_PATH``: the YAML file, or a folder holding ``config.yaml``.
- ``APP_DEBUG=1``: Django's DEBUG and verbose logging.
- ``DJANGO_SECRET_KEY``: required when several instances share sessions or tokens. Unset, the key
  is kept in ``<data folder>/secret_key`` (created with mode 0600 on the first start), so a restart
  keeps admins logged in; without a writable data folder, a random key for this process only.
- ``REALTIME_DATA_DIR``: the data folder (default: the SQLite database's folder; none with PostgreSQL).
- ``DJANGO_ALLOWED_HOSTS``: comma-separated host names.
- ``DATABASE_URL``: ``sqlite:///path`` (default ``sqlite:///db.sqlite3``) or
  ``postgres://user:password@host:5432/name``.
- ``LOG_LEVEL``: ``DEBUG``, ``INFO`` (default), ``WARNING``...
- ``LOG_FORMAT``: ``plain`` (default) or ``json`` (one JSON object per line).
- ``REALTIME_API_KEYS``: comma-separated API keys, added to ``server.api_keys``.
- ``REALTIME_ALLOWED_ORIGINS``: comma-separated origins (``https://app.example.com``,
  ``https://*.example.com``), added to ``server.allowed_origins`` in ``REALTIME``, where every origin
  check reads them (channels_app/transports/origins.py).
- ``REALTIME_TOKEN_SECRET``: signs private-channel tokens (default: the secret key).
- ``REALTIME_SHUTDOWN_GRACE_SECONDS``: longest graceful drain after SIGTERM (default 20).
- ``METRICS_TOKEN``: when set, ``/metrics`` requires ``Authorization: Bearer <token>``.
- ``REALTIME_METRICS_MAX_CHANNELS``: how many channels ``/metrics`` labels one by one (default 100,
  the busiest here); the rest are summed under ``channel="_other"``.
- ``REALTIME_METRICS_DIR``: set by the supervisor of several server processes (not by hand): the
  private folder where each keeps its metrics snapshot, so ``/metrics`` sums them.
- ``REALTIME_REGISTRY_CACHE_SIZE``: how many channels each process keeps cached, the least recently
  used leaving first (default 100,000; a registry no larger is loaded whole at start).
- ``REALTIME_PRESENCE_LEASE_SECONDS``: REDIS driver; a dead instance's connection slots are
  released after this long (default 30).
- ``REALTIME_REQUEST_HEAD_TIMEOUT_SECONDS`` / ``REALTIME_REQUEST_BODY_TIMEOUT_SECONDS``: a request's
  line and headers must arrive within the first (default 20) of the connection opening (on a
  kept-alive connection, of their first byte), its body within the second (default 60) of its
  headers; otherwise 408 and the connection is closed (channels_app/http/limits.py).
- ``REALTIME_HOOKS``: the dotted path of the project's hooks module (several, comma-separated),
  imported at start-up (docs/hooks.md); ``REALTIME_HOOKS_SECRET``: the HMAC secret of the hooks over
  HTTP (``server.hooks``); ``REALTIME_HOOK_TIMEOUT_SECONDS``: how long one hook call may
  take before its action is refused (default 2).
- ``DJANGO_SECURE=1``: production behind HTTPS (a TLS-terminating proxy that sets
  ``X-Forwarded-Proto``): secure cookies, HSTS, redirects to HTTPS (except the probes), and
  ``DJANGO_SECRET_KEY`` becomes required. ``DJANGO_HSTS_SECONDS`` (default one year),
  ``DJANGO_HSTS_INCLUDE_SUBDOMAINS`` (default on), ``DJANGO_HSTS_PRELOAD`` (default off) and
  ``DJANGO_CSRF_TRUSTED_ORIGINS`` (comma-separated) tune it. Off, the embedded plain-HTTP run
  works unchanged. See docs/security.md.
"""

import os
import re
import secrets
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from channels_app.config import ConfigError, load_config
from channels_app.ops.secret_key import SecretKeyFileError, secret_key_keep

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _env_seconds(name: str, default: str) -> float:
    raw = os.environ.get(name, default)
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        sys.stderr.write(
            f"realtime: {name}={raw} is not a number of seconds above 0: write for example {name}={default}\n"
        )
        sys.exit(2)
    return value


def _env_count(name: str, default: str) -> int:
    raw = os.environ.get(name, default)
    if not (raw.strip().isascii() and raw.strip().isdigit()):
        sys.stderr.write(f"realtime: {name}={raw} is not a whole number (0 or more): write e.g. {name}={default}\n")
        sys.exit(2)
    return int(raw)


def request_body_limit(max_message_size: int) -> int:
    """The largest request body accepted, in bytes: room for a push of ``max_message_size`` bytes.

    JSON escaping can grow a payload six-fold (a control character becomes ``\\u0001``); 64 KiB
    covers the rest of the object. Django's default (2.5 MiB) is the floor.
    """
    return max(2_621_440, 6 * max_message_size + 65_536)


def _database_from_url(url: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        name = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path) or "db.sqlite3"
        if not Path(name).is_absolute():
            name = str(BASE_DIR / name)
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": name}
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    sys.stderr.write(
        f"realtime: DATABASE_URL {parts.scheme}://... is not supported: "
        "use sqlite:///path or postgres://user:password@host:5432/name\n"
    )
    sys.exit(2)


APP_DEBUG = _env_flag("APP_DEBUG")
DEBUG = APP_DEBUG

try:
    REALTIME = load_config(os.environ.get("CONFIG_FOLDER_PATH"), base_dir=BASE_DIR)
except ConfigError as error:
    # A bad file must stop every entry point (daphne, manage.py) before anything is served.
    sys.stderr.write(f"realtime: {error}\n")
    sys.exit(2)

REALTIME_API_KEYS = tuple(REALTIME.server.api_keys) + tuple(_env_list("REALTIME_API_KEYS"))
# Merged into the configuration itself, so the runtime built from it (composition.py) and every
# origin check reading ``runtime.server`` see one list.
REALTIME = replace(
    REALTIME,
    server=replace(
        REALTIME.server,
        allowed_origins=tuple(REALTIME.server.allowed_origins) + tuple(_env_list("REALTIME_ALLOWED_ORIGINS")),
    ),
)

_DATABASE = _database_from_url(os.environ.get("DATABASE_URL", "sqlite:///db.sqlite3"))


def data_folder(database: dict, configured: str | None) -> Path | None:
    """Where the service keeps its own files: ``REALTIME_DATA_DIR``, else the SQLite database's folder."""
    if configured:
        return Path(configured)
    if database["ENGINE"].endswith("sqlite3"):
        return Path(database["NAME"]).parent
    return None


REALTIME_DATA_DIR = data_folder(_DATABASE, os.environ.get("REALTIME_DATA_DIR"))
SECRET_KEY_FROM_ENVIRONMENT = bool(os.environ.get("DJANGO_SECRET_KEY"))
# Without DJANGO_SECRET_KEY: the key file (SECRET_KEY_FILE), or, when it cannot be kept, a key for
# this process only and the reason (SECRET_KEY_PROBLEM). Both are logged at start (http/auth.py).
SECRET_KEY_FILE: Path | None = None
SECRET_KEY_FILE_CREATED = False
SECRET_KEY_PROBLEM = ""
DJANGO_SECURE = _env_flag("DJANGO_SECURE")
if SECRET_KEY_FROM_ENVIRONMENT:
    SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
elif DJANGO_SECURE:
    # Refused below, before any file is written.
    SECRET_KEY = ""
elif REALTIME_DATA_DIR is None:
    SECRET_KEY = secrets.token_urlsafe(50)
    SECRET_KEY_PROBLEM = "no data folder (PostgreSQL and no REALTIME_DATA_DIR)"
else:
    try:
        _kept = secret_key_keep(REALTIME_DATA_DIR)
    except (OSError, SecretKeyFileError) as error:
        SECRET_KEY = secrets.token_urlsafe(50)
        SECRET_KEY_PROBLEM = f"the key file could not be kept in {REALTIME_DATA_DIR} ({error})"
    else:
        SECRET_KEY, SECRET_KEY_FILE, SECRET_KEY_FILE_CREATED = _kept.key, _kept.path, _kept.created
# Signs private-channel tokens; every instance must share it.
REALTIME_TOKEN_SECRET = os.environ.get("REALTIME_TOKEN_SECRET") or SECRET_KEY
ALLOWED_HOSTS = _env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

# Production behind HTTPS. Off by default so the embedded run keeps working over plain HTTP
# (secure cookies would never be sent back, and redirects would point at a port nobody serves).
if DJANGO_SECURE:
    if not SECRET_KEY_FROM_ENVIRONMENT:
        sys.stderr.write(
            "realtime: DJANGO_SECURE=1 needs DJANGO_SECRET_KEY: a key kept by each instance in its own data "
            "folder makes sessions and private-channel tokens differ between instances.\n"
        )
        sys.exit(2)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    # Kubernetes probes and Prometheus talk plain HTTP to the pod.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    # TLS ends at the proxy in front of daphne, which says so in X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_flag("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = _env_flag("DJANGO_HSTS_PRELOAD")
    # Asking browsers to preload HSTS for the whole domain is the domain owner's decision, not this
    # service's; DJANGO_HSTS_PRELOAD=1 opts in, and only then is security.W021 meaningful.
    SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
CSRF_TRUSTED_ORIGINS = _env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
SESSION_COOKIE_HTTPONLY = True

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "channels_app.apps.ChannelsAppConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # request.realtime: this process's Runtime, for the pages, probes, metrics and the admin.
    "channels_app.composition.RuntimeMiddleware",
]

ROOT_URLCONF = "realtime_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "realtime_project.asgi.application"

DATABASES = {"default": _DATABASE}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets SSE/WS lookups read while the admin or sync_channels writes.
    DATABASES["default"]["OPTIONS"] = {"init_command": "PRAGMA journal_mode=WAL;", "timeout": 20}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Static files are served by the app itself (no CDN, works offline), straight from the apps'
# static folders, so no collectstatic step is needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG


def _channel_layers(config) -> dict:
    # The hub channel of each instance receives every message for its local subscribers, so it
    # gets a far larger queue than per-connection channels; see channels_app/core/hub.py.
    hub_capacity = 100_000
    if config.pubsub.driver == "MEMORY":
        # InMemoryChannelLayer (channels 4.3) does not compile channel_capacity globs, so it is
        # given the (regex, capacity) pairs it iterates over.
        memory_config = {"capacity": 1000, "channel_capacity": [(re.compile(r"^realtime-hub"), hub_capacity)]}
        return {"default": {"BACKEND": "channels_app.state.layers.InMemoryChannelLayer", "CONFIG": memory_config}}
    redis = config.pubsub.redis
    if redis.sentinels:
        hosts = [
            {
                "sentinels": [(host, int(port)) for host, port in (s.rsplit(":", 1) for s in redis.sentinels)],
                "master_name": redis.master_name,
            }
        ]
    else:
        # With several shards channels-redis places each group and channel on one of them by a hash
        # of its name; state/shards.py homes each channel's keys on its group's shard.
        hosts = [{"address": url} for url in (redis.shards or (redis.url,))]
    backend = {
        "pubsub": "channels_app.state.layers.RedisPubSubChannelLayer",
        "core": "channels_redis.core.RedisChannelLayer",
    }[redis.layer]
    for host in hosts:
        # Fail fast when Redis is away instead of hanging the publisher.
        host.update({"socket_connect_timeout": 2, "socket_keepalive": True})
        if redis.layer == "core":
            # The hub's receive blocks in BZPOPMIN for RedisChannelLayer.brpop_timeout (5 s); redis-py
            # 8 also gives up reading after 5 s by default, so an idle hub's receive failed (and its
            # connection was dropped) every 5 s. Read timeouts must outlast the blocking pop.
            host["socket_timeout"] = 10
    layer_config = {"hosts": hosts, "prefix": redis.prefix, "capacity": 1000}
    if redis.layer == "core":
        layer_config["channel_capacity"] = {"realtime-hub*": hub_capacity}
    return {"default": {"BACKEND": backend, "CONFIG": layer_config}}


CHANNEL_LAYERS = _channel_layers(REALTIME)
# django-eventstream's send_event(channel, "message", data) publishes through this service
# (README.md, "Apps written for django-eventstream").
EVENTSTREAM_STORAGE_CLASS = "channels_app.eventstream.RealtimeStorage"

# On SIGTERM the instance drains for at most this long, then exits (Kubernetes waits 30 s).
REALTIME_SHUTDOWN_GRACE_SECONDS = float(os.environ.get("REALTIME_SHUTDOWN_GRACE_SECONDS", "20"))

# The largest request body any endpoint accepts, the one value every reader of a body uses
# (channels_app/http/limits.py, http/direct_api.py, Django).
REALTIME_MAX_REQUEST_BODY_BYTES = request_body_limit(REALTIME.server.max_message_size)
DATA_UPLOAD_MAX_MEMORY_SIZE = REALTIME_MAX_REQUEST_BODY_BYTES
# Django spools a body above this to a temporary file; no accepted body is larger, so none is.
FILE_UPLOAD_MAX_MEMORY_SIZE = REALTIME_MAX_REQUEST_BODY_BYTES
# A request head is at most 16 KiB and is sent at once; 20 s leaves room for a few TCP retransmits
# and for browsers that open a connection before they need it. 60 s carries the largest body at
# 44 KB/s.
REALTIME_REQUEST_HEAD_TIMEOUT_SECONDS = _env_seconds("REALTIME_REQUEST_HEAD_TIMEOUT_SECONDS", "20")
REALTIME_REQUEST_BODY_TIMEOUT_SECONDS = _env_seconds("REALTIME_REQUEST_BODY_TIMEOUT_SECONDS", "60")

# Optional bearer token protecting /metrics.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
# Channels /metrics labels one by one, the busiest on this instance first; the rest are summed
# under channel="_other", so a thousand channels do not make a thousand series per metric.
REALTIME_METRICS_MAX_CHANNELS = _env_count("REALTIME_METRICS_MAX_CHANNELS", "100")
# Several server processes (channels_app/ops/supervisor.py): where each writes the snapshot of its metrics
# that /metrics sums (channels_app/ops/metrics_snapshots.py). Unset with one process.
REALTIME_METRICS_DIR = Path(os.environ["REALTIME_METRICS_DIR"]) if os.environ.get("REALTIME_METRICS_DIR") else None

# Channels the registry cache keeps in each process (channels_app/registry/cache.py), the least recently
# used leaving first: about 360 bytes each (docs/performance-registry.md).
REALTIME_REGISTRY_CACHE_SIZE = _env_count("REALTIME_REGISTRY_CACHE_SIZE", "100000")

# REDIS driver: how long a connection slot survives without its instance renewing it, i.e. how
# soon the slots of an instance that died without closing its connections are released.
REALTIME_PRESENCE_LEASE_SECONDS = float(os.environ.get("REALTIME_PRESENCE_LEASE_SECONDS", "30"))

# The project's hooks (channels_app/hooks.py): imported by the composition root when the service starts.
REALTIME_HOOKS = _env_list("REALTIME_HOOKS")
REALTIME_HOOK_TIMEOUT_SECONDS = _env_seconds("REALTIME_HOOK_TIMEOUT_SECONDS", "2")
# Hooks over HTTP (server.hooks in the YAML) sign their requests with this secret (docs/security.md):
# from the environment only, never from the file; a hook URL without it stops the start.
REALTIME_HOOKS_SECRET = os.environ.get("REALTIME_HOOKS_SECRET", "")
_hook_urls = [
    f"server.hooks.{key}" for key in ("connect_url", "publish_url", "events_url") if getattr(REALTIME.server.hooks, key)
]
if _hook_urls and not REALTIME_HOOKS_SECRET:
    sys.stderr.write(
        f"realtime: {REALTIME.path}: {', '.join(_hook_urls)} is set but REALTIME_HOOKS_SECRET is not: set it to a "
        "long random string shared with the backend (it signs every hook request), or remove the URL\n"
    )
    sys.exit(2)

LOG_LEVEL = os.environ.get("LOG_LEVEL", "DEBUG" if APP_DEBUG else "INFO").upper()
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").lower()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "channels_app.ops.logformat.RequestIdFilter"},
        "one_line_security": {"()": "channels_app.http.security.OneLineSecurityRecords"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "channels_app.ops.logformat.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["request_id", "one_line_security"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"level": "INFO" if LOG_LEVEL == "DEBUG" else LOG_LEVEL},
        "daphne": {"level": "INFO" if LOG_LEVEL == "DEBUG" else LOG_LEVEL},
    },
}
