"""Benchmarks of the Realtime service against bare baselines, run on loopback only.

``python -m bench --help`` lists the options. The pieces:

- ``servers``: the service under daphne (or uvicorn), the baseline servers and redis-server, as
  child processes.
- ``baseline``: the bare ``websockets`` broadcast server (``python -m bench.baseline``).
- ``asgi_ws_baseline``, ``sse_baseline``: bare ASGI WebSocket and SSE broadcast apps, run under
  the same server as the service.
- ``clients``: load-client processes (subscribers, a publisher, Django publishers) driven over pipes.
- ``sysstat``: CPU and memory of processes and of the machine, read from ``/proc``.
- ``fanout``: the WebSocket fan-out scenario (burst throughput and fixed-rate latency), also run
  over many channels and over several server processes.
- ``suite``: the other scenarios (sse, memory, push, redis, channels, publish, connect, procs).
- ``report``: the terminal tables, warnings and JSON document.
"""
