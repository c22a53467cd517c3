"""Where the service relies on private parts of daphne, Twisted, uvicorn and autobahn."""
