"""Run directories: config, vocabulary, weights and resume state, written atomically.

Layout of `checkpoints/<run-name>/`:

    run.json              model + train config, corpus summary, history, and pointers
                          {"checkpoints": {"last": ..., "best": ...}} to complete checkpoints
    vocab.json            the vocabulary (textgen.vocab)
    ckpt-00001200/        one complete checkpoint:
        model.weights.h5  the weights, Keras native format
        resume.npz        optimizer slots, carried hidden state, dropout RNG (arrays only)
        state.json        step, epoch, window position, elapsed time, validation history
    events/               TensorBoard event files
    train.lock            held by the training process (its PID)

A checkpoint is written into a temporary directory and renamed into place; run.json is replaced
atomically afterwards, so it only ever points at complete checkpoints. Nothing here unpickles:
weights are HDF5 arrays, resume state is `np.load(allow_pickle=False)` and JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from textgen.atomic import atomic_write_text
from textgen.config import ModelConfig, TrainConfig, from_dict, to_dict
from textgen.errors import TextgenError

RUN_FILE = "run.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "model.weights.h5"
RESUME_FILE = "resume.npz"
STATE_FILE = "state.json"
EVENTS_DIR = "events"
RUN_FORMAT = "textgen-run"


def new_run_dir(root: str | Path, name: str) -> Path:
    """Create and return `root/<name>`; an existing, non-empty one is refused."""
    root = Path(root)
    run_dir = root / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise TextgenError(
            f"run directory {run_dir} already exists; use --resume to continue it or pick another --name"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TextgenError(f"cannot create run directory {run_dir}: {e.strerror}") from None
    return run_dir


def latest_run(root: str | Path) -> Path:
    """The most recently updated run under `root` (by the time its run.json was written)."""
    root = Path(root)
    runs = [p.parent for p in root.glob(f"*/{RUN_FILE}")] if root.is_dir() else []
    if not runs:
        raise TextgenError(f"no run found in {root}/; train one first with `textgen train`")
    return max(runs, key=lambda p: ((p / RUN_FILE).stat().st_mtime, p.name))


def resolve_run(run: str | None, root: str | Path) -> Path:
    """A run given by path or by name under `root`; the latest run when `run` is None."""
    if run is None:
        return latest_run(root)
    for candidate in (Path(run), Path(root) / run):
        if (candidate / RUN_FILE).is_file():
            return candidate
    raise TextgenError(f"no run found at {run} (looked for {run}/{RUN_FILE} and {Path(root) / run}/{RUN_FILE})")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TextgenError(f"{path} is missing: the run is incomplete; retrain or restore it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TextgenError(f"{path} is corrupt ({what}: {e}); retrain or restore the run") from None


def write_run_meta(run_dir: Path, meta: dict) -> None:
    """Replace run.json atomically."""
    atomic_write_text(run_dir / RUN_FILE, json.dumps(meta, indent=2, ensure_ascii=False))


def read_run_meta(run_dir: Path) -> dict:
    """run.json, validated; returns the dict with `model`/`train` as config dataclasses."""
    meta = _read_json(run_dir / RUN_FILE, "run metadata")
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise TextgenError(f"{run_dir / RUN_FILE} is not a textgen run file; retrain or restore the run")
    try:
        meta["model"] = from_dict(ModelConfig, meta["model"])
        meta["train"] = from_dict(TrainConfig, meta["train"])
        meta.setdefault("checkpoints", {})
        if not isinstance(meta["checkpoints"], dict) or not all(
            isinstance(v, str) and v.startswith("ckpt-") for v in meta["checkpoints"].values()
        ):
            raise TextgenError("checkpoints must map 'last'/'best' to checkpoint names")
    except (KeyError, TypeError, TextgenError) as e:
        raise TextgenError(f"{run_dir / RUN_FILE} is damaged ({e}); retrain or restore the run") from None
    return meta


def meta_to_json(meta: dict) -> dict:
    """The JSON-ready form of a run meta dict (config dataclasses turned into dicts)."""
    out = dict(meta)
    out["model"] = to_dict(meta["model"])
    out["train"] = to_dict(meta["train"])
    return out


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint taken at `step`."""
    return f"ckpt-{step:08d}"


def save_checkpoint(run_dir: Path, model, state: dict, arrays: dict) -> str:
    """Write weights, resume arrays and state into `ckpt-<step>/`, atomically. Returns its name.

    `arrays` maps names to numpy arrays (optimizer slots, carried state, RNG state).
    """
    import numpy as np

    name = checkpoint_name(state["step"])
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save_weights(str(tmp / WEIGHTS_FILE))
        with open(tmp / RESUME_FILE, "wb") as f:
            np.savez(f, **arrays)
        atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TextgenError(
            f"cannot write checkpoint in {run_dir}: {e.strerror or e}; the previous checkpoint is kept"
        ) from None
    return name


def prune_checkpoints(run_dir: Path, keep: int, protect: set[str]) -> None:
    """Delete all but the newest `keep` checkpoints, never touching those in `protect`."""
    ckpts = sorted(p.name for p in run_dir.glob("ckpt-*") if p.is_dir())
    for name in ckpts[:-keep] if keep > 0 else []:
        if name not in protect:
            shutil.rmtree(run_dir / name, ignore_errors=True)


def checkpoint_dir(run_dir: Path, meta: dict, which: str = "best") -> Path:
    """The directory of the `best` or `last` checkpoint named in run.json."""
    if which not in ("best", "last"):
        raise TextgenError(f"--checkpoint must be 'best' or 'last', got {which!r}")
    name = meta["checkpoints"].get(which) or meta["checkpoints"].get("last")
    if not name:
        raise TextgenError(f"run {run_dir} has no checkpoint yet; train it longer or resume it")
    path = run_dir / str(name)
    if not (path / WEIGHTS_FILE).is_file():
        raise TextgenError(f"checkpoint {path} is missing its weights; retrain or restore the run")
    return path


def load_weights(model, ckpt: Path) -> None:
    """Load `model.weights.h5` into a built model; a damaged file is a TextgenError."""
    path = ckpt / WEIGHTS_FILE
    try:
        model.load_weights(str(path))
    except Exception as e:  # h5py/Keras raise many types for damaged files
        raise TextgenError(
            f"{path} is corrupt or does not match the model ({type(e).__name__}); retrain or restore the run"
        ) from None


def load_resume(ckpt: Path) -> tuple[dict, dict]:
    """The (state dict, arrays dict) saved with a checkpoint, for resuming training."""
    import numpy as np

    state = _read_json(ckpt / STATE_FILE, "training state")
    try:
        with np.load(ckpt / RESUME_FILE, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as e:  # zipfile/numpy raise several types for damaged files
        raise TextgenError(f"{ckpt / RESUME_FILE} is corrupt ({type(e).__name__}); retrain or restore the run") from None
    return state, arrays


def load_for_inference(run: str | None, runs_dir: str | Path, which: str = "best"):
    """(model, vocab, meta) of a run's `best` or `last` checkpoint, ready to sample."""
    from textgen.model import build_model
    from textgen.vocab import Vocabulary

    run_dir = resolve_run(run, runs_dir)
    meta = read_run_meta(run_dir)
    vocab = Vocabulary.load(run_dir / VOCAB_FILE)
    if vocab.size != meta["model"].vocab_size:
        raise TextgenError(f"{run_dir / VOCAB_FILE} has {vocab.size} characters but the model expects "
                           f"{meta['model'].vocab_size}; retrain or restore the run")
    ckpt = checkpoint_dir(run_dir, meta, which)
    model = build_model(meta["model"])
    load_weights(model, ckpt)
    return model, vocab, meta


class RunLock:
    """An exclusive lock on a run directory: `train.lock` holding the owner's PID.

    A second trainer on the same run is refused; a lock left by a dead process is taken over.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "train.lock"

    def __enter__(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise TextgenError(
                        f"run {self.path.parent} is being trained by process {pid}; wait for it or stop it"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            except OSError as e:
                raise TextgenError(f"cannot lock run {self.path.parent}: {e.strerror}") from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise TextgenError(f"cannot take the lock {self.path}; remove it if no trainer is running")

    def __exit__(self, *exc):
        if self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
