"""Start a new training run, or reopen one for `--resume`, then hand it to the Trainer.

The corpus flows one way: files -> text (`textgen.corpus`) -> vocabulary and id cache
(`textgen.corpus_cache.load_corpus`) -> windows (`textgen.data.make_batchers`) -> the Trainer.
What is checked here is what must hold before anything is written: the run name, the options,
and on resume that the vocabulary, model shape and corpus text match the run.

Order of events, so a kill at any instant leaves a run that loads:

* resume: take the run's lock first (a second trainer is refused at once, with the owner's PID),
  validate, build the trainer, tidy what a killed trainer left (`checkpoint.recover`), restore the
  last checkpoint, train.
* new run: validate and build the trainer while nothing exists on disk, then assemble the run
  (lock, vocabulary, a step-0 checkpoint, run.json) in a hidden staging directory and rename it
  into place: the run directory appears complete, or not at all.

SIGINT/SIGTERM are caught (turned into "checkpoint and stop", a second one aborts) from the
moment the first file is written; before that nothing is on disk and they act as usual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable

from textgen import checkpoint as ckpt
from textgen import finetune, runformat, runs
from textgen.config import FinetuneConfig, ModelConfig, TrainConfig, check_options, check_size, shortlist_for
from textgen.corpus_cache import load_corpus
from textgen.data import make_batchers
from textgen.distribute import is_chief_task
from textgen.errors import TextgenError, os_reason
from textgen.runlock import RunLock
from textgen.signals import StopRequest

# Options that may change when a run is resumed; everything else must match the saved run.
BUDGET_OPTIONS = {"epochs", "steps", "minutes"}
# The learning rate may change too: lowering it is how a diverged run is continued.
# So may the strategy: a run moves freely between one device, several and several hosts.
RESUMABLE_OPTIONS = BUDGET_OPTIONS | {"eval_every", "eval_batches", "log_every", "keep",
                                      "learning_rate", "patience", "strategy"}
BUDGET_SPENT = "budget already reached"  # launch's stop reason when a resumed run had nothing left


@dataclasses.dataclass
class RunRequest:
    """What `textgen train` was asked to do.

    Attributes:
        corpus: corpus files and directories (empty: the built-in corpus, or on resume the
            run's own corpus).
        model_options, train_options: the ModelConfig / TrainConfig fields given explicitly.
        runs_root: the runs directory. name: the run's name (default: a timestamp, or on resume
            the latest run). resume: continue the run. allow_corpus_change: resume even though
            the corpus text changed since the run started.
        corpus_dir: where the built-in corpus is cached. show_progress: draw progress bars.
        init_from: a run to fine-tune (`textgen.finetune`): the new run starts from its model
            and weights. init_checkpoint: which of its checkpoints, best or last (default
            `FinetuneConfig.checkpoint`).
    """

    corpus: list[str]
    model_options: dict
    train_options: dict
    runs_root: str | Path
    name: str | None = None
    resume: bool = False
    allow_corpus_change: bool = False
    corpus_dir: str | Path = "corpora"
    show_progress: bool = True
    init_from: str | None = None
    init_checkpoint: str | None = None


def launch(corpus: list[str], model_options: dict, train_options: dict, runs_root: str | Path,
           name: str | None = None, resume: bool = False, corpus_dir: str | Path = "corpora",
           show_progress: bool = True, echo: Callable[[str], None] = print,
           allow_corpus_change: bool = False, init_from: str | None = None,
           init_checkpoint: str | None = None):
    """Train a new run, or continue one (arguments: see `RunRequest`). Returns (run_dir, stop
    reason, progress); the reason is BUDGET_SPENT when a resumed run had no budget left (and
    `echo` has said so).

    When the reason is a signal's name, a checkpoint of the step it stopped at was written and
    `echo` has been told where it is."""
    request = RunRequest(list(corpus), model_options, train_options, runs_root, name, resume,
                         allow_corpus_change, corpus_dir, show_progress, init_from, init_checkpoint)
    if init_from is not None and resume:
        raise TextgenError("--init-from starts a new run and --resume continues one; drop --init-from "
                           "to continue a fine-tuned run (it keeps its lineage)")
    if init_checkpoint is not None and init_from is None:
        raise TextgenError("--checkpoint chooses the base run's checkpoint for --init-from; drop it, or "
                           "add --init-from RUN")
    if request.name is not None:
        runs.check_run_name(request.name)
    try:
        return _launch(request, echo)
    except Exception as e:
        if not (isinstance(e, MemoryError) or type(e).__name__ == "ResourceExhaustedError"):
            raise
        where = "the run keeps its last checkpoint; " if request.resume else ""
        raise TextgenError(f"out of memory ({type(e).__name__}): the model or batch is too large for "
                           f"this machine; {where}lower --batch-size, --seq-len, --units or "
                           "--num-layers") from None


def _launch(request: RunRequest, echo):
    strategy = request.train_options.get("strategy", TrainConfig.strategy)
    with contextlib.ExitStack() as stack:
        if request.resume:
            run_dir = runs.resolve_run(request.name, request.runs_root)
            strategy = request.train_options.get("strategy") or runs.read_run_meta(run_dir)["train"].strategy
            chief = is_chief_task(strategy)
            if chief:  # the other workers of a multi-worker run only read the run
                stack.enter_context(RunLock(run_dir))
            stop = stack.enter_context(StopRequest())
            trainer, meta = _reopen(run_dir, request, chief)
            if chief:
                ckpt.recover(run_dir, meta)
            trainer.restore(ckpt.checkpoint_dir(run_dir, meta, "last"))
            _tell_skipped(trainer.meta["corpus"], echo)
            if _budget_spent(trainer):  # say so in one line rather than draw a full bar
                echo(f"budget reached; pass --steps/--minutes to train further ({run_dir} is at step "
                     f"{trainer.progress.step:,}, epoch {trainer.progress.epoch})")
                return run_dir, BUDGET_SPENT, trainer.progress
            echo(f"resuming {run_dir} at step {trainer.progress.step}, {trainer.config.precision}")
        elif not is_chief_task(strategy):
            trainer, run_dir = _prepare_new(request, chief=False)
            stop = stack.enter_context(StopRequest())
            trainer.save()  # the chief's step-0 checkpoint gathers from every worker; writes nothing
            echo(f"training with the chief worker, which writes {run_dir}")
        else:
            trainer, run_dir = _prepare_new(request, chief=True, echo=echo)
            stop = _create_run(trainer, run_dir, stack)
            summary = trainer.meta["corpus"]
            _tell_skipped(summary, echo)
            # one short line; why this precision (--precision auto's reason) is in `textgen info`
            echo(f"training {run_dir}: {summary['chars']:,} characters, vocabulary {trainer.vocab.size}, "
                 f"{trainer.config.precision}")
        reason = trainer.run(_hooks(trainer, request.show_progress), stop=stop)
        if reason not in ("budget", "early stopping"):
            # the current step's, which the chief wrote (another worker's meta has no such record)
            echo(f"{reason}: saved checkpoint {run_dir / ckpt.checkpoint_name(trainer.progress.step)}")
    return run_dir, reason, trainer.progress


def _budget_spent(trainer) -> bool:
    """Whether a reopened run's step or epoch budget is already spent (--minutes counts per
    session, so it never is at the start)."""
    from textgen.policy import budget_reached

    c, p = trainer.config, trainer.progress
    return budget_reached(p.step, p.epoch, c.steps, c.epoch_budget(), out_of_time=False)


def _tell_skipped(summary: dict, echo) -> None:
    """One line naming the corpus directories' files that were skipped (binary, undecodable or
    unreadable), also when the corpus came from the cache."""
    skipped = summary.get("skipped")
    if skipped:
        more = ", ..." if skipped["count"] > len(skipped["names"]) else ""
        echo(f"skipped {skipped['count']:,} binary, undecodable or unreadable "
             f"file{'s' if skipped['count'] != 1 else ''} in the corpus directories: "
             f"{', '.join(skipped['names'])}{more}")


def _hooks(trainer, show_progress: bool) -> list:
    """The progress bar and TensorBoard log of a training session."""
    from textgen.bars import TrainingBar
    from textgen.policy import total_steps
    from textgen.tensorboard import TensorBoardLog

    c = trainer.config
    total = total_steps(c.steps, c.epoch_budget(), trainer.train_data.num_windows)
    history = trainer.progress.history
    last_val = history[-1]["val_bpc"] if history else None  # a resumed run's last validation
    return [TrainingBar(total, trainer.progress.step, show=show_progress, val_bpc=last_val),
            TensorBoardLog(trainer.run_dir, write=trainer.chief)]


def _create_run(trainer, run_dir: Path, stack: contextlib.ExitStack) -> StopRequest:
    """Assemble the new run in a staging directory (lock, vocabulary, step-0 checkpoint,
    run.json) and rename it into place. Returns the StopRequest installed meanwhile."""
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
        trainer.run_dir = staging
        try:
            trainer.vocab.save(staging / runformat.VOCAB_FILE)
        except OSError as e:
            raise TextgenError(f"cannot write {staging / runformat.VOCAB_FILE}: {os_reason(e)}") from None
        trainer.save()  # step 0: a run always has a checkpoint to sample from and resume
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    runs.publish_run(staging, run_dir)
    lock.moved(run_dir)
    trainer.run_dir = run_dir
    return stop


def _reopen(run_dir: Path, request: RunRequest, chief: bool = True):
    """(trainer, meta) for resuming `run_dir`, after every check that can refuse it."""
    meta = runs.read_run_meta(run_dir)
    model_options, train_options = request.model_options, request.train_options
    changed = _differences(meta["model"], model_options) + _differences(
        meta["train"], {k: v for k, v in train_options.items() if k not in RESUMABLE_OPTIONS})
    if changed:
        raise TextgenError(f"cannot resume {run_dir} with a different setup ({'; '.join(changed)}); "
                           "drop those options or start a new run with --name")
    resumable = {k: v for k, v in train_options.items() if k in RESUMABLE_OPTIONS}
    if resumable.keys() & BUDGET_OPTIONS:  # a new budget replaces the saved one entirely
        resumable = {**dict.fromkeys(BUDGET_OPTIONS), **resumable}
    train_config = dataclasses.replace(meta["train"], **resumable)
    check_options(meta["model"], train_config)
    check_size(meta["model"])
    meta["train"] = train_config
    saved = meta["corpus"]
    paths = request.corpus or ([] if saved.get("default") else saved.get("paths", []))
    encoded, summary = load_corpus(paths, train_config.encoding, run_dir.parent, request.corpus_dir,
                                   request.show_progress)
    vocab = runs.load_vocab(run_dir, meta)
    if "init_from" in meta:  # fine-tuned: its vocabulary is its base's characters and the corpus's
        current, remap, _ = finetune.merge_vocabulary(vocab, encoded.chars, encoded.counts,
                                                      train_config.min_count)
    else:
        current, remap, _ = encoded.model_vocabulary(train_config.min_count)
    difference = _vocab_difference(vocab.chars, current.chars)
    if difference:
        raise TextgenError(f"the corpus's characters differ from run {run_dir.name}'s vocabulary "
                           f"({difference}); resume with the original corpus or start a new run")
    if saved.get("fingerprint") not in (None, summary["fingerprint"]) and not request.allow_corpus_change:
        raise TextgenError(f"the corpus text of run {run_dir.name} changed since it was trained "
                           f"({', '.join(summary['paths'])}); resume with the original text, or add "
                           "--allow-corpus-change to train on the new one")
    ckpt.checkpoint_dir(run_dir, meta, "last")  # refuse a run without a loadable checkpoint early
    train_data, val_data = make_batchers(encoded.ids, train_config.batch_size, train_config.seq_len,
                                         train_config.val_fraction, remap)
    summary.update(train_chars=int(train_data.streams.size), vocab_size=vocab.size)
    meta["corpus"] = summary

    from textgen.train import Trainer  # TensorFlow loads only once the inputs look right

    return Trainer(run_dir, vocab, train_data, val_data, meta["model"], train_config, meta, chief), meta


def _prepare_new(request: RunRequest, chief: bool = True, echo=lambda line: None):
    """(trainer, run_dir) of a new run, or with `request.init_from` a fine-tuning run
    (`textgen.finetune`); nothing is written yet. A non-chief worker's run directory is the
    chief's (it may exist already): it is not checked."""
    base = finetune.open_base(request.init_from, request.runs_root, request.init_checkpoint) \
        if request.init_from is not None else None
    train_options, model_options = request.train_options, request.model_options
    if base:  # a fine-tuning run's own default learning rate
        train_options = {"learning_rate": FinetuneConfig.learning_rate, **train_options}
        base_model = finetune.model_config(base.meta["model"], model_options, base.meta["model"].vocab_size,
                                           base.run_dir.name)  # contradicting shapes: refused now
    train_config = TrainConfig(**train_options)
    check_options(base_model if base else ModelConfig(vocab_size=1, **model_options), train_config)
    encoded, summary = load_corpus(request.corpus, train_config.encoding, request.runs_root,
                                   request.corpus_dir, request.show_progress)
    if base:
        vocab, remap, folded = finetune.merge_vocabulary(base.vocab, encoded.chars, encoded.counts,
                                                         train_config.min_count)
        model_config = dataclasses.replace(base_model, vocab_size=vocab.size)
    else:
        vocab, remap, folded = encoded.model_vocabulary(train_config.min_count)
        model_config = ModelConfig(vocab_size=vocab.size, **model_options)
        # the run keeps the head it starts with, whatever a later version would choose
        model_config = dataclasses.replace(model_config, head_shortlist=shortlist_for(model_config))
    if folded:
        summary["folded"] = folded
    check_size(model_config)  # now that the vocabulary is known
    run_dir = Path(request.runs_root) / (request.name or time.strftime("%Y%m%d-%H%M%S"))
    if chief:
        _refuse_existing(run_dir)

    from textgen.precision import resolve  # TensorFlow loads only once the inputs look right

    precision, why = resolve(train_config.precision)  # the run keeps this choice for good
    train_config = dataclasses.replace(train_config, precision=precision)
    meta = {"format": runformat.FORMAT, "version": runformat.VERSION, "name": run_dir.name,
            "model": model_config, "train": train_config, "corpus": summary,
            "precision_reason": why, "vocab_sha256": runs.vocab_fingerprint(vocab),
            "checkpoints": {}}
    if base:
        meta["init_from"] = finetune.lineage_record(base.run_dir, base.meta, base.checkpoint)
    train_data, val_data = make_batchers(encoded.ids, train_config.batch_size, train_config.seq_len,
                                         train_config.val_fraction, remap)
    summary.update(train_chars=int(train_data.streams.size), vocab_size=vocab.size)

    from textgen.train import Trainer

    trainer = Trainer(run_dir, vocab, train_data, val_data, model_config, train_config, meta, chief)
    unigram = train_config.head_bias == "unigram"
    if base:
        finetune.start_from_base(trainer, base)
        for line in finetune.describe_start(base, vocab):
            echo(line)
    elif unigram or trainer.model.shortlist:  # every worker counts the same text: same start
        trainer.start_output_layer(train_data.char_counts(vocab.size), unigram)
    if chief:
        _refuse_existing(run_dir)  # again: building the trainer took a while
    return trainer, run_dir


def _refuse_existing(run_dir: Path) -> None:
    if (run_dir / runformat.RUN_FILE).exists():
        raise TextgenError(f"run {run_dir} already exists; add --resume to continue it, "
                           "or choose another --name")
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise TextgenError(f"run directory {run_dir} already exists and is not a textgen run; "
                           "pick another --name")


def _differences(saved, given: dict) -> list[str]:
    """'name: saved -> given' for each given option that differs from the saved config."""
    return [f"{k}: {getattr(saved, k)!r} -> {v!r}" for k, v in given.items()
            if getattr(saved, k) != v]


def _vocab_difference(saved: list[str], chars: list[str]) -> str | None:
    """A description of how the corpus's characters differ from the run's vocabulary."""
    added, missing = sorted(set(chars) - set(saved)), sorted(set(saved) - set(chars))
    parts = ([f"{len(added)} new ({' '.join(repr(c) for c in added[:10])})"] if added else []) + \
        ([f"{len(missing)} missing ({' '.join(repr(c) for c in missing[:10])})"] if missing else [])
    return ", ".join(parts) or None
