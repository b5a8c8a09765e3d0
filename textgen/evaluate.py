"""`textgen eval`: bits per character and perplexity of a run on any text.

The text streams through the model in windows with the hidden state carried from one window to
the next (one stream, exactly as a reader would see it), so memory stays constant however long
the text is. Characters the vocabulary lacks are counted, reported and skipped, not crashed on.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

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
    unknown: Counter = field(default_factory=Counter)  # out-of-vocabulary characters skipped
    folded: Counter = field(default_factory=Counter)  # or scored as the unknown symbol (--min-count)

    @property
    def bpc(self) -> float:
        return self.nats / self.scored / LN2

    @property
    def perplexity(self) -> float:
        """Per-character perplexity, exp(mean nats)."""
        return math.exp(self.nats / self.scored)


def evaluate(model, vocab, blocks: Iterable[str], window: int = WINDOW, progress=None) -> EvalResult:
    """Score a stream of text blocks with `model`; `progress(n)` is called with characters done."""
    step = tf.function(_window_loss(model), reduce_retracing=True)
    result = EvalResult()
    flat = flatten_state(model.initial_state(1))
    pending = np.zeros(0, np.int32)  # ids not yet consumed; pending[0] is the next input
    for block in blocks:
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
    if result.scored == 0:
        raise TextgenError("the text has fewer than 2 characters the model knows; nothing to score")
    return result


def _window_loss(model):
    def loss(x, y, flat_states):
        logits, states = model(x, unflatten_state(flat_states))  # (1, time, vocab)
        nats = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        return flatten_state(states), nats

    return loss


def _score(step, ids: np.ndarray, flat):
    """Feed ids[:-1], score ids[1:]; returns (new state, summed nats)."""
    flat, nats = step(tf.constant(ids[None, :-1]), tf.constant(ids[None, 1:]), flat)
    return flat, float(nats)


def describe(result: EvalResult) -> str:
    """The one-paragraph report `textgen eval` prints."""
    lines = [f"bits per character: {result.bpc:.4f}",
             f"perplexity (per character): {result.perplexity:.4f}",
             f"characters scored: {result.scored:,}"]
    if result.unknown:
        shown = " ".join(repr(ch) for ch, _ in result.unknown.most_common(10))
        lines.append(f"out-of-vocabulary characters skipped: {sum(result.unknown.values()):,} "
                     f"({len(result.unknown)} distinct: {shown})")
    if result.folded:
        shown = " ".join(repr(ch) for ch, _ in result.folded.most_common(10))
        lines.append(f"rare characters scored as the unknown symbol: {sum(result.folded.values()):,} "
                     f"({len(result.folded)} distinct: {shown})")
    return "\n".join(lines)


def evaluate_files(run: str | None, runs_dir: str, which: str, paths: list[str], encoding: str,
                   show_progress: bool = True, warn=None) -> EvalResult:
    """Load a run and score the text of `paths` (files or directories), with a progress bar."""
    import os

    from textgen.bars import LazyBar
    from textgen.corpus import check_encoding, iter_text
    from textgen.inference import load_run

    check_encoding(encoding)  # refuse bad input before loading the model
    for path in paths:
        if not os.path.exists(path):
            raise TextgenError(f"path not found: {path}")
    loaded = load_run(run, runs_dir, which, warn=warn)
    with LazyBar(show_progress, lambda: None, "scoring", unit="char") as bar:
        return evaluate(loaded.model, loaded.vocab, iter_text(paths, encoding), progress=bar.update)
