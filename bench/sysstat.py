"""CPU and memory of processes and of the machine, read from ``/proc`` (Linux only, no psutil).

CPU is accounted in seconds of user+system time, so ``cpu_seconds / wall_seconds`` is the share
of one core a process used (1.0 = one full core).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of ``pid`` (not its children), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: the fields that follow start after its ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over all cores."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass
class CpuWindow:
    """CPU used by named processes (and by everything else on the machine) over a time window."""

    pids: dict[str, int]
    wall_start: float = 0.0
    start: dict[str, float | None] = field(default_factory=dict)
    machine_start: tuple[float, float] = (0.0, 0.0)
    result: dict | None = None

    def __enter__(self) -> CpuWindow:
        self.wall_start = time.monotonic()
        self.start = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}
        self.machine_start = machine_cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> dict:
        """Close the window (once) and return the shares of a core per process."""
        if self.result is not None:
            return self.result
        wall = max(time.monotonic() - self.wall_start, 1e-6)
        busy_end, _ = machine_cpu_seconds()
        per_process: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            before, after = self.start.get(name), process_cpu_seconds(pid)
            per_process[name] = None if before is None or after is None else (after - before) / wall
        ours = sum(v for v in per_process.values() if v is not None)
        machine = (busy_end - self.machine_start[0]) / wall
        self.result = {
            "wall_s": wall,
            "cores": per_process,
            "machine_busy_cores": machine,
            # What other processes (other engineers' tests, the orchestrator) used meanwhile.
            "other_cores": max(machine - ours, 0.0),
        }
        return self.result


def machine_info() -> dict:
    """The machine the numbers were measured on."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gb = None
    try:
        with open("/proc/meminfo") as meminfo:
            memory_gb = round(int(meminfo.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "load_average_1m": os.getloadavg()[0],
    }
