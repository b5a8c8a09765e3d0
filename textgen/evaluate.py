"""`textgen eval`: bits per character and perplexity of a run on any text, a row per file.

Each file streams through the model in windows with the hidden state carried from one window to
the next (one stream, exactly as a reader would see it), so memory stays constant however long
the text is; each file starts from a fresh state, so its row does not depend on the files before
it. Characters the vocabulary lacks are counted, reported (count and share) and skipped, not
crashed on.

Arguments are `[RUN] FILE...` (`split_arguments`): a single argument is always text, scored by
the latest run; with several, the first is RUN when it names a run and is not a file.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

from textgen.config import LN2
from textgen.errors import TextgenError
from textgen.model import flatten_state, unflatten_state

WINDOW = 256  # characters per model call


@dataclass
class EvalResult:
    """What `evaluate` measured."""

    nats: float = 0.0  # summed cross-entropy
    scored: int = 0  # characters predicted (all but the first)
    chars: int = 0  # characters read, the skipped ones included
    unknown: Counter = field(default_factory=Counter)  # out-of-vocabulary characters skipped
    folded: Counter = field(default_factory=Counter)  # or scored as the unknown symbol (--min-count)

    @property
    def bpc(self) -> float:
        return self.nats / self.scored / LN2

    @property
    def perplexity(self) -> float:
        """Per-character perplexity, exp(mean nats)."""
        return math.exp(self.nats / self.scored)

    @property
    def skipped(self) -> int:
        """Characters skipped as unknown to the model."""
        return sum(self.unknown.values())

    def add(self, other: "EvalResult") -> None:
        """Add `other`'s counts to these (the total of several files)."""
        self.nats, self.scored, self.chars = (self.nats + other.nats, self.scored + other.scored,
                                              self.chars + other.chars)
        self.unknown.update(other.unknown)
        self.folded.update(other.folded)


@dataclass
class EvalReport:
    """What `textgen eval` measured: a result per file, their total, and the files of the
    directories skipped as binary, undecodable or unreadable."""

    rows: list[tuple[str, EvalResult]]
    total: EvalResult
    skipped_files: list[Path] = field(default_factory=list)


def evaluate(model, vocab, blocks: Iterable[str], window: int = WINDOW, progress=None,
             step=None, allow_empty: bool = False) -> EvalResult:
    """Score a stream of text blocks with `model`; `progress(n)` is called with characters done.

    `step`: `window_step(model)`, to share one compiled function between several calls.
    Fewer than 2 known characters is a TextgenError unless `allow_empty`."""
    step = step or window_step(model)
    result = EvalResult()
    flat = flatten_state(model.initial_state(1))
    pending = np.zeros(0, np.int32)  # ids not yet consumed; pending[0] is the next input
    for block in blocks:
        result.chars += len(block)
        unknown = vocab.unknown_chars(block)
        if unknown and vocab.unknown is not None:  # the model has a symbol for them: score it
            missing = set(unknown)
            result.folded.update(ch for ch in block if ch in missing)
        elif unknown:
            missing = set(unknown)
            result.unknown.update(ch for ch in block if ch in missing)
            block = "".join(ch for ch in block if ch not in missing)
        pending = np.concatenate([pending, vocab.encode(block).astype(np.int32)])
        while len(pending) > window:
            flat, nats = _score(step, pending[: window + 1], flat)
            result.nats, result.scored = result.nats + nats, result.scored + window
            pending = pending[window:]
            if progress:
                progress(window)
        if progress:
            progress(0)
    if len(pending) > 1:
        flat, nats = _score(step, pending, flat)
        result.nats, result.scored = result.nats + nats, result.scored + len(pending) - 1
        if progress:
            progress(len(pending) - 1)
    if result.scored == 0 and not allow_empty:
        raise _nothing_to_score()
    return result


def _nothing_to_score() -> TextgenError:
    return TextgenError("the text has fewer than 2 characters the model knows; nothing to score")


def window_step(model):
    """The compiled function that scores one window of `model` and carries its state."""
    return tf.function(_window_loss(model), reduce_retracing=True)


def _window_loss(model):
    def loss(x, y, flat_states):
        logits, states = model(x, unflatten_state(flat_states, model.cell_kind))  # (1, time, vocab)
        nats = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        return flatten_state(states), nats

    return loss


def _score(step, ids: np.ndarray, flat):
    """Feed ids[:-1], score ids[1:]; returns (new state, summed nats)."""
    flat, nats = step(tf.constant(ids[None, :-1]), tf.constant(ids[None, 1:]), flat)
    return flat, float(nats)


def describe(report: EvalReport) -> str:
    """The table `textgen eval` prints: a row per file and the total, each with its bits per
    character, perplexity, characters and the characters skipped as unknown (count and share)."""
    header = ("file", "bits/char", "perplexity", "characters", "unknown (skipped)")
    rows = [(name, *_cells(result)) for name, result in report.rows]
    rows.append(("total", *_cells(report.total)))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 4) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
             for row in [header, *rows]]
    total = report.total
    if total.unknown:
        shown = " ".join(repr(ch) for ch, _ in total.unknown.most_common(10))
        lines.append(f"out-of-vocabulary characters skipped: {total.skipped:,} of {total.chars:,} "
                     f"({_share(total)}; {len(total.unknown)} distinct: {shown})")
    if total.folded:
        shown = " ".join(repr(ch) for ch, _ in total.folded.most_common(10))
        lines.append(f"rare characters scored as the unknown symbol: {sum(total.folded.values()):,} "
                     f"({len(total.folded)} distinct: {shown})")
    return "\n".join(lines)


def _cells(result: EvalResult) -> tuple[str, str, str, str]:
    if result.scored == 0:
        bpc = perplexity = "-"
    else:
        bpc, perplexity = f"{result.bpc:.4f}", f"{result.perplexity:.4f}"
    return bpc, perplexity, f"{result.chars:,}", f"{result.skipped:,} ({_share(result)})"


def _share(result: EvalResult) -> str:
    share = 100 * result.skipped / result.chars if result.chars else 0.0
    return f"{share:.2f}%" if share == 0 or share >= 0.01 else "<0.01%"


def split_arguments(args: list[str], runs_dir: str,
                    warn: Callable[[str], None]) -> tuple[str | None, list[str]]:
    """(RUN, FILES) of `textgen eval`'s arguments `[RUN] FILE...`.

    * One argument is the text, scored by the latest run (as `textgen viz FILE`); unless it is
      a run and nothing else, which is refused (a run alone has nothing to score).
    * With several, the first is RUN when it names a run (`latest`, a run directory, or a run's
      name under `runs_dir`) and is not a file: a run is always a directory, so a file is text.
      A directory of text that shares its name with a run is read as the run, with a warning
      saying how to score the directory instead (`textgen eval latest DIR ...`); a file that
      shares a run's name is text, with a warning saying how to name the run.
    """
    from textgen.runs import resolve_run

    def run_named(name: str) -> Path | None:
        try:
            return resolve_run(name, runs_dir)
        except TextgenError:
            return None

    first = Path(args[0])
    if len(args) == 1:
        a_run_directory = first.is_dir() and (first / "run.json").is_file()
        if a_run_directory or (not first.exists() and (args[0] == "latest" or run_named(args[0]))):
            raise TextgenError(f"{args[0]} is a run, and no text to score was given; "
                               f"textgen eval {args[0]} FILE")
        return None, list(args)
    run = None if first.is_file() else (args[0] if args[0] == "latest" else run_named(args[0]))
    if run is None and not first.exists():
        raise TextgenError(f"{args[0]} is neither a run (looked for {first / 'run.json'} and "
                           f"{Path(runs_dir) / args[0] / 'run.json'}) nor a file; "
                           "`textgen info latest` shows the newest run")
    if run is None:
        under = Path(runs_dir) / args[0]
        if first.is_file() and (under / "run.json").is_file():
            warn(f"{args[0]} is read as a text file, not as the run {under}; "
                 f"to score with that run, give its path: textgen eval {under} ...")
        return None, list(args)
    if first.is_dir() and not (first / "run.json").is_file():
        warn(f"{args[0]} is read as the run {run}, not as the directory {first}; to score that "
             f"directory with the latest run, write: textgen eval latest {args[0]} ...")
    return args[0], list(args[1:])


def evaluate_files(run: str | None, runs_dir: str, which: str, paths: list[str], encoding: str,
                   show_progress: bool = True, warn=None) -> EvalReport:
    """Load a run and score the text of `paths` (files or directories), one row per file, with a
    progress bar."""
    import os

    from textgen.bars import LazyBar
    from textgen.corpus import check_encoding, file_texts
    from textgen.inference import load_run

    check_encoding(encoding)  # refuse bad input before loading the model
    for path in paths:
        if not os.path.exists(path):
            raise TextgenError(f"path not found: {path}")
    loaded = load_run(run, runs_dir, which, warn=warn)
    step = window_step(loaded.model)
    report = EvalReport([], EvalResult())
    with LazyBar(show_progress, lambda: None, "scoring", unit="char") as bar:
        for file, blocks in file_texts(paths, encoding, skipped=report.skipped_files):
            result = evaluate(loaded.model, loaded.vocab, blocks, progress=bar.update, step=step,
                              allow_empty=True)
            if result.chars:  # empty files, and skipped ones, have no row
                report.rows.append((str(file), result))
                report.total.add(result)
    if report.skipped_files and warn:
        names = ", ".join(str(f) for f in report.skipped_files[:5])
        more = ", ..." if len(report.skipped_files) > 5 else ""
        count = len(report.skipped_files)
        warn(f"skipped {count:,} binary, undecodable or unreadable file{'s' if count != 1 else ''} in "
             f"the directories: {names}{more}")
    if report.total.scored == 0:
        raise _nothing_to_score()
    return report
