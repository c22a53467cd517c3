"""Syncing the YAML file's channels into the registry (``channels_sync``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from .config import ChannelSpec, RealtimeConfig
from .models import Channel


@dataclass
class SyncReport:
    """What a sync did (or, in a dry run, would do), channel names per outcome."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything was (or would be) written."""
        return bool(self.created or self.updated or self.deactivated)


def _fields(spec: ChannelSpec) -> dict:
    return {
        "name": spec.name,
        "type": spec.type,
        "max_connections": spec.max_of_channel_connections,
        "history_size": spec.history_size,
        "history_ttl": spec.history_ttl,
        "private": spec.private,
        "source": Channel.Source.YAML,
        "active": True,
    }


class SyncConflict(Exception):
    """A YAML channel collides with a channel the API or admin created."""


def channels_sync(*, config: RealtimeConfig, prune: bool = False, dry_run: bool = False) -> SyncReport:
    """Upsert the file's channels by id in one transaction; with ``prune``, deactivate YAML
    channels no longer in the file. Channels created through the API or admin are never touched."""
    report = SyncReport()
    with transaction.atomic():
        existing = {channel.public_id: channel for channel in Channel.objects.select_for_update()}
        by_name = {channel.name: channel for channel in existing.values()}
        declared_ids = set()
        for spec in config.channels:
            declared_ids.add(spec.id)
            wanted = _fields(spec)
            channel = existing.get(spec.id)
            holder = by_name.get(spec.name)
            if channel is not None and channel.source != Channel.Source.YAML:
                raise SyncConflict(
                    f"channel id {spec.id!r} (channels.{spec.name}) belongs to a channel created "
                    f"through the {channel.source}: rename the id in the file or delete that channel"
                )
            if holder is not None and holder.public_id != spec.id:
                raise SyncConflict(
                    f"channel name {spec.name!r} is already used by channel {holder.public_id!r}: "
                    "rename the channel in the file, or change that channel's name"
                )
            if channel is None:
                report.created.append(spec.name)
                if not dry_run:
                    Channel.objects.create(public_id=spec.id, **wanted)
                continue
            differs = {key: value for key, value in wanted.items() if getattr(channel, key) != value}
            if not differs:
                report.unchanged.append(spec.name)
                continue
            report.updated.append(spec.name)
            if not dry_run:
                for key, value in differs.items():
                    setattr(channel, key, value)
                channel.save()
        if prune:
            for channel in existing.values():
                if channel.source == Channel.Source.YAML and channel.active and channel.public_id not in declared_ids:
                    report.deactivated.append(channel.name)
                    if not dry_run:
                        channel.active = False
                        channel.save(update_fields=["active", "updated_at"])
    return report
