"""The subscriber endpoints: WebSocket consumer, event stream, ASGI routing."""
