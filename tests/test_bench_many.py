"""``python -m bench --scenario many`` works end to end on a small size (never judges speed).

200 channels with two subscribers each on multiplexed WebSockets, a few seconds of batch publish,
in MEMORY mode and in REDIS mode with two instances: the JSON holds every number the scenario
reports, every subscription received exactly what was published to its channel, and every
process the run started (servers, Redis, load processes) is gone afterwards. The run primes every
channel first (``--many-prime``), and what the priming delivered is not counted again.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # the benchmark starts the service (bench/servers.py)
ROOT = Path(__file__).resolve().parent.parent


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too (its parent, the finished bench run, was not there to reap it).
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_many_scenario_small_loses_nothing_and_stops_everything(tmp_path):
    out = tmp_path / "many.json"
    command = [
        sys.executable, "-m", "bench", "--quick", "--client-procs", "1", "--scenario", "many",
        "--many-channels", "200", "--many-seconds", "3", "--many-rate", "200", "--many-procs", "2",
        "--many-prime", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cases = json.loads(out.read_text())["scenarios"]["many"]["cases"]
    assert [(case["mode"], case["channels"]) for case in cases] == [("memory", 200), ("redis", 200)]
    for case in cases:
        assert case["subscribe"] == {"connections": 2, "subscriptions": 400, "errors": 0, "error_examples": []}
        # --many-prime: one message to each channel first, every one delivered, then counting starts over.
        assert case["prime"]["accepted"] == 200 and case["prime"]["received"] == 400, case["prime"]
        assert case["prime"]["lost"] == 0 and case["prime"]["failures"] == {}
        assert case["publish"]["accepted"] == case["publish"]["sent"] == 600
        assert case["expected"] == 2 * 600 and case["received"] == case["expected"]
        assert case["lost"] == case["extra"] == case["subscriptions_wrong"] == 0
        assert case["targets"]["nothing_lost"] is True
        assert case["latency_ms"]["count"] == case["received"] and case["latency_ms"]["p99"] is not None
        assert case["create_s"] > 0 and case["cpu"]["server_us_per_delivery"] > 0
        assert set(case["rss"]) == {f"{case['mode']}-{i}" for i in range(len(case["rss"]))}
        assert all(gone(pid) for pid in case["pids"].values()), case["pids"]
    redis_case = cases[1]
    # Both instances subscribed every channel in Redis: messages cross instances.
    for instance in redis_case["redis_subscribed"]["per_instance"].values():
        assert instance["sub"] >= 200
    assert redis_case["redis_publish"]["commands"]["publish"] >= 600
    assert redis_case["redis_publish"]["ops_per_message"] > 0
    assert "Many channels" in done.stdout and "Redis work" in done.stdout
