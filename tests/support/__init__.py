"""Helpers shared by the test modules (and by bench/, which starts the same kinds of processes).

- ``processes``: free ports, the child environment, stopping a child, a child's memory and descriptors;
- ``liveserver`` / ``redisserver``: a real daphne or uvicorn serving the project, a private redis-server;
- ``configs``: the configuration a test server starts with (``memory_config(...)`` and its channels);
- ``waiting``: ``wait_until`` a condition holds, instead of sleeping and hoping;
- ``auth``: the API key the test servers are given;
- ``clients``: small real clients (preflight counts, JSON frames up to a close, an event-stream reader);
- ``wire``: raw WebSocket frames and handshakes (and raw event streams), for what the clients will not send;
- ``hostile``: HTTP requests written byte for byte, and the checks that the server survived them;
- ``fakes``: a connection whose frames are collected, a history that holds its writes until released;
- ``traffic``: steady subscribers and publishers for fault and soak tests;
- ``strategies``: hypothesis strategies for hostile text;
- ``documents``: the code examples of the documentation.
"""
