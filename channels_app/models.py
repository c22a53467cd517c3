"""The channel registry's one model."""

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from .config import IDENTIFIER_PATTERN, IDENTIFIER_RULE

identifier_validator = RegexValidator(IDENTIFIER_PATTERN, f"Use {IDENTIFIER_RULE}.")


class Channel(models.Model):
    """A channel clients subscribe to, declared in YAML or created through the API or admin."""

    class Type(models.TextChoices):
        WS = "WS", "WebSocket"
        SSE = "SSE", "Server-Sent Events"

    class Source(models.TextChoices):
        YAML = "yaml", "YAML file"
        API = "api", "HTTP API"
        ADMIN = "admin", "Admin"

    name = models.CharField(max_length=100, unique=True, validators=[identifier_validator])
    public_id = models.CharField(
        "id",
        max_length=100,
        unique=True,
        validators=[identifier_validator],
        help_text="The public identifier clients use in URLs.",
    )
    type = models.CharField(max_length=3, choices=Type.choices)
    max_connections = models.PositiveIntegerField("max connections", default=100, validators=[MinValueValidator(1)])
    history_size = models.PositiveIntegerField(default=100)
    history_ttl = models.PositiveIntegerField("history TTL (seconds)", default=3600, validators=[MinValueValidator(1)])
    private = models.BooleanField(default=False, help_text="Subscribers need a signed token.")
    source = models.CharField(max_length=5, choices=Source.choices, default=Source.ADMIN)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} ({self.public_id})"
