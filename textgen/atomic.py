"""Durable file writes: a reader (or a crash) never sees a half-written file.

Hand-written because neither Keras nor the standard library offers it. Every file textgen
writes goes through these few helpers: `write_new_file` (write and fsync a file that did not
exist), `atomic_write_bytes` / `atomic_write_stream` (write a temporary file in the same
directory, fsync, then `os.replace`, which is atomic on POSIX and Windows), `fsync_path` (make a
rename durable).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_new_file(path: str | Path, data: bytes) -> None:
    """Write `data` to `path`, which must not exist yet, and fsync it."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def temporary_file(directory: str | Path, prefix: str) -> tuple[int, str]:
    """(fd, path) of a new temporary file in `directory` with the permissions of an ordinary
    file (mkstemp makes it 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    if hasattr(os, "fchmod"):  # POSIX only; Windows has no mode bits to fix
        os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically; on failure the old file is untouched."""
    atomic_write_stream(path, lambda f: f.write(data))


def atomic_write_stream(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace `path` atomically with what `write(file)` writes to a binary file object (for
    outputs too large to assemble in memory first); on failure the old file is untouched."""
    path = Path(path)
    fd, tmp = temporary_file(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace `path` with UTF-8 `text` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_path(path: str | Path, directory: bool = False) -> None:
    """fsync a file or directory by path; filesystems (and systems) that refuse a directory
    fsync are let be."""
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
