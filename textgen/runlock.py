"""The run lock: one trainer per run directory, with the owner's PID for the message.

`train.lock` is held with `flock`, which the kernel releases when its owner dies however it dies
(even SIGKILL), so a lock left by a dead process is simply taken over; a live owner is named.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from textgen.errors import TextgenError, os_reason
from textgen.processes import process_alive

LOCK_FILE = "train.lock"


class RunLock:
    """An exclusive lock on a run directory: `train.lock`, flocked, holding the owner's PID.

    A second trainer on the same run is refused, with the owner's PID. The kernel drops a flock
    when its process dies (even by SIGKILL), so a lock file left by a dead process is taken over.
    Where flock is unavailable (Windows), the PID alone decides: a lock whose PID is not a
    running process is stale.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self):
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise TextgenError(f"cannot lock run {self.path.parent}: {os_reason(e)}; training needs "
                                   "a writable run directory") from None
            if not _try_lock(fd, self.path):
                os.close(fd)
                pid = _read_pid(self.path)
                who = f"process {pid}" if pid else "another process"
                raise TextgenError(
                    f"run {self.path.parent} is being trained by {who}; wait for it or stop it"
                )
            try:  # the file may have been unlinked by its previous owner between open and lock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                os.fsync(fd)
            except OSError as e:
                os.close(fd)
                raise TextgenError(f"cannot lock run {self.path.parent}: {os_reason(e)}") from None
            self._fd = fd
            return self
        raise TextgenError(f"cannot take the lock {self.path}; remove it if no trainer is running")

    def moved(self, run_dir: Path) -> None:
        """The locked directory was renamed to `run_dir` (the flock stays with the file)."""
        self.path = Path(run_dir) / LOCK_FILE

    def __exit__(self, *exc):
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        os.close(self._fd)  # releases the flock
        self._fd = None


def lock_owner(run_dir: Path) -> int | None:
    """PID of the live process holding `run_dir`'s lock, None if nobody holds it."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _try_lock(fd, path, shared=True):
            return None
        return _read_pid(path) or -1
    finally:
        os.close(fd)


def _try_lock(fd: int, path: Path, shared: bool = False) -> bool:
    """Take a non-blocking flock on `fd` (released when the fd is closed or the process dies)."""
    try:
        import fcntl
    except ImportError:  # no flock: fall back to the PID in the file
        pid = _read_pid(path)
        return pid is None or pid == os.getpid() or not process_alive(pid)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a filesystem without flock: fall back to the PID
        pid = _read_pid(path)
        return pid is None or pid == os.getpid() or not process_alive(pid)
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


    except (OverflowError, ValueError):
        return False
    return True
