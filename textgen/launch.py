"""Start a new training run or reopen one for `--resume`, then hand it to the Trainer.

Everything that must be checked before any file is written lives here: the corpus reads, the
data fits a batch, and on resume the vocabulary and model shape match what the run was built with.

Order of events, so a kill at any instant leaves a run that loads:

* resume: take the run's lock first (a second trainer is refused at once, with the owner's PID),
  validate, build the trainer, tidy what a killed trainer left (`checkpoint.recover`), restore the
  last checkpoint, train.
* new run: validate and build the trainer while nothing exists on disk, then assemble the run
  (lock, vocabulary, a step-0 checkpoint, run.json) in a hidden staging directory and rename it
  into place: the run directory appears complete, or not at all.

SIGINT/SIGTERM are caught (turned into "checkpoint and stop") from the moment the first file is
written; before that nothing is on disk and they act as usual (Ctrl-C: click's "Aborted!").
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from pathlib import Path
from typing import Callable

from textgen import checkpoint as ckpt
from textgen import runs
from textgen.config import ModelConfig, TrainConfig, check_config
from textgen.corpus import default_corpus
from textgen.data import StreamBatcher, split_train_val
from textgen.distribute import is_chief_task
from textgen.errors import TextgenError, os_reason
from textgen.runlock import RunLock
from textgen.vocab import Vocabulary

# Options that may change when a run is resumed; everything else must match the saved run.
BUDGET_OPTIONS = {"epochs", "steps", "minutes"}
# The learning rate may change too: lowering it is how a diverged run is continued.
# So may the strategy: a run moves freely between one device, several and several hosts.
RESUMABLE_OPTIONS = BUDGET_OPTIONS | {"eval_every", "eval_batches", "keep", "learning_rate",
                                      "patience", "strategy"}


CACHE_DIR = ".corpus-cache"  # under the runs directory: encoded corpora, shared by runs


def load_corpus(paths: list[str], encoding: str, corpus_dir: str | Path, runs_root: str | Path,
                show_progress: bool = False):
    """The corpus as ids in a memory-mapped cache (`textgen.corpus_cache`, built on first use)
    and a summary for run.json; no paths means the built-in default corpus."""
    from textgen.corpus_cache import encode_corpus, source_bytes

    _check_text_encoding(encoding)
    default = not paths
    if default:
        paths = [str(default_corpus(corpus_dir))]
    cache_root = Path(runs_root) / CACHE_DIR
    created = [d for d in (Path(runs_root), cache_root) if not d.exists()]
    try:
        with _EncodingBar(show_progress, lambda: 2 * source_bytes(paths)) as bar:
            corpus = encode_corpus(paths, encoding, cache_root, progress=bar.update)
    except TextgenError:
        for directory in reversed(created):  # a refused corpus leaves no empty directories
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    summary = {"default": default, "paths": [str(Path(p).resolve()) for p in paths],
               "encoding": encoding, "chars": corpus.num_chars}
    return corpus, summary


class _EncodingBar:
    """A tqdm bar for encoding a corpus that appears only if encoding really happens (a cache
    that is reused reports no progress, and shows nothing)."""

    def __init__(self, show: bool, total: Callable[[], int]):
        self.show, self.total, self.bar = show, total, None

    def update(self, n: int) -> None:
        if self.show and self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total(), unit="B", unit_scale=True, leave=False,
                            desc="encoding the corpus", dynamic_ncols=True)
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _check_text_encoding(encoding: str) -> None:
    """Refuse codecs that exist but do not decode bytes to text (rot13, base64, ...); unknown
    names are left to read_corpus, which names them."""
    import codecs

    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError, ValueError):
        return
    try:
        "a".encode(encoding)
        b"a".decode(encoding)
    except LookupError:
        raise TextgenError(f"{encoding!r} is not a text encoding; pass an --encoding such as utf-8, "
                           "latin-1 or cp1252") from None
    except (UnicodeError, ValueError):
        pass


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or type(e).__name__ == "ResourceExhaustedError"


def _differences(saved, given: dict) -> list[str]:
    """'name: saved -> given' for each given option that differs from the saved config."""
    return [f"{k}: {getattr(saved, k)!r} -> {v!r}" for k, v in given.items()
            if getattr(saved, k) != v]


def _vocab_difference(saved: Vocabulary, chars: list[str]) -> str | None:
    """A description of how the corpus's characters differ from the run's vocabulary."""
    current = set(chars)
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
    """Train a new run, or continue one with `resume`. Returns (run_dir, stop reason, progress).

    When the reason is a signal's name, a checkpoint of the step it stopped at was written and
    `echo` has been told where it is."""
    try:
        return _launch(corpus, model_options, train_options, runs_root, name, resume, corpus_dir,
                       show_progress, echo)
    except Exception as e:
        if not _out_of_memory(e):
            raise
        where = "the run keeps its last checkpoint; " if resume else ""
        raise TextgenError(f"out of memory ({type(e).__name__}): the model or batch is too large for "
                           f"this machine; {where}lower --batch-size, --seq-len, --units or "
                           "--num-layers") from None


def _launch(corpus, model_options, train_options, runs_root, name, resume, corpus_dir,
            show_progress, echo):
    with contextlib.ExitStack() as stack:
        if resume:
            run_dir = runs.resolve_run(name, runs_root)
            strategy = train_options.get("strategy") or runs.read_run_meta(run_dir)["train"].strategy
            chief = is_chief_task(strategy)
            if chief:  # the other workers of a multi-worker run only read the run
                stack.enter_context(RunLock(run_dir))
            stop = stack.enter_context(StopRequest())
            trainer, meta = _reopen(run_dir, corpus, model_options, train_options, corpus_dir, chief,
                                    show_progress)
            if chief:
                ckpt.recover(run_dir, meta)
            trainer.restore(ckpt.checkpoint_dir(run_dir, meta, "last"))
            echo(f"resuming {run_dir} at step {trainer.progress.step}")
        elif not is_chief_task(train_options.get("strategy", TrainConfig.strategy)):
            trainer, run_dir = _prepare_new(corpus, model_options, train_options, runs_root, name,
                                            corpus_dir, False, show_progress)
            stop = stack.enter_context(StopRequest())
            trainer.save()  # the chief's step-0 checkpoint gathers from every worker; writes nothing
            echo(f"training with the chief worker, which writes {run_dir}")
        else:
            trainer, run_dir = _prepare_new(corpus, model_options, train_options, runs_root, name,
                                            corpus_dir, True, show_progress)
            root = run_dir.parent
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TextgenError(f"cannot create the runs directory {root}: {os_reason(e)}") from None
            runs.clean_stale_staging(root, run_dir.name)
            staging = runs.staging_dir(root, run_dir.name)
            try:
                staging.mkdir()
            except OSError as e:
                raise TextgenError(f"cannot create run directory {run_dir}: {os_reason(e)}") from None
            lock = stack.enter_context(RunLock(staging))
            stop = stack.enter_context(StopRequest())
            try:
                _write_new_run(trainer, staging)
            except BaseException:
                import shutil

                shutil.rmtree(staging, ignore_errors=True)
                raise
            runs.publish_run(staging, run_dir)
            lock.moved(run_dir)
            trainer.run_dir = run_dir
            summary = trainer.meta["corpus"]
            echo(f"training {run_dir}: {summary['chars']:,} characters, vocabulary {trainer.vocab.size}")
        reason = trainer.run(show_progress=show_progress, stop=stop)
        if reason != "budget":
            echo(f"{reason}: saved checkpoint {run_dir / trainer.meta['checkpoints']['last']}")
    return run_dir, reason, trainer.progress


def _reopen(run_dir: Path, corpus: list[str], model_options: dict, train_options: dict,
            corpus_dir: str | Path, chief: bool = True, show_progress: bool = False):
    """(trainer, meta) for resuming `run_dir`, after every check that can refuse it."""
    meta = runs.read_run_meta(run_dir)
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
    check_config(model_config, train_config)
    meta["train"] = train_config
    saved_corpus = meta.get("corpus", {})
    paths = corpus or ([] if saved_corpus.get("default") else saved_corpus.get("paths", []))
    encoded, summary = load_corpus(paths, train_config.encoding, corpus_dir, run_dir.parent,
                                   show_progress)
    vocab = runs.load_vocab(run_dir, meta)
    difference = _vocab_difference(vocab, encoded.chars)
    if difference:
        raise TextgenError(f"the corpus's characters differ from run {run_dir.name}'s vocabulary "
                           f"({difference}); resume with the original corpus or start a new run")
    ckpt.checkpoint_dir(run_dir, meta, "last")  # refuse a run without a loadable checkpoint early
    train_data, val_data = make_batchers(encoded.ids, train_config)
    summary.update(train_chars=int(train_data.streams.size), vocab_size=vocab.size)
    meta["corpus"] = summary

    from textgen.train import Trainer  # TensorFlow loads only once the inputs look right

    trainer = Trainer(run_dir, vocab, train_data, val_data, model_config, train_config, meta, chief)
    return trainer, meta


def _prepare_new(corpus: list[str], model_options: dict, train_options: dict,
                 runs_root: str | Path, name: str | None, corpus_dir: str | Path,
                 chief: bool = True, show_progress: bool = False):
    """(trainer, run_dir) of a new run; nothing is written yet. A non-chief worker's run
    directory is the chief's (it may exist already): it is not checked."""
    if name is not None and name and (
            "\0" in name or Path(name).name in ("", ".", "..") or Path(name).name.startswith(".")):
        raise TextgenError(f"--name {name!r} is not a usable run name; use letters, digits, '-' or '_'")
    train_config = TrainConfig(**train_options)
    check_config(ModelConfig(vocab_size=1, **model_options), train_config)  # before reading the corpus
    encoded, summary = load_corpus(corpus, train_config.encoding, corpus_dir, runs_root,
                                   show_progress)
    vocab = encoded.vocabulary()
    model_config = ModelConfig(vocab_size=vocab.size, **model_options)
    check_config(model_config, train_config)
    run_dir = Path(runs_root) / (name or _timestamp())
    if chief:
        _refuse_existing(run_dir)
    meta = {"format": runs.RUN_FORMAT, "version": 1, "name": run_dir.name,
            "model": model_config, "train": train_config, "corpus": summary,
            "vocab_sha256": runs.vocab_fingerprint(vocab), "checkpoints": {}}
    train_data, val_data = make_batchers(encoded.ids, train_config)
    summary.update(train_chars=int(train_data.streams.size), vocab_size=vocab.size)

    from textgen.train import Trainer  # TensorFlow loads only once the inputs look right

    trainer = Trainer(run_dir, vocab, train_data, val_data, model_config, train_config, meta, chief)
    if chief:
        _refuse_existing(run_dir)  # again: building the trainer took a while
    return trainer, run_dir


def _refuse_existing(run_dir: Path) -> None:
    if (run_dir / runs.RUN_FILE).exists():
        raise TextgenError(f"run {run_dir} already exists; add --resume to continue it, "
                           "or choose another --name")
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise TextgenError(f"run directory {run_dir} already exists and is not a textgen run; "
                           "pick another --name")


def _write_new_run(trainer, staging: Path) -> None:
    """Vocabulary, step-0 checkpoint and run.json of a new run, into its staging directory."""
    trainer.run_dir = staging
    try:
        trainer.vocab.save(staging / runs.VOCAB_FILE)
    except OSError as e:
        raise TextgenError(f"cannot write {staging / runs.VOCAB_FILE}: {os_reason(e)}") from None
    trainer.save()  # step 0: a run always has a checkpoint to sample from and resume


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


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step, so the step finishes and
    a consistent checkpoint is written (a KeyboardInterrupt could land between two updates).

    Installed only in the main thread (elsewhere signals cannot be caught, and the flag stays
    unset). `requested` is the first signal's name."""

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested = self.requested or signal.Signals(signum).name

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

