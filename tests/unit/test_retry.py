from __future__ import annotations

import random

import pytest

from processor.errors import (
    ConfigError,
    DependencyUnavailable,
    FatalError,
    InvalidEvent,
    ProcessorError,
    RetryableError,
)
from processor.topology.retry import Retry, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5), (" 2s ", 2.0), ("0ms", 0.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "10 s", "10sec", "-1s", "1d", "1.s", "ten s", "5M"])
def test_parse_duration_rejects_bad_strings(text: str) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (10.0, "10s"), (120.0, "2m"), (3600.0, "1h"), (90.0, "90s"), (1.5, "1500ms"), (7200, "2h")],
)
def test_format_duration_is_the_shortest_exact_spelling(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_tier_names_are_normalised_durations() -> None:
    retry = Retry(delays=("1000ms", "60s", "90m"))
    assert retry.tier_names() == ("1s", "1m", "90m")


def test_duplicate_tier_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match="same tier twice"):
        Retry(delays=("1s", "1000ms"))


@pytest.mark.parametrize("delays", [("0s",), ("1s", "0ms"), ("soon",)])
def test_non_positive_or_bad_delays_are_rejected(delays: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        Retry(delays=delays)


@pytest.mark.parametrize("jitter", [-0.1, 1.0, 1.5])
def test_jitter_out_of_range_is_rejected(jitter: float) -> None:
    with pytest.raises(ConfigError, match="jitter"):
        Retry(jitter=jitter)


def test_exponential_doubles_until_the_cap_and_merges_repeats() -> None:
    retry = Retry.exponential(base="1s", factor=2, cap="5s", tiers=6, jitter=0.0)
    assert retry.delays == ("1s", "2s", "4s", "5s")
    assert retry.tier_names() == ("1s", "2s", "4s", "5s")


def test_exponential_without_cap_reached() -> None:
    retry = Retry.exponential(base="500ms", factor=3, cap="1h", tiers=3, jitter=0.1)
    assert retry.delays == ("500ms", "1500ms", "4500ms")
    assert retry.jitter == 0.1


def test_exponential_with_factor_one_is_a_single_tier() -> None:
    assert Retry.exponential(base="2s", factor=1, tiers=4, jitter=0.0).delays == ("2s",)


@pytest.mark.parametrize(("factor", "tiers"), [(0.5, 3), (2.0, 0)])
def test_exponential_rejects_bad_arguments(factor: float, tiers: int) -> None:
    with pytest.raises(ConfigError):
        Retry.exponential(factor=factor, tiers=tiers)


def test_delay_without_jitter_is_exact() -> None:
    retry = Retry(delays=("1s", "10s"))
    assert retry.delay_seconds(0) == 1.0
    assert retry.delay_seconds(1) == 10.0


def test_jitter_stays_within_bounds_and_spreads() -> None:
    retry = Retry(delays=("10s",), jitter=0.2)
    rng = random.Random(1234)
    delays = [retry.delay_seconds(0, rng) for _ in range(500)]
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert min(delays) < 8.5
    assert max(delays) > 11.5


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    retry = Retry(delays=("1s", "10s"), jitter=0.5)
    first = [retry.delay_seconds(1, random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    assert first[0] != 10.0


def test_default_policy_retries_plain_exceptions() -> None:
    retry = Retry()
    assert retry.is_retryable(ValueError("x"))
    assert retry.is_retryable(TimeoutError())


def test_processor_errors_decide_by_their_retryable_flag() -> None:
    retry = Retry()
    assert retry.is_retryable(RetryableError("x"))
    assert retry.is_retryable(DependencyUnavailable("x"))
    assert not retry.is_retryable(FatalError("x"))
    assert not retry.is_retryable(InvalidEvent("schema_violation"))
    assert not retry.is_retryable(ProcessorError("x"))


def test_custom_retry_on_limits_plain_exceptions_but_not_processor_errors() -> None:
    retry = Retry(retry_on=(TimeoutError, ConnectionError))
    assert retry.is_retryable(TimeoutError())
    assert retry.is_retryable(ConnectionResetError())  # a subclass
    assert not retry.is_retryable(ValueError("x"))
    assert not retry.is_retryable(KeyError("x"))
    assert retry.is_retryable(RetryableError("x"))  # not in retry_on, but retryable by itself


def test_retry_on_naming_a_fatal_error_does_not_make_it_retryable() -> None:
    retry = Retry(retry_on=(FatalError,))
    assert not retry.is_retryable(FatalError("x"))
