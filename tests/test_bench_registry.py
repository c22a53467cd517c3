"""``python -m bench.registry`` works end to end on a tiny registry (never judges speed): in a child process
with a bounded timeout, on PostgreSQL, it creates channels through the API and in bulk, measures each
configuration with real WebSocket connects, prints the table and the targets, and writes its JSON."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import psql

pytestmark = pytest.mark.e2e  # the benchmark starts the service
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_bench_registry_smoke_run(tmp_path):
    if shutil.which("psql") is None or psql("-d", "postgres", "-c", "SELECT 1").returncode != 0:
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    out = tmp_path / "registry.json"
    command = [
        sys.executable, "-m", "bench.registry", "--channels", "400", "--api-channels", "30", "--cache-size", "50",
        "--samples", "12", "--burst", "8", "--unknown", "1", "--json", str(out), "--keep", str(tmp_path / "work"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["channels"] == 400 and report["api_channels"] == 30
    labels = [result["label"] for result in report["results"]]
    # The old registry is measured when its commit is in the clone (a shallow CI clone may lack it).
    assert labels[-2:] == ["this registry, cache above the channel count", "this registry, lazy LRU of 50"], labels
    for result in report["results"]:
        assert result["errors"] == [], result
        assert result["start_up_s"] >= result["listening_s"] > 0
        assert result["rss_start_mib"] > 0 and result["rss_end_mib"] > 0
        assert result["cached_p50_ms"] > 0 and result["uncached_p99_ms"] > 0
        assert result["burst_uncached_p99_ms"] > 0 and result["burst_cached_p99_ms"] > 0
        assert result["unknown_samples"] == 1 and result["unknown_p50_ms"] > 0 and result["unknown_dropped"] == 0
    for line in ("registry at 400 channels", "start-up to first subscriber (s)", "targets (this registry, lazy"):
        assert line in done.stdout, done.stdout
    assert done.stdout.count("PASS") + done.stdout.count("FAIL") == 3
    # The run's database is dropped afterwards.
    leftover = psql("-d", "postgres", "-c", f"SELECT 1 FROM pg_database WHERE datname = '{report['database']}'")
    assert leftover.returncode == 0 and leftover.stdout.strip() == "", leftover
