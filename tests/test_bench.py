"""The benchmark suite works end to end (never judges speed): ``python -m bench --quick`` on a
reduced scenario set, in a child process with a bounded timeout, exits 0 and writes its JSON."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--scenario",
            "fanout,sse,push",
            "--subscribers",
            "20",
            "--messages",
            "50",
            "--client-procs",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=85,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert {"meta", "settings", "scenarios"} <= doc.keys()
    assert {"fanout", "sse", "push"} <= doc["scenarios"].keys()
    fanout = doc["scenarios"]["fanout"][0]
    assert fanout["subscribers"] == 20
    assert {"service", "baseline"} <= fanout["results"].keys()
    assert fanout["results"]["service"]["burst"]["received"] > 0
    sse = doc["scenarios"]["sse"]["rows"][0]
    assert {"service", "sse-baseline"} <= sse["results"].keys()
    for result in sse["results"].values():
        assert {"deliveries_per_s", "deliveries_per_server_cpu_s", "latency", "lost"} <= result.keys()
        assert result["received"] > 0
    push = doc["scenarios"]["push"]["rows"][0]["results"]["service"]
    assert push["pushes_accepted"] > 0
    assert "Realtime fan-out benchmark" in done.stdout
