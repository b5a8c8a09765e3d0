"""Where a run stands: the `Progress` record saved in every checkpoint's state.json, and the
checks a saved one must pass before a run resumes from it (it is read from disk, so it is
validated field by field rather than trusted)."""

from __future__ import annotations

from dataclasses import dataclass, field

from textgen import checkpoint as ckpt


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint's state.json."""

    step: int = 0
    epoch: int = 0
    window: int = 0  # next window of the current epoch
    elapsed: float = 0.0  # seconds of training over all sessions
    best_val_bpc: float | None = None
    best_checkpoint: str | None = None
    schedule_steps: int = 0  # length of the learning-rate schedule, once known
    history: list = field(default_factory=list)  # [{"step", "epoch", "train_loss", "val_bpc"}]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def progress_problem(progress, num_windows: int) -> str | None:
    """Why a checkpoint's saved progress cannot be resumed, or None."""
    if not isinstance(progress, dict):
        return "progress is not a JSON object"
    unknown = set(progress) - set(Progress.__dataclass_fields__)
    if unknown:
        return f"unknown progress field(s) {', '.join(sorted(unknown))}"
    for key in ("step", "epoch", "window", "schedule_steps"):
        if not _is_int(progress.get(key, 0)):
            return f"progress.{key} is not a non-negative integer"
    if not _is_number(progress.get("elapsed", 0.0)):
        return "progress.elapsed is not a number"
    if progress.get("best_val_bpc") is not None and not _is_number(progress["best_val_bpc"]):
        return "progress.best_val_bpc is not a number"
    best = progress.get("best_checkpoint")
    if best is not None and not (isinstance(best, str) and ckpt.checkpoint_step(best) is not None):
        return "progress.best_checkpoint is not a checkpoint name"
    history = progress.get("history", [])
    if not isinstance(history, list) or not all(
            isinstance(h, dict) and _is_int(h.get("step")) for h in history):
        return "progress.history is not a list of validation records"
    if progress.get("window", 0) > num_windows:
        return (f"it stopped at window {progress['window']} of an epoch but the corpus has "
                f"{num_windows}; resume with the corpus the run was trained on")
    return None
