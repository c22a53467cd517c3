"""Running the runtime's hooks (``channels_app/hooks.py``) on the realtime path, with the failure policy
of docs/hooks.md: each call has ``REALTIME_HOOK_TIMEOUT_SECONDS``; a ``Reject`` refuses with its code;
any other error, an overrun or a bad return value refuses with ``hook_failed`` (4500 / HTTP 500), is
logged here and counted, and never reaches the client as more than its code.

A hook runs in the task of the connection it decides about (a sync one in a thread), so a slow hook
delays that connection only.
"""

from __future__ import annotations

import asyncio
import logging

from ..channel import ChannelInfo
from ..errors import ApplicationError
from ..hooks import (
    ON_CONNECT,
    ON_DISCONNECT,
    ON_PUBLISH,
    ConnectEvent,
    DisconnectEvent,
    Hook,
    HookFailure,
    PublishEvent,
    Reject,
    info_check,
)
from ..jsoncodec import frame_payload
from ..messages import JSON, TEXT
from ..tokens import TokenClaims
from .runtime import Runtime

logger = logging.getLogger(__name__)

CLOSE_HOOK_FAILED = 4500
STATUS_HOOK_FAILED = 500
_ACTIONS = {ON_CONNECT: "admit this connection", ON_PUBLISH: "publish this message"}


def hook_rejected(reject: Reject) -> ApplicationError:
    """A hook refused: its code and reason, for a close frame, an error frame or an HTTP answer."""
    return ApplicationError("hook_rejected", reject.reason, status=reject.status, close_code=reject.code)


def hook_failed(kind: str, reason: str) -> ApplicationError:
    """A hook raised, overran its timeout or answered something invalid (500 / 4500)."""
    return ApplicationError(
        "hook_failed",
        f"The server could not decide whether to {_ACTIONS.get(kind, 'go on')} (a hook failed): try again later.",
        status=STATUS_HOOK_FAILED,
        close_code=CLOSE_HOOK_FAILED,
        extra={"hook": kind, "reason": reason},
    )


def _failure(runtime: Runtime, hook: Hook, reason: str) -> ApplicationError:
    runtime.stats.incr(f"hook_failures_{hook.metric_label}:{reason}")
    return hook_failed(hook.kind, reason)


async def _call(hook: Hook, event, runtime: Runtime):
    """Run one hook on ``event``; raise ``ApplicationError`` for a rejection or a failure."""
    function = runtime.hooks.awaitable(hook)
    timeout = hook.timeout or runtime.hooks.timeout
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await function(event)
    except Reject as reject:
        runtime.stats.incr(f"hook_rejections_{hook.metric_label}")
        logger.info("hook %s refused client %s on channel %s: %s", hook.name, event.client_id, event.channel.id, reject)
        raise hook_rejected(reject) from None
    except HookFailure as failure:
        logger.error("hook %s failed on channel %s: %s", hook.name, event.channel.id, failure)
        raise _failure(runtime, hook, failure.reason) from None
    except Exception:
        if deadline.expired():
            setting = "server.hooks.timeout" if hook.label else "REALTIME_HOOK_TIMEOUT_SECONDS"
            logger.error("hook %s overran its %gs timeout (%s)", hook.name, timeout, setting)
            raise _failure(runtime, hook, "timeout") from None
        logger.exception("hook %s failed on channel %s", hook.name, event.channel.id)
        raise _failure(runtime, hook, "error") from None


async def connect_hooks_run(
    *,
    channel: ChannelInfo,
    client_id: str,
    transport: str,
    token_claims: TokenClaims | None,
    headers,
    runtime: Runtime,
) -> dict | None:
    """Run the ``on_connect`` hooks of ``channel``; the ``info`` they set (None: none)."""
    event = ConnectEvent(channel, client_id, transport, token_claims, headers or ())
    for hook in runtime.hooks.matching(ON_CONNECT, channel):
        await _call(hook, event, runtime)
        try:
            event.info = info_check(event.info)
        except ValueError as error:
            logger.error("hook %s set an invalid event.info: %s", hook.name, error)
            raise _failure(runtime, hook, "error") from None
    return event.info


async def publish_hooks_run(
    *,
    hooks: tuple[Hook, ...],
    channel: ChannelInfo,
    client_id: str,
    frame: str,
    published: tuple[str, str],
    payload_format: str,
    token_claims: TokenClaims | None,
    info: dict | None,
    runtime: Runtime,
) -> tuple[str, str]:
    """Run ``on_publish`` hooks on a WebSocket frame (``published``: the payload and kind it makes);
    the payload and kind to publish: unchanged, or a hook's replacement checked like a client's frame."""
    event = PublishEvent(channel, client_id, frame, payload_format, token_claims, info)
    for hook in hooks:
        replacement = await _call(hook, event, runtime)
        if replacement is None:
            continue
        if not isinstance(replacement, str):
            logger.error("hook %s returned %s: return None or a str", hook.name, type(replacement).__name__)
            raise _failure(runtime, hook, "error")
        try:
            published = _frame_check(replacement, payload_format, runtime)
        except ApplicationError as error:
            logger.error("hook %s returned a payload a client could not send: %s", hook.name, error.message)
            raise _failure(runtime, hook, "error") from None
        event.payload = replacement
    return published


def _frame_check(frame: str, payload_format: str, runtime: Runtime) -> tuple[str, str]:
    """The payload and kind of a frame, refused as a client's frame would be (size, JSON)."""
    try:
        size = len(frame.encode("utf-8"))
    except UnicodeEncodeError:
        raise ApplicationError("bad_request", "the payload holds a lone surrogate") from None
    if size > runtime.server.max_message_size:
        raise ApplicationError("payload_too_large", f"{size} bytes, over server.max_message_size")
    if payload_format == JSON:
        return frame_payload(frame)
    return frame, TEXT


def disconnect_hooks_start(
    *, channel: ChannelInfo, client_id: str, transport: str, info: dict | None, runtime: Runtime
) -> None:
    """Run the ``on_disconnect`` hooks of ``channel`` in a task of their own: nothing waits for them
    but a draining instance (bounded by its grace period)."""
    hooks = runtime.hooks.matching(ON_DISCONNECT, channel)
    if not hooks:
        return
    task = asyncio.create_task(_disconnect(hooks, DisconnectEvent(channel, client_id, transport, info), runtime))
    running = runtime.hooks.running
    running.add(task)
    task.add_done_callback(running.discard)


async def _disconnect(hooks: tuple[Hook, ...], event: DisconnectEvent, runtime: Runtime) -> None:
    with runtime.in_flight:
        for hook in hooks:
            try:
                await _call(hook, event, runtime)
            except ApplicationError:
                pass  # logged and counted by _call; a rejection means nothing once the client has gone
