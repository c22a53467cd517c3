"""A parser for the text/event-stream format (the WHATWG rules the server's events follow)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One dispatched event: its type (``message`` by default), data lines joined by newlines, and ``id:``."""

    type: str
    data: str
    id: str | None


class EventParser:
    """Fed one line at a time (without its line ending); returns an event at each blank line that ends one."""

    def __init__(self):
        self._type = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Event | None:
        """Take one line; the completed event, or None."""
        if not line:
            if not self._data:
                self._type = ""
                return None
            event = Event(self._type or "message", "\n".join(self._data), self._id)
            self._type, self._data, self._id = "", [], None
            return event
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None
