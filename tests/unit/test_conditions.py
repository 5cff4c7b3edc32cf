"""conditions: one entry per type, lastTransitionTime moves only when the status flips."""

from __future__ import annotations

import pytest

from agentfleet.api import Condition
from agentfleet.conditions import get, is_true, set_condition

T0 = "2025-03-14T10:00:00Z"
T1 = "2025-03-14T10:05:00Z"


def _c(type_, status, reason="R", *, ltt=T0, gen=1, message=""):
    return Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=ltt,
                     observed_generation=gen)


def _rows(conditions):
    return [(c.type, c.status, c.reason, c.message, c.last_transition_time, c.observed_generation)
            for c in conditions]


@pytest.mark.parametrize(
    "current, call, expected",
    [
        pytest.param([], ("Ready", "False", "Creating", "creating"),
                     [("Ready", "False", "Creating", "creating", T1, 2)], id="new-on-empty"),
        pytest.param([_c("Ready", "True")], ("Degraded", "False", "AsExpected", ""),
                     [("Ready", "True", "R", "", T0, 1), ("Degraded", "False", "AsExpected", "", T1, 2)],
                     id="new-type-appended"),
        pytest.param([_c("Ready", "True", "Ready")], ("Ready", "True", "Scaling", "1/3 ready"),
                     [("Ready", "True", "Scaling", "1/3 ready", T0, 2)], id="same-status-keeps-time"),
        pytest.param([_c("Ready", "True", "Ready")], ("Ready", "False", "ReplicasNotReady", "0/1"),
                     [("Ready", "False", "ReplicasNotReady", "0/1", T1, 2)], id="flip-moves-time"),
        pytest.param([_c("Ready", "Unknown")], ("Ready", "True", "Ready", ""),
                     [("Ready", "True", "Ready", "", T1, 2)], id="unknown-to-true-moves-time"),
        pytest.param([_c("Ready", "True", ltt=None)], ("Ready", "True", "Ready", ""),
                     [("Ready", "True", "Ready", "", T1, 2)], id="missing-time-filled"),
        pytest.param([_c("Ready", "True"), _c("Progressing", "True"), _c("Degraded", "False")],
                     ("Progressing", "False", "Stable", ""),
                     [("Ready", "True", "R", "", T0, 1), ("Progressing", "False", "Stable", "", T1, 2),
                      ("Degraded", "False", "R", "", T0, 1)], id="middle-updated-order-kept"),
        pytest.param([_c("Exhausted", "False"), _c("Ready", "True")], ("Ready", "True", "Ready", "ok"),
                     [("Exhausted", "False", "R", "", T0, 1), ("Ready", "True", "Ready", "ok", T0, 2)],
                     id="foreign-first-order-kept"),
    ],
)
def test_set_condition(current, call, expected):
    before = _rows(current)
    out = set_condition(current, *call, generation=2, now=T1)

    assert _rows(out) == expected
    assert _rows(current) == before  # the input list is not changed
    assert len({c.type for c in out}) == len(out)


@pytest.mark.parametrize(
    "generation",
    [pytest.param(None, id="none"), pytest.param(1, id="one"), pytest.param(42, id="forty-two")],
)
def test_observed_generation_is_the_one_given(generation):
    out = set_condition([_c("Ready", "True", gen=1)], "Ready", "True", "Ready", "", generation=generation, now=T1)

    assert out[0].observed_generation == generation
    assert out[0].wire().get("observedGeneration") == generation


def test_long_message_is_truncated_to_the_api_limit():
    out = set_condition([], "Ready", "False", "Broken", "x" * 40000, generation=1, now=T0)

    assert len(out[0].message) == 32768


@pytest.mark.parametrize(
    "conditions, type_, found, true",
    [
        pytest.param([], "Ready", None, False, id="empty"),
        pytest.param([_c("Ready", "True", "Ready")], "Ready", "Ready", True, id="true"),
        pytest.param([_c("Ready", "False", "Creating")], "Ready", "Creating", False, id="false"),
        pytest.param([_c("Ready", "Unknown", "Unknown")], "Ready", "Unknown", False, id="unknown"),
        pytest.param([_c("Degraded", "True", "X")], "Ready", None, False, id="other-type"),
    ],
)
def test_get_and_is_true(conditions, type_, found, true):
    c = get(conditions, type_)

    assert (c.reason if c else None) == found
    assert is_true(conditions, type_) is true
