"""CPU and memory of processes and of the machine, read from ``/proc`` (Linux only, no psutil).

CPU is accounted in seconds of user+system time, so ``cpu_seconds / wall_seconds`` is the share
of one core a process used (1.0 = one full core).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_cpu_clock(pid: int) -> int | None:
    """The id of ``pid``'s CPU-time clock (all its threads, nanoseconds), or None where libc has none."""
    libc = _libc()
    if libc is None:
        return None
    clock = ctypes.c_int()
    if libc.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0:
        return None
    return clock.value


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def process_cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of ``pid`` (not its children), or None when it is gone.

    Read from the process's CPU-time clock, to the nanosecond: ``/proc/<pid>/stat`` counts in clock
    ticks (10 ms), which is several percent of a short burst's server time."""
    clock = _process_cpu_clock(pid)
    if clock is not None:
        try:
            return time.clock_gettime(clock)
        except OSError:
            return None
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


# What a fan-out delivery costs the kernel: the send calls, and the event-loop wake-ups around them.
SYSCALL_EVENTS = {
    "all": "raw_syscalls:sys_enter",
    "sendto": "syscalls:sys_enter_sendto",
    "sendmsg": "syscalls:sys_enter_sendmsg",
    "write": "syscalls:sys_enter_write",
    "writev": "syscalls:sys_enter_writev",
    "epoll_wait": "syscalls:sys_enter_epoll_wait",
    "epoll_ctl": "syscalls:sys_enter_epoll_ctl",
    "recvfrom": "syscalls:sys_enter_recvfrom",
    "read": "syscalls:sys_enter_read",
}


class SyscallWindow:
    """System calls made by processes over a window, counted by ``perf stat`` on kernel tracepoints.

    Needs ``perf`` and the right to trace (root, or ``kernel.perf_event_paranoid`` ≤ 1); without them
    ``result`` says why and holds no counts. Counting costs the traced processes little: the kernel
    bumps a counter per call, nothing is recorded.
    """

    def __init__(self, pids: list[int], work_dir: Path):
        self.pids = pids
        self.output = work_dir / f"perf-stat-{os.getpid()}-{time.monotonic_ns()}.csv"
        self.process: subprocess.Popen | None = None
        self.result: dict = {}

    def __enter__(self) -> SyscallWindow:
        perf = shutil.which("perf")
        if perf is None:
            self.result = {"error": "perf is not installed (apt-get install linux-perf)"}
            return self
        events = ",".join(SYSCALL_EVENTS.values())
        self.process = subprocess.Popen(
            [perf, "stat", "-x", ",", "-o", str(self.output), "-e", events, "-p", ",".join(map(str, self.pids))],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.3)  # perf attaches to the processes' threads before it starts counting
        if self.process.poll() is not None:
            self.result = {"error": f"perf stat failed: {self.process.stderr.read().decode().strip()[:300]}"}
            self.process = None
        return self

    def __exit__(self, *exc) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.result = _parse_perf_stat(self.output.read_text() if self.output.exists() else "")
        self.output.unlink(missing_ok=True)


def _parse_perf_stat(text: str) -> dict:
    """Counts by SYSCALL_EVENTS name from ``perf stat -x ,`` output (value, unit, event, ...)."""
    names = {event: name for name, event in SYSCALL_EVENTS.items()}
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) >= 3 and fields[2] in names and fields[0].isdigit():
            counts[names[fields[2]]] = int(fields[0])
    return counts if counts else {"error": "perf stat counted nothing"}


def per_delivery(syscalls: dict, deliveries: int) -> dict | None:
    """Each counted system call per delivery (None without counts or deliveries)."""
    if "error" in syscalls or not deliveries:
        return None
    return {name: round(count / deliveries, 3) for name, count in syscalls.items()}
