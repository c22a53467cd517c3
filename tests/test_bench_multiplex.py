"""The ``multiplex`` benchmark scenario works end to end on tiny sizes (it never judges speed):
``python -m bench --quick --scenario multiplex`` in a child process exits 0, writes every number the
closing note reports, loses no message on one-channel or multiplexed connections (WebSocket and
SSE, MEMORY and REDIS), and the churn leaves the channels' counts, the hub's subscriptions and the
Redis layer's group memberships where they started."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # the benchmark starts the service and a redis-server (bench/servers.py)
ROOT = Path(__file__).resolve().parent.parent
SUBSCRIBERS = 10
GROUPS = {"single", "mux-one", "mux-spread"}


def run_scenario(tmp_path) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "bench", "--quick", "--scenario", "multiplex", "--client-procs", "1"]
    command += ["--subscribers", str(SUBSCRIBERS), "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())["scenarios"]["multiplex"], done.stdout


def test_multiplex_scenario_delivers_everything_and_churn_returns_to_start(tmp_path):
    result, stdout = run_scenario(tmp_path)
    assert "error" not in result, result.get("error")
    assert (result["subscribers"], result["channels_per_connection"], result["limit"]) == (SUBSCRIBERS, 4, 1.10)

    rows = result["rows"]
    assert {(row["driver"], row["layer"], row["transport"]) for row in rows} == {
        ("memory", None, "ws"),
        ("memory", None, "sse"),
        ("redis", "pubsub", "ws"),
        ("redis", "pubsub", "sse"),
    }
    for row in rows:
        where = f"{row['driver']} {row['transport']}"
        assert row["connected"] == dict.fromkeys(GROUPS, SUBSCRIBERS), where
        assert set(row["groups"]) == GROUPS
        for group, numbers in row["groups"].items():
            assert numbers["subscribers"] == SUBSCRIBERS, (where, group)
            assert numbers["received"] == numbers["expected"] > 0, (where, group)
            assert numbers["lost"] == 0 and numbers["other_frames"] == 0, (where, group)
            assert numbers["close_codes"] == {}, (where, group)
            assert len(numbers["rounds"]) == 1
        for group in ("mux-one", "mux-spread"):
            ratio = row["ratios"][group]
            assert {"cost_ratio", "round_ratios", "verdict"} <= ratio.keys()
            # Tiny bursts may take under one /proc clock tick of server CPU: then there is no ratio.
            if ratio["cost_ratio"] is not None:
                assert ratio["verdict"] == ("PASS" if ratio["cost_ratio"] <= 1.10 else "FAIL")

    churns = {churn["driver"]: churn for churn in result["churn"]}
    assert set(churns) == {"memory", "redis"}
    for driver, churn in churns.items():
        assert churn["cycles"] == 300 and churn["refused"] == {}, driver
        before, after = churn["before"], churn["after"]
        # Two channels have a one-channel holder, two are empty; the churn socket follows none at the end.
        for snapshot in (before, after):
            assert list(snapshot["channel_counts"].values()) == [1, 1, 0, 0], driver
            assert list(snapshot["hub_subscriptions"].values()) == [1, 1, 0, 0], driver
            assert snapshot["rss_bytes"] > 0
        assert churn["returned"] is True
        assert churn["cycles_per_s"] > 0
    assert churns["memory"]["before"]["layer_group_members"] is None
    for snapshot in (churns["redis"]["before"], churns["redis"]["after"]):
        assert list(snapshot["layer_group_members"].values()) == [1, 1, 0, 0]

    assert "Multiplexing: cost per delivery" in stdout
    assert "subscribe + unsubscribe churn" in stdout
