"""Hooks: Django code of this project deciding, in process, who subscribes and what clients publish.

A hooks module (named by ``REALTIME_HOOKS``) marks its functions with the decorators below::

    from channels_app import hooks

    @hooks.on_publish(channels=["chat-*"])
    def check(event):
        ...

The decorators only mark a function; nothing is registered anywhere. The composition root imports
the module and builds a ``Hooks`` from what it marks (``hooks_load``), which the runtime holds;
tests build their own. docs/hooks.md documents the events, codes and failure policy.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import ModuleType
from typing import Any

from asgiref.sync import iscoroutinefunction
from channels.db import database_sync_to_async

from .channel import ChannelInfo
from .tokens import TokenClaims

logger = logging.getLogger(__name__)

ON_CONNECT = "on_connect"
ON_PUBLISH = "on_publish"
ON_DISCONNECT = "on_disconnect"

DEFAULT_TIMEOUT_SECONDS = 2.0
# What presence will show of a subscriber: bounded, since it travels with every join frame.
MAX_INFO_BYTES = 2048
# Sync hooks run in threads of their own pool, so a hook stuck in the database takes at most this
# many threads and never the ones Django's other sync code uses.
SYNC_HOOK_THREADS = 16

_MARK = "realtime_hooks"


class Reject(Exception):  # noqa: N818 - the name the issue and docs/hooks.md give
    """Raised by a hook to refuse: a subscriber is refused with ``code`` (a WebSocket close code,
    4000-4999; an event stream gets the HTTP status ``code - 4000`` when that is 400-599, else 403),
    a published frame is answered with an error frame carrying ``code``."""

    def __init__(self, code: int = 4403, reason: str = "Refused by the server."):
        if not isinstance(code, int) or not 4000 <= code <= 4999:
            raise ValueError(f"Reject(code={code!r}): use an application close code from 4000 to 4999, e.g. 4403")
        super().__init__(reason)
        self.code = code
        self.reason = str(reason)

    @property
    def status(self) -> int:
        """The HTTP status an event stream is refused with."""
        status = self.code - 4000
        return status if 400 <= status <= 599 else 403


class HookFailure(Exception):
    """Raised by a hook over HTTP that could not decide: ``reason`` (``error`` or ``busy``) labels the
    ``hook_failed`` answer and its metric; the message is only logged."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class ConnectEvent:
    """A subscriber about to be admitted. A hook may set ``info`` (a JSON object) for presence."""

    channel: ChannelInfo
    client_id: str
    transport: str
    token_claims: TokenClaims | None
    raw_headers: Iterable[tuple[bytes, bytes]] = ()
    info: dict[str, Any] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The request's headers, names in lower case (a repeated header: its values joined by ``,``)."""
        headers: dict[str, str] = {}
        for name, value in self.raw_headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]},{text}" if key in headers else text
        return headers


@dataclass(slots=True)
class PublishEvent:
    """A WebSocket client's frame about to be published: ``payload`` is its text as sent (or as the
    previous hook replaced it)."""

    channel: ChannelInfo
    client_id: str
    payload: str
    payload_format: str
    token_claims: TokenClaims | None = None
    info: dict[str, Any] | None = None
    transport: str = "WS"


@dataclass(slots=True)
class DisconnectEvent:
    """A subscriber that has left; its slot is already free."""

    channel: ChannelInfo
    client_id: str
    transport: str
    info: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Hook:
    """One hook function, its kind and the channels it is limited to (fnmatch patterns on a
    channel's id or name; empty: every channel)."""

    kind: str
    function: Callable
    channels: tuple[str, ...] = ()
    # A hook over HTTP (core/http_hooks.py): its metric label (``connect_url``) and its own timeout
    # (``server.hooks.timeout``); a hook in process is labelled by its kind and has the runtime's.
    label: str = ""
    timeout: float | None = None

    @property
    def metric_label(self) -> str:
        """The ``hook`` label of its rejections and failures in /metrics."""
        return self.label or self.kind

    @property
    def name(self) -> str:
        """``module.function``, as the logs name it."""
        if self.label:
            return f"server.hooks.{self.label}"
        return f"{getattr(self.function, '__module__', '?')}.{getattr(self.function, '__qualname__', self.function)}"

    def applies_to(self, channel: ChannelInfo) -> bool:
        """Whether this hook runs for ``channel``."""
        if not self.channels:
            return True
        return any(fnmatchcase(channel.id, pattern) or fnmatchcase(channel.name, pattern) for pattern in self.channels)


def _decorator(kind: str):
    def decorate(function: Callable | None = None, *, channels: Iterable[str] | None = None):
        if isinstance(channels, str):
            raise TypeError(f"@hooks.{kind}(channels={channels!r}): give a list of patterns: channels=[{channels!r}]")
        patterns = tuple(channels or ())
        if not all(isinstance(pattern, str) for pattern in patterns):
            raise TypeError(f"@hooks.{kind}(channels=...): every pattern must be a string")

        def mark(target: Callable) -> Callable:
            if not callable(target):
                raise TypeError(f"@hooks.{kind} decorates a function, not {target!r}")
            marks = getattr(target, _MARK, ())
            setattr(target, _MARK, (*marks, Hook(kind, target, patterns)))
            return target

        return mark if function is None else mark(function)

    decorate.__name__ = kind
    decorate.__doc__ = f"Mark a function as an ``{kind}`` hook: bare, or with ``channels=[patterns]``."
    return decorate


on_connect = _decorator(ON_CONNECT)
on_publish = _decorator(ON_PUBLISH)
on_disconnect = _decorator(ON_DISCONNECT)


def hooks_collect(module: ModuleType) -> list[Hook]:
    """The hooks a module's functions are marked with, in the module's order."""
    found: list[Hook] = []
    for value in vars(module).values():
        for hook in getattr(value, _MARK, ()) if callable(value) else ():
            if hook not in found:
                found.append(hook)
    return found


class Hooks:
    """The hooks a runtime runs, by kind, and what they need to run: a timeout and a thread pool."""

    def __init__(self, hooks: Iterable[Hook] = (), *, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        self.hooks = tuple(hooks)
        self.timeout = timeout
        self.on_connect = tuple(hook for hook in self.hooks if hook.kind == ON_CONNECT)
        self.on_publish = tuple(hook for hook in self.hooks if hook.kind == ON_PUBLISH)
        self.on_disconnect = tuple(hook for hook in self.hooks if hook.kind == ON_DISCONNECT)
        # The on_disconnect tasks still running (core/hook_calls.py): held here so none is lost.
        self.running: set = set()
        self._executor: ThreadPoolExecutor | None = None
        self._callables: dict[Hook, Callable] = {}

    def matching(self, kind: str, channel: ChannelInfo) -> tuple[Hook, ...]:
        """The hooks of ``kind`` that run for ``channel``, in registration order."""
        return tuple(hook for hook in getattr(self, kind) if hook.applies_to(channel))

    def awaitable(self, hook: Hook) -> Callable:
        """``hook``'s function as a coroutine function: a sync one runs in the hooks' own threads,
        with Django's stale database connections closed around it, so it may use the ORM."""
        function = self._callables.get(hook)
        if function is None:
            if iscoroutinefunction(hook.function):
                function = hook.function
            else:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(SYNC_HOOK_THREADS, thread_name_prefix="realtime-hook")
                function = database_sync_to_async(hook.function, thread_sensitive=False, executor=self._executor)
            self._callables[hook] = function
        return function


def hooks_load(modules: str | Iterable[str], *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Hooks:
    """Import the hooks modules (dotted names; a string may list several, comma-separated) and
    collect their hooks."""
    names = [name.strip() for name in modules.split(",")] if isinstance(modules, str) else list(modules)
    hooks: list[Hook] = []
    for name in filter(None, names):
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise ImportError(
                f"REALTIME_HOOKS names {name!r}, which cannot be imported ({error}): "
                "give the dotted path of a module on the Python path, e.g. myapp.realtime_hooks"
            ) from error
        collected = hooks_collect(module)
        if not collected:
            logger.warning("hooks module %s marks no function with @hooks.on_connect/on_publish/on_disconnect", name)
        hooks.extend(hook for hook in collected if hook not in hooks)
    for hook in hooks:
        limited = f" for channels {list(hook.channels)}" if hook.channels else ""
        logger.info("hook %s registered as %s%s", hook.name, hook.kind, limited)
    return Hooks(hooks, timeout=timeout)


def info_check(info: object) -> dict[str, Any] | None:
    """``event.info`` as set by an ``on_connect`` hook: None, or a JSON object of at most
    ``MAX_INFO_BYTES``; anything else raises ``ValueError`` saying what to fix."""
    if info is None:
        return None
    if not isinstance(info, Mapping):
        raise ValueError(f"event.info must be a dict (a JSON object), not {type(info).__name__}")
    try:
        size = len(json.dumps(info, separators=(",", ":"), allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"event.info must be JSON-serialisable: {error}") from error
    if size > MAX_INFO_BYTES:
        raise ValueError(f"event.info is {size} bytes of JSON; the limit is {MAX_INFO_BYTES}")
    return dict(info)
