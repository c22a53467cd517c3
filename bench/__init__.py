"""Benchmarks of the Realtime service against bare baselines, run on loopback only.

``python -m bench --help`` lists the options. The pieces:

- ``servers``: the service under daphne and the baseline servers, as child processes.
- ``baseline``: the bare ``websockets`` broadcast server (``python -m bench.baseline``).
- ``clients``: load-client processes (subscribers and a publisher) driven over pipes.
- ``sysstat``: CPU and memory of processes and of the machine, read from ``/proc``.
- ``fanout``: the WebSocket fan-out scenario (burst throughput and fixed-rate latency).
- ``report``: the terminal table, warnings and JSON document.
"""
