"""Ctrl-C and SIGTERM while training: the first one asks for a clean stop, a second one aborts.

The first SIGINT/SIGTERM only sets a flag that the training loop reads after each step, so the
step finishes and a consistent checkpoint is written (a KeyboardInterrupt could land between
two updates of the weights). A second signal, for a user who will not wait for a long validation
or save to finish, raises `Aborted` at once: checkpoints are written atomically, so the run keeps
its last complete checkpoint, and the CLI exits with 128 + the signal number (130 for Ctrl-C).
"""

from __future__ import annotations

import signal
import threading


class Aborted(Exception):
    """A second stop signal arrived: stop now, without a checkpoint of the current step."""

    def __init__(self, signal_name: str, exit_code: int):
        super().__init__(signal_name)
        self.signal_name, self.exit_code = signal_name, exit_code


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step; a second one raises
    `Aborted`.

    Installed only in the main thread (elsewhere signals cannot be caught, and the flag stays
    unset). `requested` is the first signal's name.

    Example:

        with StopRequest() as stop:
            while not stop.requested:
                train_one_step()
    """

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:
            raise Aborted(name, 128 + signum)
        self.requested = name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
