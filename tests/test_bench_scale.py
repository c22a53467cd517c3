"""``--scenario scale`` works end to end on a scaled-down run (never judges speed): one process with
event streams, two service processes on Redis with WebSocket subscribers from two source addresses,
every broadcast delivered, every number reported, and every process it started stopped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # the benchmark starts the service (bench/servers.py) and redis-server
ROOT = Path(__file__).resolve().parent.parent


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie counts as gone: it holds no sockets)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.timeout(120)
def test_scale_scenario_fills_two_processes_loses_nothing_and_stops_everything(tmp_path):
    out = tmp_path / "scale.json"
    command = [
        *(sys.executable, "-m", "bench.scale", "--quick", "--parts", "sse,machine"),
        *("--per-process", "100", "--total", "200", "--per-server", "100", "--idle-seconds", "1"),
        *("--json", str(out), "--work-dir", str(tmp_path / "work")),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())

    sse, machine = results["sse"], results["machine"]
    assert (sse["servers"], machine["servers"]) == (1, 2)
    assert results["client_processes"] == 2
    for part, wanted in ((sse, 100), (machine, 200)):
        assert part["connect"]["connected"] == wanted and part["connect"]["refused"] == 0, part["connect"]
        assert part["connect"]["per_s"] > 0
        broadcast = part["broadcast"]
        assert broadcast["received"] == broadcast["expected"] == wanted and broadcast["lost"] == 0, broadcast
        assert broadcast["to_last_delivery_s"] > 0
        assert broadcast["latency"]["p50_ms"] <= broadcast["latency"]["p99_ms"]
        assert part["memory"]["server_bytes_per_connection"] > 0
        assert part["idle"]["seconds"] >= 1 and part["idle"]["server_cores"] >= 0
        assert part["server_log_problems"] == 0, part["server_log_examples"]
        assert part["servers_alive"]
    # One publish to the first process reached the subscribers of the second: REDIS mode spans processes.
    assert machine["broadcast"]["received"] == 200

    targets = [verdict["target"] for verdict in results["verdicts"]]
    assert any("KB per idle connection" in target for target in targets)
    assert any(target.startswith("machine: broadcast to 200") for target in targets)
    assert "PASS" in done.stdout or "FAIL" in done.stdout

    started = [*results["client_pids"], *sse["server_pids"], *machine["server_pids"], *results["redis_pids"]]
    assert len(started) == 2 + 1 + 1 + 2 + 1  # 2 subscriber processes, the publisher, 1 + 2 servers, Redis
    assert all(gone(pid) for pid in started), [pid for pid in started if not gone(pid)]
    assert os.getpid() not in started
