"""Checkpoints: a run's weights and resume state at one step, written atomically, read safely.

Layout of one checkpoint, `<run>/ckpt-<8-digit step>/` (the run directory is `textgen.runs`,
the file names and resume.npz's keys `textgen.runformat`'s):

    model.weights.h5  the weights, Keras native format
    resume.npz        optimizer slots and the carried hidden state (arrays only)
    state.json        step, epoch, window position, elapsed time, validation history

Crash safety (the process may be SIGKILLed at any instant):

* A checkpoint is written into `.ckpt-<step>.tmp-<pid>/`, every file fsynced, and renamed to
  `ckpt-<step>/` (then the directory is fsynced); only then is run.json replaced (atomically) to
  point at it. So run.json only ever names complete checkpoints; a kill between the rename and
  the run.json update leaves an unreferenced newer checkpoint, which a resume removes.
* Re-writing an existing `ckpt-<step>/` (after a resume) first moves the old one aside to
  `.ckpt-<step>.old-<pid>/`: a kill between the two renames leaves the pointed-at name missing
  but its complete old copy aside, which readers use and a resume renames back.

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
from typing import Callable

from textgen.atomic import atomic_write_text, fsync_path, write_new_file
from textgen.errors import TextgenError, os_reason
from textgen.runformat import (CHECKPOINT_RE, RESUME_FILE, RUN_FILE, STATE_FILE, VOCAB_FILE,
                               WEIGHTS_FILE, read_json)

CHECKPOINT_FILES = (WEIGHTS_FILE, RESUME_FILE, STATE_FILE)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


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


def _save_weights(model, path: Path) -> None:
    image = _weights_image(model)
    if image is not None:
        write_new_file(path, image)
        return
    with _quiet_h5py():
        try:
            model.save_weights(str(path))
        except RuntimeError as e:  # h5py reports some failed writes as RuntimeError
            found = re.search(r"errno = (\d+)", str(e))
            code = int(found.group(1)) if found else errno_codes.EIO
            raise OSError(code, " ".join(str(e).split())) from None
    fsync_path(path)


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
        write_new_file(tmp / RESUME_FILE, arrays_file.getvalue())
        atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))
        fsync_path(tmp, directory=True)
        if final.exists():  # re-saving a step: never leave `name` without a complete copy
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_path(run_dir, directory=True)
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


def checkpoint_dir(run_dir: Path, meta: dict, which: str = "best",
                   warn: Callable[[str], None] | None = None) -> Path:
    """The directory of the `best` or `last` checkpoint named in run.json.

    Reads only. If the named directory is missing (a kill while it was being replaced, or it
    was deleted), its complete copy moved aside is used, else the newest complete checkpoint;
    `warn` is told whenever the checkpoint loaded is not the one asked for.
    """
    if which not in ("best", "last"):
        raise TextgenError(f"--checkpoint must be 'best' or 'last', got {which!r}")
    warn = warn or (lambda message: None)
    name = meta["checkpoints"].get(which)
    if not name:
        name = meta["checkpoints"].get("last")
        if name:
            warn(f"run {run_dir.name} records no {which} checkpoint; using the last one, {name}")
    if not name:
        raise TextgenError(f"run {run_dir} has no checkpoint yet; train it longer or resume it")
    path = run_dir / str(name)
    if not path.exists():
        found = _aside_copies(run_dir, name) or sorted(
            (p for p in run_dir.glob("ckpt-*") if checkpoint_step(p.name) is not None and is_complete(p)),
            key=lambda p: p.name, reverse=True)
        if not found:
            raise TextgenError(f"checkpoint {path} is missing and the run has no other complete "
                               "checkpoint; retrain or restore the run")
        if checkpoint_step(found[0].name.lstrip(".").split(".")[0]) != checkpoint_step(name):
            warn(f"the {which} checkpoint {name} of run {run_dir.name} is missing; "
                 f"using {found[0].name} instead")
        return found[0]
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
                fsync_path(run_dir, directory=True)
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

    state = read_json(ckpt / STATE_FILE, "training state")
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
