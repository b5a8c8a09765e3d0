"""A one-line report when textgen dies natively, which Python itself cannot print.

TensorFlow's C++ code logs to file descriptor 2, which the CLI sends to a log file (see
`textgen.cli.entry`); when that code aborts or crashes, the process dies at once and the user
would see nothing, or only the shell's "Aborted". So before TensorFlow loads, the CLI forks a
tiny watcher process. It waits on a pipe that the main process holds: a main process that ends
normally (any Python exit, errors included) says so through the pipe first; one that vanishes
without a word crashed natively or was killed (SIGKILL), and the watcher prints one line saying so
and where TensorFlow's log is. After a normal end the watcher removes that log (each process has
its own, so they would pile up); after an abrupt one it is kept for the user to read.
Hand-written because neither Python nor TensorFlow offers it (faulthandler prints a Python
traceback, not a message for users). POSIX only: without `fork` nothing is watched (and the log
is removed at exit).
"""

from __future__ import annotations

import atexit
import os
import signal

_FINE = b"ok"


def watch(log_path: str, terminal_fd: int) -> bool:
    """Start the watcher of this process; it reports on `terminal_fd`. Returns whether one runs.

    Call before any thread is started (fork copies only the calling thread)."""
    if not hasattr(os, "fork"):
        atexit.register(_remove, log_path)  # nothing watches: only tidy up
        return False
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the watcher
        try:
            os.close(write_end)
            for sig in (signal.SIGINT, signal.SIGTERM):  # the main process decides what they do
                signal.signal(sig, signal.SIG_IGN)
            said = b""
            while chunk := os.read(read_end, 16):
                said += chunk
            if said != _FINE:
                message = ("Error: textgen ended abruptly (a native crash inside TensorFlow, or it was "
                           f"killed); TensorFlow's own messages are in {log_path}\n")
                os.write(terminal_fd, message.encode("utf-8", "backslashreplace"))
            else:
                _remove(log_path)
        finally:
            os._exit(0)
    os.close(read_end)
    atexit.register(_fine, write_end)
    return True


def _fine(write_end: int) -> None:
    """Tell the watcher this is a normal exit, then let it go."""
    try:
        os.write(write_end, _FINE)
        os.close(write_end)
    except OSError:
        pass


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
