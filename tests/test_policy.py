"""The trainer's rules as pure functions: budgets, early stopping, divergence, schedule length."""

from __future__ import annotations

import math

import pytest

from textgen.policy import (
    DIVERGENCE_FACTOR,
    SCHEDULE_MARGIN,
    budget_reached,
    divergence,
    estimated_total_steps,
    patience_exhausted,
    total_steps,
)


def test_total_steps_is_the_first_budget_to_end():
    assert total_steps(None, 10, 33) == 330
    assert total_steps(100, 10, 33) == 100
    assert total_steps(1000, 2, 33) == 66
    assert total_steps(None, None, 33) is None


@pytest.mark.parametrize("step, epoch, steps, epochs, out_of_time, reached", [
    (5, 0, 10, None, False, False), (10, 0, 10, None, False, True), (3, 2, None, 2, False, True),
    (3, 1, None, 2, False, False), (3, 0, None, None, True, True), (3, 0, None, None, False, False),
])
def test_budget_reached(step, epoch, steps, epochs, out_of_time, reached):
    assert budget_reached(step, epoch, steps, epochs, out_of_time) is reached


def test_divergence_is_nan_inf_or_twice_uniform_guessing():
    limit = DIVERGENCE_FACTOR * math.log(65)
    assert divergence(1.2, 65) is None and divergence(limit - 1e-6, 65) is None
    assert "above" in divergence(limit + 0.01, 65)
    assert divergence(float("nan"), 65) == "is nan" and divergence(float("inf"), 65) == "is inf"


def test_schedule_estimate_is_the_remaining_time_at_the_steady_speed_with_a_margin():
    # 0.1 s a step, 60 s left at step 120: 600 more steps, of which the margin's share
    assert estimated_total_steps(120, 0.1, 0.0, 200, 60.0) == int(SCHEDULE_MARGIN * 720)
    # a 2 s validation every 20 steps adds 0.1 s a step: half as many steps
    assert estimated_total_steps(120, 0.1, 2.0, 20, 60.0) == int(SCHEDULE_MARGIN * 420)
    assert estimated_total_steps(500, 0.1, 0.0, 10, 0.0) == 500  # out of time: never before now
    assert estimated_total_steps(5, 0.1, 0.0, 10, -3.0) == 5


def test_patience_needs_validations_without_a_new_best():
    history = [{"val_bpc": v} for v in (3.0, 2.0, 2.5)]
    assert not patience_exhausted(history, 2) and patience_exhausted(history, 1)
