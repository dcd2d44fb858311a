"""Tests for ticketlab.steps: reading, resolving and formatting step strings."""

from __future__ import annotations

import pytest

from ticketlab.steps import StepError, format_step, parse_step, to_iterations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1000it", (0, 1000)),
        ("2ep", (2, 0)),
        ("2ep100it", (2, 100)),
        ("0it", (0, 0)),
        ("0ep", (0, 0)),
        (" 3 ep 7 it ", (3, 7)),
        (5, (0, 5)),
        (0, (0, 0)),
    ],
)
def test_parse_step(text, expected):
    assert parse_step(text) == expected


@pytest.mark.parametrize(
    "text",
    ["10 epochs", "-5it", "", "   ", "ep", "it", "100it2ep", "2.5ep", "1e3it", "abc", "2ep-1it", "-5", "²", -1],
)
def test_parse_step_rejects_unreadable(text):
    with pytest.raises(StepError):
        parse_step(text)


def test_parse_step_error_explains_the_format():
    with pytest.raises(StepError, match=r"'10 epochs'.*1000it.*2ep.*2ep100it"):
        parse_step("10 epochs")


def test_step_error_is_a_value_error():
    assert issubclass(StepError, ValueError)


@pytest.mark.parametrize(
    ("text", "per_epoch", "expected"),
    [
        ("2ep100it", 50, 200),
        ("1000it", 7, 1000),
        ("3ep", 390, 1170),
        ("0ep", 390, 0),
        ("1ep1it", 1, 2),
        (25, 10, 25),
    ],
)
def test_to_iterations(text, per_epoch, expected):
    assert to_iterations(text, per_epoch) == expected


@pytest.mark.parametrize("per_epoch", [0, -3])
def test_to_iterations_needs_positive_epoch_length(per_epoch):
    with pytest.raises(StepError, match="iterations_per_epoch"):
        to_iterations("1ep", per_epoch)


def test_to_iterations_propagates_parse_errors():
    with pytest.raises(StepError):
        to_iterations("-5it", 100)


@pytest.mark.parametrize(
    ("iteration", "per_epoch", "expected"),
    [
        (1500, 1000, "1ep500it"),
        (2000, 1000, "2ep"),
        (999, 1000, "999it"),
        (0, 1000, "0it"),
        (7, 1, "7ep"),
    ],
)
def test_format_step(iteration, per_epoch, expected):
    assert format_step(iteration, per_epoch) == expected


def test_format_step_inverts_to_iterations():
    for per_epoch in (1, 7, 10):
        for i in range(0, 40):
            text = format_step(i, per_epoch)
            assert to_iterations(text, per_epoch) == i, text


@pytest.mark.parametrize(("iteration", "per_epoch"), [(10, 0), (10, -2), (-1, 1000)])
def test_format_step_rejects_bad_input(iteration, per_epoch):
    with pytest.raises(StepError):
        format_step(iteration, per_epoch)


@pytest.mark.parametrize("text", ["10", " 1000 ", "0"])
def test_a_step_string_without_unit_is_refused_with_both_spellings(text):
    with pytest.raises(StepError) as err:
        parse_step(text)
    n = int(text)
    assert f"'{n}it'" in str(err.value) and f"'{n}ep'" in str(err.value) and "no unit" in str(err.value)


def test_a_python_int_still_means_iterations():
    assert parse_step(1000) == (0, 1000)
