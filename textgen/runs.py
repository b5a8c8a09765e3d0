"""Run directories: finding them, naming them, creating them atomically, reading and writing
run.json (whose format is `textgen.runformat`'s).

Layout of `<runs-dir>/<run-name>/` (checkpoints themselves are `textgen.checkpoint`'s job):

    run.json        model + train config, corpus summary, history, and pointers
                    {"checkpoints": {"last": ..., "best": ...}} to complete checkpoints
    vocab.json      the vocabulary (textgen.vocab)
    ckpt-<step>/    checkpoints (textgen.checkpoint)
    train/ validation/   TensorBoard event files, one TensorBoard run each
    train.lock      held by the training process (textgen.runlock)

A new run is assembled in a hidden `.<name>.new-<pid>/` next to it and renamed into place, so a
run directory either does not exist or loads. run.json is replaced atomically and, whenever it
is read (`read_run_meta`), version-checked, migrated and validated field by field by
`textgen.runformat` (the one schema): a damaged field is a one-line error, never a traceback
further on. No TensorFlow here.
"""

from __future__ import annotations

import errno as errno_codes
import json
import os
import re
import shutil
from pathlib import Path

from textgen.atomic import atomic_write_text, fsync_path
from textgen.errors import TextgenError, os_reason
from textgen.processes import process_alive
from textgen.runformat import RUN_FILE, VOCAB_FILE, parse_run_meta, read_json
from textgen.runlock import lock_owner

LATEST = "latest"  # accepted as RUN by every command: the most recently updated run
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
    """run.json, version-checked, migrated and validated (`runformat.parse_run_meta`); `model`/
    `train` become config dataclasses."""
    path = run_dir / RUN_FILE
    return parse_run_meta(read_json(path, "run metadata"), path)


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
