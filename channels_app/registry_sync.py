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


class SyncConflict(Exception):
    """YAML channels collide with channels the API or admin created (or with stale YAML channels).

    ``conflicts`` lists one message per colliding channel; the exception's text joins them.
    """

    def __init__(self, message: str, conflicts: list[str] | None = None):
        self.conflicts = conflicts if conflicts is not None else [message]
        super().__init__(message)


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


def _conflicts(specs: tuple[ChannelSpec, ...], existing: dict[str, Channel]) -> list[str]:
    declared = {spec.id: spec for spec in specs}
    by_name = {channel.name: channel for channel in existing.values()}
    conflicts = []
    for spec in specs:
        channel = existing.get(spec.id)
        if channel is not None and channel.source != Channel.Source.YAML:
            conflicts.append(
                f"channels.{spec.name}: the id {spec.id!r} belongs to channel {channel.name!r}, created through "
                f"the {channel.get_source_display()}: change the id in the file, or delete that channel"
            )
        holder = by_name.get(spec.name)
        if holder is None or holder.public_id == spec.id:
            continue
        # A YAML channel the file renames in this same sync frees its name, so the name may be reused.
        if holder.source == Channel.Source.YAML and holder.public_id in declared:
            continue
        if holder.source == Channel.Source.YAML:
            conflicts.append(
                f"channels.{spec.name}: the name {spec.name!r} still belongs to channel id {holder.public_id!r}, "
                "which came from the file but is no longer in it: delete that channel in the admin, "
                "or give this channel another name"
            )
        else:
            conflicts.append(
                f"channels.{spec.name}: the name {spec.name!r} is used by channel {holder.public_id!r}, created "
                f"through the {holder.get_source_display()}: rename the channel in the file, or rename that channel"
            )
    return conflicts


def channels_sync(*, config: RealtimeConfig, prune: bool = False, dry_run: bool = False) -> SyncReport:
    """Upsert the file's channels by id in one transaction; with ``prune``, deactivate YAML
    channels no longer in the file. Channels created through the API or admin are never touched.

    Raises ``SyncConflict`` (and writes nothing) when a file's channel collides with one of those.
    """
    report = SyncReport()
    with transaction.atomic():
        existing = {channel.public_id: channel for channel in Channel.objects.select_for_update()}
        conflicts = _conflicts(config.channels, existing)
        if conflicts:
            count = len(conflicts)
            raise SyncConflict(
                f"{count} channel{'s collide' if count != 1 else ' collides'} with channels already in the registry "
                "(nothing was written):\n" + "\n".join(f"  - {conflict}" for conflict in conflicts),
                conflicts,
            )
        to_create: list[ChannelSpec] = []
        to_update: list[tuple[Channel, dict]] = []
        for spec in config.channels:
            channel = existing.get(spec.id)
            if channel is None:
                report.created.append(spec.name)
                to_create.append(spec)
                continue
            differs = {key: value for key, value in _fields(spec).items() if getattr(channel, key) != value}
            if differs:
                report.updated.append(spec.name)
                to_update.append((channel, differs))
            else:
                report.unchanged.append(spec.name)
        declared_ids = {spec.id for spec in config.channels}
        to_deactivate = []
        if prune:
            to_deactivate = [
                channel
                for channel in existing.values()
                if channel.source == Channel.Source.YAML and channel.active and channel.public_id not in declared_ids
            ]
            report.deactivated.extend(channel.name for channel in to_deactivate)
        if not dry_run:
            _apply(to_create, to_update, to_deactivate)
    return report


def _apply(to_create: list[ChannelSpec], to_update: list[tuple[Channel, dict]], to_deactivate: list[Channel]):
    renamed = [channel for channel, differs in to_update if "name" in differs]
    # Names are unique, so channels swapping or handing over names first step aside under a name
    # no valid channel can have ('~' is not allowed); the transaction hides it from readers.
    for channel in renamed:
        Channel.objects.filter(pk=channel.pk).update(name=f"~{channel.pk}")
    for channel, differs in to_update:
        for key, value in differs.items():
            setattr(channel, key, value)
        channel.save()
    for spec in to_create:
        Channel.objects.create(public_id=spec.id, **_fields(spec))
    for channel in to_deactivate:
        channel.active = False
        channel.save(update_fields=["active", "updated_at"])
