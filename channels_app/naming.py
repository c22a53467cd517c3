"""Validated names: channel-layer group names and client ids.

The Redis channel layers do not check names, so every group name is built here.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from .errors import bad_request
from .identity import IDENTIFIER_PATTERN, IDENTIFIER_RULE

GROUP_PREFIX = "realtime.ch."
HUB_CHANNEL_PREFIX = "realtime-hub"
# Every hub joins this group to hear that the channel registry changed.
REGISTRY_GROUP = "realtime.registry"
# Channels allows group names shorter than 100 characters.
MAX_GROUP_NAME_LENGTH = 99
# "\Z", not "$", which would also accept a trailing newline.
CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@-]{1,128}\Z")
# The OpenAPI document's form (JSON Schema, where "$" ends the text).
CLIENT_ID_JSON_PATTERN = CLIENT_ID_PATTERN.pattern.removesuffix("\\Z") + "$"
SERVER_CLIENT_ID = "server-message"


def channel_group(channel_id: str) -> str:
    """The channel-layer group that carries messages for ``channel_id``.

    Django code may ``group_send`` to this group directly (see docs/protocol.md). Ids too long
    for a group name are hashed, so the result is always a valid name below 100 characters.
    """
    if not isinstance(channel_id, str) or not IDENTIFIER_PATTERN.match(channel_id):
        raise ValueError(f"{channel_id!r} is not a channel id: ids use {IDENTIFIER_RULE}")
    name = GROUP_PREFIX + channel_id
    if len(name) <= MAX_GROUP_NAME_LENGTH:
        return name
    return GROUP_PREFIX + "h." + hashlib.sha256(channel_id.encode()).hexdigest()


def client_id_parse(raw: str | None) -> str:
    """Return the client's id from the query, or a new one when absent; refuse malformed ids."""
    if raw is None:
        return f"client-{uuid.uuid4().hex}"
    if not CLIENT_ID_PATTERN.match(raw):
        raise bad_request(
            "clientId must be 1 to 128 characters from A-Z a-z 0-9 . _ : @ -",
            field="clientId",
        )
    if raw == SERVER_CLIENT_ID:
        raise bad_request(f"clientId {SERVER_CLIENT_ID!r} is reserved for server pushes", field="clientId")
    return raw
