from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from processor.errors import ConfigError, FatalError, InvalidEvent
from processor.runtime.decode import (
    INVALID_JSON,
    MISSING_EVENT_ID,
    OVERSIZED,
    SCHEMA_VIOLATION,
    Decoder,
    compile_schema,
)

SCHEMA = {
    "type": "object",
    "required": ["event_id", "amount"],
    "properties": {"event_id": {"type": "string"}, "amount": {"type": "integer", "minimum": 0}},
}


@pytest.fixture
def decoder(tmp_path: Path) -> Decoder:
    (tmp_path / "order.json").write_bytes(orjson.dumps(SCHEMA))
    return Decoder(compile_schema(tmp_path, "order"), "event_id", max_event_bytes=200)


def reason_of(decoder: Decoder, value: bytes | None, headers: dict[str, bytes] | None = None) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as err:
        decoder.decode(value, headers or {})
    return err.value


def test_valid_event_returns_event_and_id(decoder: Decoder) -> None:
    event, event_id = decoder.decode(b'{"event_id": "e-1", "amount": 5}', {})
    assert event == {"event_id": "e-1", "amount": 5}
    assert event_id == "e-1"


def test_numeric_id_is_returned_as_text() -> None:
    event, event_id = Decoder(None, "id", 100).decode(b'{"id": 42}', {})
    assert event_id == "42"
    assert event == {"id": 42}


def test_invalid_json(decoder: Decoder) -> None:
    err = reason_of(decoder, b'{"event_id": ')
    assert err.reason == INVALID_JSON
    assert isinstance(err, FatalError)
    assert not err.retryable


def test_no_value_is_invalid_json(decoder: Decoder) -> None:
    assert reason_of(decoder, None).reason == INVALID_JSON


@pytest.mark.parametrize("value", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_non_object_json_is_a_schema_violation(value: bytes) -> None:
    err = reason_of(Decoder(None, "event_id", 100), value)
    assert err.reason == SCHEMA_VIOLATION
    assert "expected a JSON object" in err.detail


def test_missing_id_wins_over_the_schema_requiring_it(decoder: Decoder) -> None:
    err = reason_of(decoder, b'{"amount": 5}')
    assert err.reason == MISSING_EVENT_ID
    assert "event_id" in err.detail


@pytest.mark.parametrize("raw_id", ['""', "null", "{}", "[]", "true"])
def test_unusable_id_values_are_missing(raw_id: str) -> None:
    err = reason_of(Decoder(None, "event_id", 100), f'{{"event_id": {raw_id}}}'.encode())
    assert err.reason == MISSING_EVENT_ID


def test_id_taken_from_a_header_when_the_field_is_absent() -> None:
    decoder = Decoder(None, "event_id", 100)
    event, event_id = decoder.decode(b'{"amount": 5}', {"event_id": b"from-header"})
    assert event_id == "from-header"
    assert event == {"amount": 5}


def test_field_wins_over_header() -> None:
    _, event_id = Decoder(None, "event_id", 100).decode(b'{"event_id": "f"}', {"event_id": b"h"})
    assert event_id == "f"


def test_empty_header_is_missing() -> None:
    err = reason_of(Decoder(None, "event_id", 100), b"{}", {"event_id": b""})
    assert err.reason == MISSING_EVENT_ID


def test_oversized_is_checked_against_the_limit(decoder: Decoder) -> None:
    small = orjson.dumps({"event_id": "e", "amount": 1, "pad": "x" * 150})
    assert len(small) <= 200
    decoder.decode(small, {})
    big = orjson.dumps({"event_id": "e", "amount": 1, "pad": "x" * 200})
    err = reason_of(decoder, big)
    assert err.reason == OVERSIZED
    assert f"{len(big)} bytes > limit 200" in err.detail


def test_oversized_is_reported_before_parsing() -> None:
    err = reason_of(Decoder(None, "event_id", 10), b"not json at all")
    assert err.reason == OVERSIZED


def test_schema_violation_carries_the_validator_message(decoder: Decoder) -> None:
    err = reason_of(decoder, b'{"event_id": "e", "amount": -3}')
    assert err.reason == SCHEMA_VIOLATION
    assert err.detail == "data.amount must be bigger than or equal to 0"
    assert str(err).startswith("schema_violation: ")


def test_schema_violation_for_a_missing_required_field(decoder: Decoder) -> None:
    err = reason_of(decoder, b'{"event_id": "e"}')
    assert err.reason == SCHEMA_VIOLATION
    assert "amount" in err.detail


def test_compile_schema_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="schema 'nope': no file"):
        compile_schema(tmp_path, "nope")


def test_compile_schema_bad_json(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        compile_schema(tmp_path, "broken")


def test_compile_schema_bad_schema(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"type": "no-such-type"}')
    with pytest.raises(ConfigError, match="is not a valid JSON Schema"):
        compile_schema(tmp_path, "bad")


def test_compiled_schema_validates(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_bytes(orjson.dumps(SCHEMA))
    validate = compile_schema(tmp_path, "s")
    validate({"event_id": "a", "amount": 1})
    with pytest.raises(Exception, match="amount"):
        validate({"event_id": "a"})
