"""Decoding and validation: raw record bytes -> a checked event dict and its id, or ``InvalidEvent``.

Schemas are JSON Schema files ``<schemas_dir>/<name>.json``, compiled once by fastjsonschema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from processor.errors import ConfigError, InvalidEvent

Validator = Callable[[Any], Any]

# Reasons, as they appear in DLQ headers and metric labels.
INVALID_JSON = "invalid_json"
SCHEMA_VIOLATION = "schema_violation"
MISSING_EVENT_ID = "missing_event_id"
OVERSIZED = "oversized"


def compile_schema(schemas_dir: Path, name: str) -> Validator:
    """Compile ``<schemas_dir>/<name>.json``; a missing or broken schema is a ConfigError."""
    path = schemas_dir / f"{name}.json"
    try:
        definition = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"schema {name!r}: no file {path}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"schema {name!r}: {path} is not JSON ({exc})") from None
    try:
        validator: Validator = fastjsonschema.compile(definition)
    except fastjsonschema.JsonSchemaDefinitionException as exc:
        raise ConfigError(f"schema {name!r}: {path} is not a valid JSON Schema ({exc})") from None
    return validator


class Decoder:
    """Turns one record into ``(event, event_id)``; every failure is an ``InvalidEvent`` with its reason."""

    def __init__(self, validator: Validator | None, event_id_field: str, max_event_bytes: int) -> None:
        self._validate = validator
        self._id_field = event_id_field
        self._max_bytes = max_event_bytes

    def decode(self, value: bytes | None, headers: Mapping[str, bytes]) -> tuple[dict[str, Any], str]:
        if value is None:
            raise InvalidEvent(INVALID_JSON, "the record has no value")
        if len(value) > self._max_bytes:
            raise InvalidEvent(OVERSIZED, f"{len(value)} bytes > limit {self._max_bytes}")
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(INVALID_JSON, str(exc)) from None
        if not isinstance(event, dict):
            raise InvalidEvent(SCHEMA_VIOLATION, f"expected a JSON object, got {type(event).__name__}")
        # The id first: a missing id is the more precise reason, even where the schema requires the field.
        event_id = self._event_id(event, headers)
        if self._validate is not None:
            try:
                self._validate(event)
            except fastjsonschema.JsonSchemaValueException as exc:
                raise InvalidEvent(SCHEMA_VIOLATION, exc.message) from None
        return event, event_id

    def _event_id(self, event: Mapping[str, Any], headers: Mapping[str, bytes]) -> str:
        # The id is a field of the event, or else a record header of the same name.
        raw = event.get(self._id_field)
        if raw is None and self._id_field in headers:
            raw = headers[self._id_field].decode("utf-8", "replace")
        if raw is None or raw == "" or isinstance(raw, (dict, list, bool)):
            raise InvalidEvent(MISSING_EVENT_ID, f"no usable {self._id_field!r} field or header")
        return str(raw)
