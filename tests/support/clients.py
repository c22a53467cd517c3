"""Small real clients of a test server: connection counts from the preflight, JSON frames, an event-stream reader."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets


def connections(server, channel: str) -> int | None:
    """Live connections on ``channel``, as its preflight reports them (a full channel answers 422 with them);
    None when it answers an error instead (Redis away, say)."""
    body = httpx.get(f"{server.http}/api/v1/channels/{channel}?upgrade=0", timeout=5).json()
    return (body.get("channel") or body).get("connections")


async def connected(server, channel: str) -> int:
    """Live connections on a channel, as the preflight reports them."""
    return await asyncio.to_thread(connections, server, channel)


async def recv_json(ws, within: float = 5) -> dict:
    """The next frame of a ``websockets`` connection, parsed as JSON."""
    return json.loads(await asyncio.wait_for(ws.recv(), within))


async def closed_with(ws) -> tuple[dict | None, int]:
    """Read a ``websockets`` connection up to the server's close: the last JSON frame before it (None if none
    came) and the close code."""
    body = None
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            body = await recv_json(ws)
    return body, closed.value.rcvd.code


async def lines_after_opening(response: httpx.Response):
    """The lines of a streaming event-stream response, from after its ``event: stream-open`` line (the stream is
    subscribed by then)."""
    lines = response.aiter_lines()
    while (await anext(lines)) != "event: stream-open":
        pass
    return lines


class EventStream:
    """Reads an SSE response block by block, as an EventSource would parse it."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self._lines = response.aiter_lines()

    async def block(self, within: float = 5) -> dict:
        """The next block: its fields (``event``, ``id``, ``data``, ``retry``) and comment lines."""
        fields: dict = {"comments": []}
        data: list[str] = []
        while True:
            line = await asyncio.wait_for(anext(self._lines), within)
            if line == "":
                if data:
                    fields["data"] = "\n".join(data)
                if len(fields) > 1 or fields["comments"]:
                    return fields
                continue
            if line.startswith(":"):
                fields["comments"].append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields[name] = value

    async def event(self, name: str | None = None, within: float = 5) -> dict:
        """The next event (skipping keep-alives and the retry hint), optionally checking its name."""
        while True:
            block = await self.block(within)
            if "event" in block or "data" in block:
                assert name is None or block.get("event", "message") == name, block
                return block

    async def message(self, within: float = 5) -> tuple[str, dict]:
        """The next ``message`` event: its id and its parsed data."""
        block = await self.event("message", within)
        return block.get("id"), json.loads(block["data"])


class open_stream:
    """``async with open_stream(url, headers) as (response, events)``: one streaming GET."""

    def __init__(self, url: str, headers: dict | None = None):
        self.url = url
        self.headers = headers or {}

    async def __aenter__(self):
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(10, read=None))
        self.context = self.client.stream("GET", self.url, headers=self.headers)
        response = await self.context.__aenter__()
        return response, EventStream(response)

    async def __aexit__(self, *exc_info):
        await self.context.__aexit__(*exc_info)
        await self.client.aclose()


async def opened(events: EventStream) -> dict:
    """Skip the stream's opening (retry hint, ``stream-open``) and return the ``stream-open`` data."""
    return json.loads((await events.event("stream-open"))["data"])
