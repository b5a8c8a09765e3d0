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

Crash safety (the process may be SIGKILLed at any instant):

* A new run is assembled in a hidden `.<name>.new-<pid>/` next to it (vocabulary, a step-0
  checkpoint, run.json) and renamed into place, so a run directory either does not exist or
  loads. A leftover staging directory of a dead process is removed by the next `train`.
* A checkpoint is written into `.ckpt-<step>.tmp-<pid>/`, every file fsynced, and renamed to
  `ckpt-<step>/` (then the directory is fsynced); only then is run.json replaced (atomically) to
  point at it. So run.json only ever names complete checkpoints; a kill between the rename and
  the run.json update leaves an unreferenced newer checkpoint, which a resume removes.
* Re-writing an existing `ckpt-<step>/` (after a resume) first moves the old one aside to
  `.ckpt-<step>.old-<pid>/`: a kill between the two renames leaves the pointed-at name missing
  but its complete old copy aside, which readers use and a resume renames back.
* `train.lock` is held with `flock`, which the kernel releases when its owner dies however it
  dies: a lock left by a dead process is simply taken over; a live owner is named by PID.

Nothing here executes code from a run directory: weights are HDF5 arrays (checked for the HDF5
signature, then `load_weights`), resume state is `np.load(allow_pickle=False)` and JSON, and
checkpoint names are checked against `ckpt-<8 digits>` before they become paths.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from textgen.atomic import atomic_write_text
from textgen.config import ModelConfig, TrainConfig, from_dict, to_dict
from textgen.errors import TextgenError, os_reason
from textgen.runlock import lock_owner, process_alive

RUN_FILE = "run.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "model.weights.h5"
RESUME_FILE = "resume.npz"
STATE_FILE = "state.json"
EVENTS_DIR = "events"
RUN_FORMAT = "textgen-run"
CHECKPOINT_FILES = (WEIGHTS_FILE, RESUME_FILE, STATE_FILE)
CHECKPOINT_RE = re.compile(r"ckpt-(\d{8})")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _fsync_path(path: Path, directory: bool = False) -> None:
    """fsync a file or directory by path; filesystems that refuse directory fsync are let be."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def _quiet_h5py():
    """Keep h5py's reports about objects of a failed file (Cython prints them through
    sys.excepthook and sys.unraisablehook while freeing them) off the terminal: the failure
    itself is reported as one line."""
    hooks = sys.excepthook, sys.unraisablehook
    sys.excepthook = lambda *args: None
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = hooks


def _weights_image(model) -> bytes | None:
    """The model's `.weights.h5` file built in memory by Keras's own writer, or None where this
    Keras lacks the (internal) writer that takes a BytesIO.

    Why not `model.save_weights(path)`: when a write fails on a full disk, h5py reports it, then
    prints tracebacks while freeing the failed file's objects, and freeing them can crash the
    interpreter (seen with h5py 3.x: a segfault in the garbage collector). Built in memory,
    the file is written to disk by plain Python I/O, whose failure is an ordinary OSError.
    """
    try:
        from keras.src.saving import saving_lib

        buffer = io.BytesIO()
        store = saving_lib.H5IOStore(buffer, mode="w")
        saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="",
                               visited_saveables=set())
        store.close()
    except (ImportError, AttributeError, TypeError):
        return None
    return buffer.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync a new file."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_weights(model, path: Path) -> None:
    image = _weights_image(model)
    if image is not None:
        _write_file(path, image)
        return
    with _quiet_h5py():
        try:
            model.save_weights(str(path))
        except RuntimeError as e:  # h5py reports some failed writes as RuntimeError
            found = re.search(r"errno = (\d+)", str(e))
            code = int(found.group(1)) if found else errno_codes.EIO
            raise OSError(code, " ".join(str(e).split())) from None
    _fsync_path(path)


# ---------------------------------------------------------------------------- finding runs


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
        raise TextgenError(f"cannot create run directory {run_dir}: {os_reason(e)}") from None
    return run_dir


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
    """A run given by path or by name under `root`; the latest run when `run` is None."""
    if run is None:
        return latest_run(root)
    for candidate in (Path(run), Path(root) / run):
        if (candidate / RUN_FILE).is_file():
            return candidate
    raise TextgenError(f"no run found at {run} (looked for {run}/{RUN_FILE} and {Path(root) / run}/{RUN_FILE})")


# ---------------------------------------------------------------------------- creating a run


def staging_dir(root: Path, name: str) -> Path:
    """Where a new run `name` is assembled before it is renamed into place."""
    return Path(root) / f".{name}.new-{os.getpid()}"


def clean_stale_staging(root: Path, name: str) -> None:
    """Remove staging directories of `name` left by processes that died while creating it."""
    for path in Path(root).glob(f".{glob_escape(name)}.new-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if (path.is_dir() and lock_owner(path) is None
                and not (pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid)))):
            shutil.rmtree(path, ignore_errors=True)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


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
    _fsync_path(run_dir.parent, directory=True)


# ---------------------------------------------------------------------------- run.json


def _read_json(path: Path, what: str) -> Any:
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
    _fsync_path(run_dir, directory=True)


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
            k in ("last", "best") and isinstance(v, str) and CHECKPOINT_RE.fullmatch(v)
            for k, v in meta["checkpoints"].items()
        ):
            raise TextgenError("checkpoints must map 'last'/'best' to names ckpt-<8 digits>")
    except (KeyError, TypeError, ValueError, TextgenError) as e:
        raise TextgenError(f"{run_dir / RUN_FILE} is damaged ({e}); retrain or restore the run") from None
    return meta


def meta_to_json(meta: dict) -> dict:
    """The JSON-ready form of a run meta dict (config dataclasses turned into dicts)."""
    out = dict(meta)
    out["model"] = to_dict(meta["model"])
    out["train"] = to_dict(meta["train"])
    return out


# ---------------------------------------------------------------------------- checkpoints


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint taken at `step`."""
    return f"ckpt-{step:08d}"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint directory name, None if it is not one."""
    match = CHECKPOINT_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """Whether `path` is a directory holding every file of a checkpoint."""
    return path.is_dir() and all((path / f).is_file() for f in CHECKPOINT_FILES)


def save_checkpoint(run_dir: Path, model, state: dict, arrays: dict) -> str:
    """Write weights, resume arrays and state into `ckpt-<step>/`, atomically. Returns its name.

    `arrays` maps names to numpy arrays (optimizer slots, carried state, RNG state). A failure
    (disk full, read-only, ...) is a one-line TextgenError and leaves every other checkpoint,
    and the one of the same name if there was one, as it was.
    """
    import numpy as np

    name = checkpoint_name(state["step"])
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    aside = run_dir / f".{name}.old-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _save_weights(model, tmp / WEIGHTS_FILE)
        arrays_file = io.BytesIO()
        np.savez(arrays_file, **arrays)
        _write_file(tmp / RESUME_FILE, arrays_file.getvalue())
        atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))
        _fsync_path(tmp, directory=True)
        if final.exists():  # re-saving a step: never leave `name` without a complete copy
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(tmp, final)
        _fsync_path(run_dir, directory=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside.exists() and not final.exists():
            with contextlib.suppress(OSError):
                os.replace(aside, final)
        raise TextgenError(
            f"cannot write checkpoint {final}: {os_reason(e)}; the previous checkpoint is kept; "
            "free space or fix permissions, then resume with --resume"
        ) from None
    shutil.rmtree(aside, ignore_errors=True)
    return name


def prune_checkpoints(run_dir: Path, keep: int, protect: set[str]) -> None:
    """Delete all but the newest `keep` checkpoints, never touching those in `protect`; also
    delete checkpoints newer than the newest protected one (left by a run that was killed
    before run.json named them, and since replayed)."""
    steps = {p.name: checkpoint_step(p.name) for p in run_dir.glob("ckpt-*") if p.is_dir()}
    ckpts = sorted(n for n, s in steps.items() if s is not None)
    newest = max((steps[n] for n in protect if steps.get(n) is not None), default=None)
    if newest is not None:
        for name in [n for n in ckpts if steps[n] > newest and n not in protect]:
            shutil.rmtree(run_dir / name, ignore_errors=True)
            ckpts.remove(name)
    for name in ckpts[:-keep] if keep > 0 else []:
        if name not in protect:
            shutil.rmtree(run_dir / name, ignore_errors=True)


def _aside_copies(run_dir: Path, name: str) -> list[Path]:
    """Complete copies of checkpoint `name` moved aside by a re-save that was interrupted."""
    return sorted(p for p in run_dir.glob(f".{name}.old-*") if is_complete(p))


def checkpoint_dir(run_dir: Path, meta: dict, which: str = "best") -> Path:
    """The directory of the `best` or `last` checkpoint named in run.json.

    Reads only. If the named directory is missing (a kill while it was being replaced, or it
    was deleted), its complete copy moved aside is used, else the newest complete checkpoint.
    """
    if which not in ("best", "last"):
        raise TextgenError(f"--checkpoint must be 'best' or 'last', got {which!r}")
    name = meta["checkpoints"].get(which) or meta["checkpoints"].get("last")
    if not name:
        raise TextgenError(f"run {run_dir} has no checkpoint yet; train it longer or resume it")
    path = run_dir / str(name)
    if not path.exists():
        found = _aside_copies(run_dir, name) or sorted(
            (p for p in run_dir.glob("ckpt-*") if checkpoint_step(p.name) is not None and is_complete(p)),
            key=lambda p: p.name, reverse=True)
        if found:
            return found[0]
        raise TextgenError(f"checkpoint {path} is missing and the run has no other complete "
                           "checkpoint; retrain or restore the run")
    if not (path / WEIGHTS_FILE).is_file():
        raise TextgenError(f"checkpoint {path} is missing its weights; retrain or restore the run")
    return path


def recover(run_dir: Path, meta: dict) -> None:
    """Tidy what killed trainers left behind; call with the run's lock held.

    Puts back a checkpoint moved aside by an interrupted re-save, removes half-written
    temporary checkpoints and files, and removes checkpoints newer than run.json's `last`
    (complete, but never recorded in run.json: the resumed run replays and rewrites them).
    """
    for aside in run_dir.glob(".ckpt-*.old-*"):
        target = run_dir / aside.name[1:].split(".old-")[0]
        if is_complete(aside) and not target.exists() and checkpoint_step(target.name) is not None:
            try:
                os.replace(aside, target)
                _fsync_path(run_dir, directory=True)
            except OSError as e:
                raise TextgenError(f"cannot restore checkpoint {target} from {aside.name}: {os_reason(e)}; "
                                   "training needs a writable run directory") from None
        else:
            shutil.rmtree(aside, ignore_errors=True)
    for tmp in run_dir.glob(".ckpt-*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for tmp in list(run_dir.glob(f".{RUN_FILE}.*.tmp")) + list(run_dir.glob(f".{VOCAB_FILE}.*.tmp")):
        tmp.unlink(missing_ok=True)
    last = checkpoint_step(meta["checkpoints"].get("last") or "")
    if last is not None:
        referenced = set(meta["checkpoints"].values())
        for path in run_dir.glob("ckpt-*"):
            step = checkpoint_step(path.name)
            if step is not None and step > last and path.name not in referenced:
                shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------- loading


def _looks_like_hdf5(path: Path) -> bool:
    """Whether `path` carries the HDF5 signature (at offset 0 or a power of two from 512)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            offset = 0
            while offset + len(HDF5_SIGNATURE) <= size:
                f.seek(offset)
                if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False
    return False


def load_weights(model, ckpt: Path) -> None:
    """Load `model.weights.h5` into a built model; a damaged or foreign file is a TextgenError.

    Only HDF5 weight files are handed to Keras (`load_weights` reads arrays; it never
    deserializes objects or code): a `.keras` archive or anything else put in its place is refused.
    """
    path = ckpt / WEIGHTS_FILE
    if not _looks_like_hdf5(path):
        raise TextgenError(f"{path} is corrupt: not an HDF5 weights file; retrain or restore the run")
    try:
        with _quiet_h5py():
            model.load_weights(str(path))
    except Exception as e:  # h5py/Keras raise many types for damaged files
        raise TextgenError(
            f"{path} is corrupt or does not match the model ({type(e).__name__}); retrain or restore the run"
        ) from None


def load_resume(ckpt: Path) -> tuple[dict, dict]:
    """The (state dict, arrays dict) saved with a checkpoint, for resuming training."""
    import numpy as np

    state = _read_json(ckpt / STATE_FILE, "training state")
    path = ckpt / RESUME_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise TextgenError(f"{path} holds pickled Python objects, which textgen never writes and "
                               "refuses to load; retrain or restore the run") from None
        raise TextgenError(f"{path} is corrupt (ValueError); retrain or restore the run") from None
    except Exception as e:  # zipfile/numpy raise several types for damaged files
        raise TextgenError(f"{path} is corrupt ({type(e).__name__}); retrain or restore the run") from None
    if not isinstance(state, dict):
        raise TextgenError(f"{ckpt / STATE_FILE} is corrupt (not a JSON object); retrain or restore the run")
    return state, arrays


def vocab_fingerprint(vocab) -> str:
    """sha256 of a vocabulary's characters, recorded in run.json as `vocab_sha256`."""
    import hashlib

    return hashlib.sha256("".join(vocab.chars).encode("utf-8", "surrogatepass")).hexdigest()


def check_vocab(run_dir: Path, meta: dict, vocab) -> None:
    """Refuse a vocab.json that is not the one the run's model was trained with."""
    if vocab.size != meta["model"].vocab_size:
        raise TextgenError(f"{run_dir / VOCAB_FILE} has {vocab.size} characters but the model expects "
                           f"{meta['model'].vocab_size}; retrain or restore the run")
    recorded = meta.get("vocab_sha256")
    if isinstance(recorded, str) and recorded != vocab_fingerprint(vocab):
        raise TextgenError(f"{run_dir / VOCAB_FILE} is not the vocabulary this run was trained with "
                           "(its fingerprint differs from run.json's); retrain or restore the run")


def load_for_inference(run: str | None, runs_dir: str | Path, which: str = "best"):
    """(model, vocab, meta) of a run's `best` or `last` checkpoint, ready to sample."""
    from textgen.model import build_model
    from textgen.vocab import Vocabulary

    run_dir = resolve_run(run, runs_dir)
    for attempt in range(3):
        meta = read_run_meta(run_dir)
        vocab = Vocabulary.load(run_dir / VOCAB_FILE)
        check_vocab(run_dir, meta, vocab)
        ckpt = checkpoint_dir(run_dir, meta, which)
        model = build_model(meta["model"])
        try:
            load_weights(model, ckpt)
        except TextgenError:
            # a trainer running meanwhile may have pruned it after writing a newer one: look again
            moved_on = read_run_meta(run_dir)["checkpoints"] != meta["checkpoints"]
            if attempt < 2 and not is_complete(ckpt) and moved_on:
                continue
            raise
        return model, vocab, meta
    raise AssertionError("unreachable")
