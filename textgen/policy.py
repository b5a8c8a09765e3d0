"""When training stops and how long its learning-rate schedule is: pure functions of the
progress and the config (nanoGPT's `get_lr` style), so the loop stays readable and each rule is
tested on its own. No TensorFlow here.

* Budget: `--steps`, `--epochs` (10 by default) or `--minutes`, whichever comes first.
* Early stopping: `--patience` validations in a row without a new best.
* Divergence: a loss that is NaN/Inf, or above `DIVERGENCE_FACTOR` x ln(vocab) nats. ln(vocab)
  is what a model that knows nothing scores by guessing uniformly; a model doing twice as badly
  puts on average under 1/vocab^2 on the right character: it has blown up.
* Schedule length under `--minutes`: estimated from the time of the steps taken so far after
  compilation and of the latest validation, re-estimated at every read of the losses (every
  `--log-every` steps), so the cosine decay ends with the budget and not long before it, even when
  the machine speeds up late in a run.
"""

from __future__ import annotations

import math

DIVERGENCE_FACTOR = 2.0
COMPILE_STEPS = 3  # steps of each session that include graph tracing: left out of speed estimates
FIRST_ESTIMATE_AFTER = 20  # steady steps timed before a --minutes budget first sizes the schedule
# The schedule ends at this fraction of the estimated total: a run that turns out a little slower
# than estimated still reaches the end of its decay, a little faster one ends a few steps after it
SCHEDULE_MARGIN = 0.98


def total_steps(steps: int | None, epochs: int | None, windows_per_epoch: int) -> int | None:
    """Steps the step and epoch budgets allow (None when only a time budget is set)."""
    totals = [t for t in (steps, epochs and epochs * windows_per_epoch) if t]
    return min(totals) if totals else None


def budget_reached(step: int, epoch: int, steps: int | None, epochs: int | None,
                   out_of_time: bool) -> bool:
    """Whether training must stop: the step or epoch budget is spent, or the time budget."""
    return bool((steps is not None and step >= steps) or (epochs is not None and epoch >= epochs)
                or out_of_time)


def patience_exhausted(history: list[dict], patience: int | None) -> bool:
    """Early stopping: the last `patience` validations of `history` brought no new best."""
    if not patience or not history:
        return False
    scores = [h["val_bpc"] for h in history]
    best_index = max(i for i, v in enumerate(scores) if v == min(scores))
    return len(scores) - 1 - best_index >= patience


def divergence(loss_nats: float, vocab_size: int) -> str | None:
    """Why a loss means training has diverged, or None."""
    if not math.isfinite(loss_nats):
        return f"is {loss_nats}"
    limit = DIVERGENCE_FACTOR * math.log(max(vocab_size, 2))
    if loss_nats > limit:
        return (f"is {loss_nats:.4g} nats, above {limit:.3g} ({DIVERGENCE_FACTOR:g} x ln {vocab_size}, "
                "twice that of guessing uniformly)")
    return None


def estimated_total_steps(step: int, seconds_per_step: float, validation_seconds: float,
                          eval_every: int, seconds_left: float) -> int:
    """Where a time budget's schedule should end: SCHEDULE_MARGIN x (`step` plus the steps
    `seconds_left` buys, each costing `seconds_per_step` plus its share of a validation every
    `eval_every` steps); never before `step`."""
    per_step = seconds_per_step + validation_seconds / max(eval_every, 1)
    return max(step, int(SCHEDULE_MARGIN * (step + max(seconds_left, 0.0) / max(per_step, 1e-9))))
