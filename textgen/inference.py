"""Loading a trained run for use: the model of one checkpoint, its vocabulary and run.json.

Every command that uses a trained model (`sample`, `eval`, `viz`, `serve`, `export`) loads it
through `load_run`, so each accepts the same RUN forms (a name under --runs-dir, a path, or
`latest`) and refuses a damaged run with the same one-line errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from textgen.checkpoint import checkpoint_dir, is_complete, load_weights
from textgen.errors import TextgenError
from textgen.runs import load_vocab, read_run_meta, resolve_run


@dataclass
class LoadedRun:
    """A run's model, ready for inference (float32, single device), and what describes it.

    Attributes:
        model: the built `CharLSTM` with the checkpoint's weights.
        vocab: the run's `Vocabulary`.
        meta: run.json, validated (`model`/`train` as config dataclasses).
        run_dir: the run directory.
        checkpoint: the checkpoint directory the weights came from.
    """

    model: object
    vocab: object
    meta: dict
    run_dir: Path
    checkpoint: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


def load_run(run: str | None, runs_dir: str | Path, which: str = "best",
             warn: Callable[[str], None] | None = None) -> LoadedRun:
    """Load the `best` or `last` checkpoint of `run` (name, path, "latest" or None = latest).

    `warn(message)` is told when the checkpoint asked for is missing and another one is used.
    A trainer running meanwhile may prune the checkpoint between reading run.json and loading
    it: then run.json is read again (up to three times).
    """
    from textgen.model import build_model  # TensorFlow loads only once the run looks right

    run_dir = resolve_run(run, runs_dir)
    for attempt in range(3):
        meta = read_run_meta(run_dir)
        vocab = load_vocab(run_dir, meta)
        ckpt = checkpoint_dir(run_dir, meta, which, warn=warn)
        model = build_model(meta["model"])
        try:
            load_weights(model, ckpt)
        except TextgenError:
            moved_on = read_run_meta(run_dir)["checkpoints"] != meta["checkpoints"]
            if attempt < 2 and not is_complete(ckpt) and moved_on:
                continue
            raise
        return LoadedRun(model, vocab, meta, run_dir, ckpt)
    raise AssertionError("unreachable")
