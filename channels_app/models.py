"""The channel registry's one model, and the lock every change to channel ids and names takes."""

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import connection, models
from django.db.models import Q

from .channel import CHANNEL_FIELDS
from .identity import (
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_PATTERN,
    IDENTIFIER_RULE,
    ChannelIdentity,
    Collision,
    identity_collisions,
)

identifier_validator = RegexValidator(IDENTIFIER_PATTERN, f"Use {IDENTIFIER_RULE}.")

# pg_advisory_xact_lock's key: b"realtime" read as a big-endian integer, used for nothing else.
IDENTITY_LOCK_KEY = 0x7265616C74696D65
# The model field that holds each identity field of ``identity.Collision``.
IDENTITY_FIELDS = {"id": "public_id", "name": "name"}


def lock_identities() -> None:
    """Hold, until the current transaction ends, the lock that creating or renaming a channel takes.

    The database's unique indexes cover each column alone; this serializes the check across both
    columns (``Channel.identity_collisions``) with the write that follows it, across processes.
    """
    if not connection.in_atomic_block:
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [IDENTITY_LOCK_KEY])
        else:
            # SQLite has one writer at a time: a write that changes nothing takes the database's
            # write lock now, before the check reads, and holds it until the commit.
            cursor.execute(f"UPDATE {Channel._meta.db_table} SET id = id WHERE 1 = 0")


class Channel(models.Model):
    """A channel clients subscribe to, declared in YAML or created through the API or admin."""

    class Type(models.TextChoices):
        WS = "WS", "WebSocket"
        SSE = "SSE", "Server-Sent Events"

    class Source(models.TextChoices):
        YAML = "yaml", "YAML file"
        API = "api", "HTTP API"
        ADMIN = "admin", "Admin"

    # Defaults and bounds come from the fields' declaration (channel.py); tests/test_channel.py
    # checks that the model and the declaration agree.
    name = models.CharField(max_length=IDENTIFIER_MAX_LENGTH, unique=True, validators=[identifier_validator])
    public_id = models.CharField(
        "id",
        max_length=IDENTIFIER_MAX_LENGTH,
        unique=True,
        validators=[identifier_validator],
        help_text="The public identifier clients use in URLs.",
    )
    type = models.CharField(max_length=3, choices=Type.choices)
    max_connections = models.PositiveIntegerField(
        "max connections",
        default=CHANNEL_FIELDS["max_connections"].default,
        validators=[MinValueValidator(CHANNEL_FIELDS["max_connections"].minimum)],
    )
    history_size = models.PositiveIntegerField(default=CHANNEL_FIELDS["history_size"].default)
    history_ttl = models.PositiveIntegerField(
        "history TTL (seconds)",
        default=CHANNEL_FIELDS["history_ttl"].default,
        validators=[MinValueValidator(CHANNEL_FIELDS["history_ttl"].minimum)],
    )
    private = models.BooleanField(
        default=CHANNEL_FIELDS["private"].default, help_text="Subscribers need a signed token."
    )
    payload_format = models.CharField(
        max_length=4,
        choices=[(choice, choice) for choice in CHANNEL_FIELDS["payload_format"].choices],
        default=CHANNEL_FIELDS["payload_format"].default,
        help_text="How subscribers receive payloads published as JSON values: as text (a string) or as JSON values.",
    )
    presence = models.BooleanField(
        default=CHANNEL_FIELDS["presence"].default,
        help_text="Track who is connected, and tell subscribers when people join and leave.",
    )
    source = models.CharField(max_length=5, choices=Source.choices, default=Source.ADMIN)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} ({self.public_id})"

    def identity_collisions(self) -> list[Collision]:
        """Where this channel's id or name is already another channel's id or name, in the database."""
        values = {self.public_id, self.name}
        rows = Channel.objects.filter(Q(public_id__in=values) | Q(name__in=values))
        others = [ChannelIdentity(row.public_id, row.name, same=row.pk == self.pk) for row in rows]
        return identity_collisions(ChannelIdentity(self.public_id, self.name), others)

    def validate_unique(self, exclude=None):
        """Refuse an id or name already used as another channel's id or name, on that form field.

        Every ModelForm (the admin's too) and ``full_clean`` get this; the per-column unique checks
        then run for the other fields. In a transaction, the lock is held until it ends.
        """
        exclude = set(exclude or ())
        errors: dict[str, list[str]] = {}
        if not {"public_id", "name"} <= exclude:
            lock_identities()
            for collision in self.identity_collisions():
                field = IDENTITY_FIELDS[collision.field]
                if field not in exclude:
                    errors.setdefault(field, []).append(collision.message)
        try:
            super().validate_unique(exclude=exclude | set(errors))
        except ValidationError as error:
            errors = error.update_error_dict(errors)
        if errors:
            raise ValidationError(errors)
