"""Syncing the YAML file's channels into the registry (``channels_sync``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from ..channel import CHANNEL_FIELDS, model_values
from ..config import ChannelSpec, RealtimeConfig
from ..identity import ChannelIdentity, Collision, identity_collisions
from ..models import Channel, lock_identities

# The fields a channel's keys in the file set; its name is its key under ``channels``.
_YAML_FIELDS = tuple(field for field in CHANNEL_FIELDS.values() if field.yaml)


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
    """The model's fields for a channel declared in the file."""
    declared = {"name": spec.name} | {field.attr: getattr(spec, field.yaml) for field in _YAML_FIELDS}
    return {**model_values(declared), "source": Channel.Source.YAML, "active": True}


def _conflicts(specs: tuple[ChannelSpec, ...], existing: dict[str, Channel]) -> list[str]:
    declared = {spec.id for spec in specs}
    # The file's channels take the file's ids and names (the loader checked those against each other,
    # so renames and hand-overs within one sync are allowed); every other channel keeps its own.
    holders = {
        ChannelIdentity(channel.public_id, channel.name): channel
        for channel in existing.values()
        if not (channel.source == Channel.Source.YAML and channel.public_id in declared)
    }
    return [
        f"channels.{spec.name}: {_conflict(collision, holders[collision.other])}"
        for spec in specs
        for collision in identity_collisions(ChannelIdentity(spec.id, spec.name), holders)
    ]


# What a file channel's id or name is to the channel holding it, and how to free it there.
_HELD_AS = {
    ("id", "id"): ("belongs to channel {name!r}", "delete that channel"),
    ("id", "name"): ("is the name of channel {id!r}", "rename that channel"),
    ("name", "id"): ("is the id of channel {name!r}", "delete that channel"),
    ("name", "name"): ("is used by channel {id!r}", "rename that channel"),
}
_CHANGE_IN_FILE = {"id": "change the id in the file", "name": "rename the channel in the file"}


def _conflict(collision: Collision, holder: Channel) -> str:
    what = f"the {collision.field} {collision.value!r}"
    if holder.source == Channel.Source.YAML:
        # Declared channels are not holders, so this one came from the file but is no longer in it.
        as_its = "" if collision.field == collision.other_field else f" as its {collision.other_field}"
        return (
            f"{what} still belongs to channel id {holder.public_id!r}{as_its}, which came from the file but is "
            f"no longer in it: delete that channel in the admin, or {_CHANGE_IN_FILE[collision.field]}"
        )
    held_as, free_it = _HELD_AS[collision.field, collision.other_field]
    return (
        f"{what} {held_as.format(id=holder.public_id, name=holder.name)}, created through the "
        f"{holder.get_source_display()}: {_CHANGE_IN_FILE[collision.field]}, or {free_it}"
    )


def channels_sync(*, config: RealtimeConfig, prune: bool = False, dry_run: bool = False) -> SyncReport:
    """Upsert the file's channels by id in one transaction; with ``prune``, deactivate YAML
    channels no longer in the file. Channels created through the API or admin are never touched.

    Raises ``SyncConflict`` (and writes nothing) when a file's channel collides with one of those.
    """
    report = SyncReport()
    with transaction.atomic():
        lock_identities()
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
        Channel.objects.create(**_fields(spec))
    for channel in to_deactivate:
        channel.active = False
        channel.save(update_fields=["active", "updated_at"])
