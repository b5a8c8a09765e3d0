"""Start a new training run or reopen one for `--resume`, then hand it to the Trainer.

Everything that must be checked before any file is written lives here: the corpus reads, the
data fits a batch, and on resume the vocabulary and model shape match what the run was built with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from textgen import checkpoint as ckpt
from textgen.config import ModelConfig, TrainConfig
from textgen.data import StreamBatcher, default_corpus, read_corpus, split_train_val
from textgen.errors import TextgenError
from textgen.vocab import Vocabulary

# Options that may change when a run is resumed; everything else must match the saved run.
BUDGET_OPTIONS = {"epochs", "steps", "minutes"}
RESUMABLE_OPTIONS = BUDGET_OPTIONS | {"eval_every", "eval_batches", "keep"}


def load_corpus(paths: list[str], encoding: str, corpus_dir: str | Path) -> tuple[str, dict]:
    """The corpus text and a summary for run.json; no paths means the built-in default corpus."""
    default = not paths
    if default:
        paths = [str(default_corpus(corpus_dir))]
    text = read_corpus(paths, encoding=encoding)
    summary = {"default": default, "paths": [str(Path(p).resolve()) for p in paths],
               "encoding": encoding, "chars": len(text)}
    return text, summary


def _differences(saved, given: dict) -> list[str]:
    """'name: saved -> given' for each given option that differs from the saved config."""
    return [f"{k}: {getattr(saved, k)!r} -> {v!r}" for k, v in given.items()
            if getattr(saved, k) != v]


def _vocab_difference(saved: Vocabulary, text: str) -> str | None:
    """A description of how the corpus's characters differ from the run's vocabulary."""
    current = set(text)
    added = sorted(current - set(saved.chars))
    missing = sorted(set(saved.chars) - current)
    if not added and not missing:
        return None
    parts = []
    if added:
        parts.append(f"{len(added)} new ({' '.join(repr(c) for c in added[:10])})")
    if missing:
        parts.append(f"{len(missing)} missing ({' '.join(repr(c) for c in missing[:10])})")
    return ", ".join(parts)


def launch(corpus: list[str], model_options: dict, train_options: dict, runs_root: str | Path,
           name: str | None = None, resume: bool = False, corpus_dir: str | Path = "corpora",
           show_progress: bool = True, echo: Callable[[str], None] = print):
    """Train a new run, or continue one with `resume`. Returns (run_dir, stop reason, progress)."""
    if resume:
        run_dir = ckpt.resolve_run(name, runs_root)
        meta = ckpt.read_run_meta(run_dir)
        changed = _differences(meta["model"], model_options) + _differences(
            meta["train"], {k: v for k, v in train_options.items() if k not in RESUMABLE_OPTIONS})
        if changed:
            raise TextgenError(f"cannot resume {run_dir} with a different setup ({'; '.join(changed)}); "
                               "drop those options or start a new run with --name")
        model_config = meta["model"]
        resumable = {k: v for k, v in train_options.items() if k in RESUMABLE_OPTIONS}
        if resumable.keys() & BUDGET_OPTIONS:  # a new budget replaces the saved one entirely
            resumable = {**dict.fromkeys(BUDGET_OPTIONS), **resumable}
        train_config = dataclasses.replace(meta["train"], **resumable)
        saved_corpus = meta.get("corpus", {})
        paths = corpus or ([] if saved_corpus.get("default") else saved_corpus.get("paths", []))
        text, summary = load_corpus(paths, train_config.encoding, corpus_dir)
        vocab = Vocabulary.load(run_dir / ckpt.VOCAB_FILE)
        difference = _vocab_difference(vocab, text)
        if difference:
            raise TextgenError(f"the corpus's characters differ from run {run_dir.name}'s vocabulary "
                               f"({difference}); resume with the original corpus or start a new run")
        last = ckpt.checkpoint_dir(run_dir, meta, "last")
    else:
        train_config = TrainConfig(**train_options)
        text, summary = load_corpus(corpus, train_config.encoding, corpus_dir)
        vocab = Vocabulary.from_text(text)
        model_config = ModelConfig(vocab_size=vocab.size, **model_options)
        run_dir = Path(runs_root) / (name or _timestamp())
        if (run_dir / ckpt.RUN_FILE).exists():
            raise TextgenError(f"run {run_dir} already exists; add --resume to continue it, "
                               "or choose another --name")
        meta = {"format": ckpt.RUN_FORMAT, "version": 1, "name": run_dir.name,
                "model": model_config, "train": train_config, "corpus": summary,
                "checkpoints": {}}
    train_data, val_data = make_batchers(vocab.encode(text), train_config)
    del text
    summary.update(train_chars=int(train_data.streams.size), vocab_size=vocab.size)
    meta["corpus"] = summary

    from textgen.train import Trainer  # TensorFlow loads only once the inputs look right

    trainer = Trainer(run_dir, vocab, train_data, val_data, model_config, train_config, meta)
    if not resume:
        run_dir = ckpt.new_run_dir(run_dir.parent, run_dir.name)
        vocab.save(run_dir / ckpt.VOCAB_FILE)
        ckpt.write_run_meta(run_dir, ckpt.meta_to_json(meta))
    with ckpt.RunLock(run_dir):
        if resume:
            trainer.restore(last)
            echo(f"resuming {run_dir} at step {trainer.progress.step}")
        else:
            echo(f"training {run_dir}: {summary['chars']:,} characters, vocabulary {vocab.size}")
        reason = trainer.run(show_progress=show_progress)
    return run_dir, reason, trainer.progress


def make_batchers(ids, config: TrainConfig) -> tuple[StreamBatcher, StreamBatcher]:
    """Training and validation windows; the validation slice gets as many streams as it can
    fill, up to batch_size, so a short held-out tail still validates."""
    train_ids, val_ids = split_train_val(ids, config.val_fraction)
    train_data = StreamBatcher(train_ids, config.batch_size, config.seq_len)
    if len(val_ids) < config.seq_len + 1:
        raise TextgenError(
            f"the validation slice is too short: {len(val_ids)} characters, need at least "
            f"{config.seq_len + 1}; raise --val-fraction, lower --seq-len or use a longer corpus"
        )
    batch = min(config.batch_size, len(val_ids) // (config.seq_len + 1))
    return train_data, StreamBatcher(val_ids, batch, config.seq_len, name="validation")


def _timestamp() -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S")
