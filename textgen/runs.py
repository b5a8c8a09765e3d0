"""Run directories: finding them, naming them, creating them atomically, and run.json.

Layout of `<runs-dir>/<run-name>/` (checkpoints themselves are `textgen.checkpoint`'s job):

    run.json        model + train config, corpus summary, history, and pointers
                    {"checkpoints": {"last": ..., "best": ...}} to complete checkpoints
    vocab.json      the vocabulary (textgen.vocab)
    ckpt-<step>/    checkpoints (textgen.checkpoint)
    train/ validation/   TensorBoard event files, one TensorBoard run each
    train.lock      held by the training process (textgen.runlock)

A new run is assembled in a hidden `.<name>.new-<pid>/` next to it and renamed into place, so a
run directory either does not exist or loads. run.json is replaced atomically and validated
field by field whenever it is read (`read_run_meta`, the one schema): a damaged field is a
one-line error, never a traceback further on. No TensorFlow here.
"""

from __future__ import annotations

import errno as errno_codes
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from textgen.atomic import atomic_write_text, fsync_path
from textgen.config import MODEL_FIELDS_BEFORE, ModelConfig, TrainConfig, from_dict, to_dict
from textgen.errors import TextgenError, os_reason
from textgen.processes import process_alive
from textgen.runlock import lock_owner

RUN_FILE = "run.json"
VOCAB_FILE = "vocab.json"
RUN_FORMAT = "textgen-run"
LATEST = "latest"  # accepted as RUN by every command: the most recently updated run
CHECKPOINT_RE = re.compile(r"ckpt-(\d{8})")
NAME_RE = re.compile(r"[\w-]{1,100}")  # letters (any script), digits, '_' and '-'


# ---------------------------------------------------------------------------- finding runs


def check_run_name(name: str) -> str:
    """`name` if it is a usable run name (letters, digits, '-', '_'; no path), else TextgenError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise TextgenError(f"--name {name!r} is not a usable run name; use letters, digits, '-' or '_' "
                           "(at most 100), and --runs-dir to put runs elsewhere")
    return name


def latest_run(root: str | Path) -> Path:
    """The most recently updated run under `root` (by the time its run.json was written);
    hidden directories (runs being created) are not runs."""
    root = Path(root)
    runs = [p.parent for p in root.glob(f"*/{RUN_FILE}") if not p.parent.name.startswith(".")] \
        if root.is_dir() else []
    if not runs:
        raise TextgenError(f"no run found in {root}/; train one first with `textgen train`")
    return max(runs, key=lambda p: ((p / RUN_FILE).stat().st_mtime, p.name))


def resolve_run(run: str | None, root: str | Path) -> Path:
    """A run given by path or by name under `root`; the latest run when `run` is None or
    "latest"."""
    if run is None or run == LATEST:
        return latest_run(root)
    for candidate in (Path(run), Path(root) / run):
        if (candidate / RUN_FILE).is_file():
            return candidate
    raise TextgenError(f"no run found at {run} (looked for {run}/{RUN_FILE} and "
                       f"{Path(root) / run}/{RUN_FILE}); `textgen info latest` shows the newest run")


# ---------------------------------------------------------------------------- creating a run


def staging_dir(root: Path, name: str) -> Path:
    """Where a new run `name` is assembled before it is renamed into place."""
    return Path(root) / f".{name}.new-{os.getpid()}"


def clean_stale_staging(root: Path, name: str) -> None:
    """Remove staging directories of `name` left by processes that died while creating it."""
    for path in Path(root).glob(f".{name}.new-*"):  # run names hold no glob characters
        pid = path.name.rsplit("-", 1)[-1]
        if (path.is_dir() and lock_owner(path) is None
                and not (pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid)) is not False)):
            shutil.rmtree(path, ignore_errors=True)


def publish_run(staging: Path, run_dir: Path) -> None:
    """Rename a fully written staging directory to `run_dir` (which must not hold a run)."""
    try:
        os.rename(staging, run_dir)  # replaces an empty directory, refuses a non-empty one
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        if e.errno in (errno_codes.ENOTEMPTY, errno_codes.EEXIST, errno_codes.ENOTDIR):
            raise TextgenError(f"run directory {run_dir} already exists; use --resume to continue it "
                               "or pick another --name") from None
        raise TextgenError(f"cannot create run directory {run_dir}: {os_reason(e)}") from None
    fsync_path(run_dir.parent, directory=True)


# ---------------------------------------------------------------------------- run.json


def read_json(path: Path, what: str) -> Any:
    """A JSON file of a run; missing or unparsable is a one-line TextgenError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TextgenError(f"{path} is missing: the run is incomplete; retrain or restore it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise TextgenError(f"{path} is corrupt ({what}: {' '.join(str(e).split())}); "
                           "retrain or restore the run") from None


def write_run_meta(run_dir: Path, meta: dict) -> None:
    """Replace run.json atomically (and durably: the directory is fsynced after the rename)."""
    path = run_dir / RUN_FILE
    try:
        atomic_write_text(path, json.dumps(meta, indent=2, ensure_ascii=False))
    except OSError as e:
        raise TextgenError(f"cannot write {path}: {os_reason(e)}; the run keeps its previous "
                           "checkpoint; free space or fix permissions, then resume") from None
    fsync_path(run_dir, directory=True)


def read_run_meta(run_dir: Path) -> dict:
    """run.json, validated field by field; `model`/`train` become config dataclasses.

    Every field another module reads is checked here, so code further on can trust it."""
    meta = read_json(run_dir / RUN_FILE, "run metadata")
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise TextgenError(f"{run_dir / RUN_FILE} is not a textgen run file; retrain or restore the run")
    try:
        model = meta.get("model")
        if isinstance(model, dict):
            model = {**MODEL_FIELDS_BEFORE, **model}  # runs from before a field was added
        meta["model"] = from_dict(ModelConfig, model)
        train = meta.get("train")
        if isinstance(train, dict) and "head_bias" not in train:
            train = {**train, "head_bias": "zeros"}  # runs from before the option started at zeros
        meta["train"] = from_dict(TrainConfig, train)
        problem = meta_problem(meta)
    except TextgenError as e:
        problem = str(e)
    if problem:
        raise TextgenError(f"{run_dir / RUN_FILE} is damaged ({problem}); retrain or restore the run")
    return meta


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_text_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# field -> (check, what it must be); fields absent from a run.json are allowed unless required
_CORPUS_FIELDS = {
    "default": (lambda v: isinstance(v, bool), "true or false"),
    "paths": (_is_text_list, "a list of paths"),
    "encoding": (lambda v: isinstance(v, str), "a string"),
    "chars": (_is_count, "a character count"),
    "train_chars": (_is_count, "a character count"),
    "vocab_size": (_is_count, "a count"),
    "fingerprint": (lambda v: isinstance(v, str), "a string"),
    "folded": (lambda v: isinstance(v, dict) and all(_is_count(v.get(k)) for k in
                                                     ("min_count", "rare_chars", "rare_occurrences")),
               "a summary of the characters folded into the unknown symbol"),
    "skipped": (lambda v: isinstance(v, dict) and _is_count(v.get("count"))
                and _is_text_list(v.get("names")),
                "a count and list of names of the corpus files skipped"),
}
_HISTORY_FIELDS = {
    "step": (_is_count, "a step number"),
    "epoch": (_is_count, "an epoch number"),
    "train_loss": (lambda v: v is None or _is_real(v), "a number or null"),
    "train_bpc": (lambda v: v is None or _is_real(v), "a number or null"),
    "val_bpc": (_is_real, "a number"),
}


def meta_problem(meta: dict) -> str | None:
    """What is wrong with a run.json whose configs are already parsed, or None."""
    if not isinstance(meta.get("name", ""), str):
        return "name is not a string"
    if not _is_count(meta.get("step", 0)):
        return "step is not a non-negative integer"
    best = meta.get("best_val_bpc")
    if best is not None and not _is_real(best):
        return "best_val_bpc is not a number"
    if not isinstance(meta.get("vocab_sha256", ""), str):
        return "vocab_sha256 is not a string"
    if not isinstance(meta.get("precision_reason", ""), str):
        return "precision_reason is not a string"
    if not _is_count(meta["model"].head_shortlist):
        return "model.head_shortlist is not a non-negative integer"
    if meta["train"].precision == "auto":
        return "train.precision is 'auto', which a run resolves when it starts"
    checkpoints = meta.setdefault("checkpoints", {})
    if not isinstance(checkpoints, dict) or not all(
            k in ("last", "best") and isinstance(v, str) and CHECKPOINT_RE.fullmatch(v)
            for k, v in checkpoints.items()):
        return "checkpoints must map 'last'/'best' to names ckpt-<8 digits>"
    corpus = meta.setdefault("corpus", {})
    if not isinstance(corpus, dict):
        return "corpus is not an object"
    for key, (check, what) in _CORPUS_FIELDS.items():
        if key in corpus and not check(corpus[key]):
            return f"corpus.{key} is not {what}"
    history = meta.setdefault("history", [])
    if not isinstance(history, list):
        return "history is not a list"
    for i, record in enumerate(history):
        if not isinstance(record, dict):
            return f"history[{i}] is not an object"
        for key, (check, what) in _HISTORY_FIELDS.items():
            if key in ("step", "val_bpc") and key not in record:
                return f"history[{i}] has no {key}"
            if key in record and not check(record[key]):
                return f"history[{i}].{key} is not {what}"
    return None


def meta_to_json(meta: dict) -> dict:
    """The JSON-ready form of a run meta dict (config dataclasses turned into dicts)."""
    out = dict(meta)
    out["model"] = to_dict(meta["model"])
    out["train"] = to_dict(meta["train"])
    return out


# ---------------------------------------------------------------------------- vocabulary


def vocab_fingerprint(vocab) -> str:
    """sha256 of a vocabulary's characters, recorded in run.json as `vocab_sha256`."""
    import hashlib

    return hashlib.sha256("".join(vocab.chars).encode("utf-8", "surrogatepass")).hexdigest()


def load_vocab(run_dir: Path, meta: dict):
    """The run's vocab.json, refused unless it is the one the run's model was trained with."""
    from textgen.vocab import Vocabulary

    vocab = Vocabulary.load(run_dir / VOCAB_FILE)
    if vocab.size != meta["model"].vocab_size:
        raise TextgenError(f"{run_dir / VOCAB_FILE} has {vocab.size} characters but the model expects "
                           f"{meta['model'].vocab_size}; retrain or restore the run")
    recorded = meta.get("vocab_sha256")
    if recorded and recorded != vocab_fingerprint(vocab):
        raise TextgenError(f"{run_dir / VOCAB_FILE} is not the vocabulary this run was trained with "
                           "(its fingerprint differs from run.json's); retrain or restore the run")
    return vocab
