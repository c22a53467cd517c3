"""The declaration of a channel's fields (channels_app/channel.py) and the model it must agree with."""

from __future__ import annotations

import dataclasses

import pytest
from django.core.validators import MinValueValidator
from django.db import models

from channels_app.channel import CHANNEL_FIELDS, DESCRIPTION, PREFLIGHT_DESCRIPTION, ChannelInfo
from channels_app.config import CHANNEL_KEYS, SERVER_KEYS, ChannelSpec
from channels_app.core.channel_services import ChannelDraft
from channels_app.identity import IDENTIFIER_MAX_LENGTH
from channels_app.models import Channel, identifier_validator

# The registry's own bookkeeping, not fields of a channel.
REGISTRY_ONLY = {"id", "active", "created_at", "updated_at"}
MODEL_FIELDS = [field for field in CHANNEL_FIELDS.values() if field.model != "pk"]
MODEL_CLASSES = {"identifier": models.CharField, "choice": models.CharField, "int": models.PositiveIntegerField}
MODEL_CLASSES["bool"] = models.BooleanField


def test_the_model_has_a_column_for_every_declared_field_and_no_other():
    columns = {field.name for field in Channel._meta.concrete_fields} - REGISTRY_ONLY
    assert columns == {field.model for field in MODEL_FIELDS}


@pytest.mark.parametrize("declared", MODEL_FIELDS, ids=[field.attr for field in MODEL_FIELDS])
def test_the_model_field_agrees_with_its_declaration(declared):
    field = Channel._meta.get_field(declared.model)
    assert type(field) is MODEL_CLASSES[declared.kind]
    if declared.kind == "identifier":
        assert field.max_length == IDENTIFIER_MAX_LENGTH
        assert identifier_validator in field.validators
    if declared.kind == "choice":
        assert [value for value, _ in field.choices] == list(declared.choices)
        assert field.max_length == max(map(len, declared.choices))
    if declared.kind == "int":
        # PositiveIntegerField refuses negative numbers by itself.
        bounds = [validator.limit_value for validator in field.validators if isinstance(validator, MinValueValidator)]
        assert max(bounds, default=0) == declared.minimum
    if declared.required or declared.defaults_to:
        assert not field.has_default()
    else:
        assert field.get_default() == declared.default


@pytest.mark.parametrize("declared", [field for field in CHANNEL_FIELDS.values() if field.inherited])
def test_an_inherited_default_is_the_server_keys_default(declared):
    assert declared.default == next(key.default for key in SERVER_KEYS if key.name == declared.yaml)


def test_from_model_copies_every_field():
    row = Channel(
        pk=7,
        public_id="chat-1",
        name="chat",
        type="SSE",
        max_connections=3,
        history_size=4,
        history_ttl=5,
        private=True,
        payload_format="json",
        presence=True,
    )
    row.source = Channel.Source.YAML
    assert ChannelInfo.from_model(row) == ChannelInfo("chat-1", "chat", "SSE", 3, 4, 5, True, "json", True, "yaml", 7)


def test_the_views_of_a_channel_take_their_fields_from_the_declaration():
    assert [key.name for key in CHANNEL_KEYS] == [field.yaml for field in CHANNEL_FIELDS.values() if field.yaml]
    assert [spec.name for spec in dataclasses.fields(ChannelSpec)] == ["name", *(key.name for key in CHANNEL_KEYS)]
    # A draft takes the Go service's body fields first: id, type, maxOfChannelConnections.
    assert [draft.name for draft in dataclasses.fields(ChannelDraft)] == [
        "id",
        "type",
        "max_connections",
        "name",
        "history_size",
        "history_ttl",
        "private",
        "payload_format",
        "presence",
    ]
    # Both descriptions open alike, the Go service's fields first.
    opening = ["id", "name", "type", "connections", "max", "maxOfChannelConnections"]
    assert [key for key, _ in DESCRIPTION] == [
        *opening,
        "historySize",
        "historyTtl",
        "private",
        "payloadFormat",
        "presence",
        "source",
    ]
    assert [key for key, _ in PREFLIGHT_DESCRIPTION] == [*opening, "private", "payloadFormat", "presence"]
