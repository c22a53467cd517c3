"""What Redis does for the many-channels scenario: subscriptions per instance, commands, bytes.

``pubsub_snapshot`` reads ``PUBSUB NUMPAT`` / ``PUBSUB CHANNELS`` / ``PUBSUB NUMSUB`` and
``CLIENT LIST``, and attributes each Redis client connection to the server process that owns
its socket (through ``/proc/<pid>/fd`` and ``/proc/net/tcp``), so subscriptions are reported per
instance. ``stats`` and ``stats_delta`` turn ``INFO commandstats`` / ``INFO stats`` before and
after a phase into operations and bytes per second and per message.
"""

from __future__ import annotations

import logging
import os

import redis

logger = logging.getLogger(__name__)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _local_ports_to(pid: int, remote_port: int) -> set[int]:
    """Local ports of ``pid``'s TCP connections to ``remote_port`` (IPv4 loopback)."""
    inodes = _socket_inodes(pid)
    ports = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if inode in inodes and int(remote.split(":")[1], 16) == remote_port:
                ports.add(int(local.split(":")[1], 16))
    return ports


def pubsub_snapshot(client: redis.Redis, redis_port: int, instances: dict[str, int]) -> dict:
    """Redis's pub/sub state, with each instance's (name -> pid) connections and subscriptions."""
    channels = client.pubsub_channels()
    sample = channels[:200]
    numsub = dict(client.pubsub_numsub(*sample)) if sample else {}
    owners = {port: name for name, pid in instances.items() for port in _local_ports_to(pid, redis_port)}
    per_instance = {name: {"connections": 0, "subscribed_connections": 0, "sub": 0, "psub": 0} for name in instances}
    for entry in client.client_list():
        port = int(str(entry.get("addr", ":0")).rsplit(":", 1)[1])
        name = owners.get(port)
        if name is None:
            continue
        row = per_instance[name]
        row["connections"] += 1
        sub, psub = int(entry.get("sub", 0)), int(entry.get("psub", 0))
        row["sub"] += sub
        row["psub"] += psub
        row["subscribed_connections"] += 1 if sub or psub else 0
    return {
        "numpat": client.pubsub_numpat(),
        "channels": len(channels),
        "numsub_sample_mean": (sum(numsub.values()) / len(numsub)) if numsub else None,
        "per_instance": per_instance,
        "used_memory": client.info("memory")["used_memory"],
    }


def stats(client: redis.Redis) -> dict:
    """The counters ``stats_delta`` compares: command calls, bytes in and out, the ops gauge."""
    info = client.info("stats")
    commands = {name.removeprefix("cmdstat_"): value["calls"] for name, value in client.info("commandstats").items()}
    return {
        "commands": commands,
        "net_input_bytes": info["total_net_input_bytes"],
        "net_output_bytes": info["total_net_output_bytes"],
        "instantaneous_ops_per_sec": info["instantaneous_ops_per_sec"],
        "total_commands_processed": info["total_commands_processed"],
    }


def stats_delta(before: dict, after: dict, *, seconds: float, messages: int) -> dict:
    """Operations and bytes between two ``stats`` readings, per second and per published message."""
    calls = {
        name: after["commands"].get(name, 0) - before["commands"].get(name, 0)
        for name in after["commands"]
        if after["commands"].get(name, 0) != before["commands"].get(name, 0)
    }
    total = after["total_commands_processed"] - before["total_commands_processed"]
    net_in = after["net_input_bytes"] - before["net_input_bytes"]
    net_out = after["net_output_bytes"] - before["net_output_bytes"]
    per = max(messages, 1)
    return {
        "commands": calls,
        "ops": total,
        "ops_per_s": total / seconds,
        "ops_per_message": total / per,
        "instantaneous_ops_per_sec_end": after["instantaneous_ops_per_sec"],
        "net_in_bytes": net_in,
        "net_out_bytes": net_out,
        "net_in_bytes_per_s": net_in / seconds,
        "net_out_bytes_per_s": net_out / seconds,
        "net_bytes_per_message": (net_in + net_out) / per,
    }
