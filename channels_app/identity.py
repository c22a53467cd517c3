"""A channel's identity: the syntax of its id and name, and the rule that no two channels share one.

Clients reach a channel by its id or by its name, and the registry tries ids first, so an id or
name already used as another channel's id or name would hand that channel's subscribers and
pushes to the wrong one. The YAML loader, ``sync_channels``, the HTTP API and the admin all check
with ``identity_collisions``. No Django import: ``config.py`` (imported by the settings) uses it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Channel names and ids appear in URLs and in channel-layer group names, so they use the
# characters both accept: letters, digits, '.', '_' and '-'. "\Z", not "$", which would also
# accept a trailing newline; names made only of dots are path segments ("." and "..") in a URL.
IDENTIFIER_MAX_LENGTH = 100
_IDENTIFIER_CHARACTERS = "[A-Za-z0-9._-]"
IDENTIFIER_PATTERN = re.compile(rf"^(?!\.+\Z){_IDENTIFIER_CHARACTERS}{{1,{IDENTIFIER_MAX_LENGTH}}}\Z")
IDENTIFIER_RULE = f"1 to {IDENTIFIER_MAX_LENGTH} characters from A-Z a-z 0-9 . _ -"
# The OpenAPI document's form (JSON Schema, where "$" ends the text). It does not refuse names
# made only of dots, which the API answers with 400.
IDENTIFIER_JSON_PATTERN = f"^{_IDENTIFIER_CHARACTERS}{{1,{IDENTIFIER_MAX_LENGTH}}}$"


@dataclass(frozen=True)
class ChannelIdentity:
    """A channel's id and name; ``same`` marks the channel being edited, whose old id and name are free."""

    id: str
    name: str
    same: bool = False

    def describe(self) -> str:
        """``channel 'chat-1' (named 'chat')``, or ``channel 'chat'`` when the name is the id."""
        if self.name == self.id:
            return f"channel {self.id!r}"
        return f"channel {self.id!r} (named {self.name!r})"


@dataclass(frozen=True)
class Collision:
    """The candidate's ``field`` ("id" or "name"), ``value``, is already ``other``'s ``other_field``."""

    field: str
    value: str
    other: ChannelIdentity
    other_field: str

    @property
    def message(self) -> str:
        """What collides with which channel, and what to change."""
        return (
            f"The {self.field} {self.value!r} is already the {self.other_field} of {self.other.describe()}: "
            f"choose another {self.field}."
        )


def identity_collisions(candidate: ChannelIdentity, others: Iterable[ChannelIdentity]) -> list[Collision]:
    """Where ``candidate``'s id or name is already one of ``others``' ids or names (in either column).

    A channel may use its own id as its name; entries marked ``same`` are the candidate itself.
    Id collisions come first; each pairs one field of the candidate with one other channel.
    """
    others = [other for other in others if not other.same]
    collisions = []
    for field, value in (("id", candidate.id), ("name", candidate.name)):
        for other in others:
            # An id is named first: it is what the registry resolves the value to.
            if other.id == value:
                collisions.append(Collision(field, value, other, "id"))
            elif other.name == value:
                collisions.append(Collision(field, value, other, "name"))
    return collisions
