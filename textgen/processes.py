"""Asking the operating system about other processes: a base module that run directories
(`textgen.runlock`, `textgen.runs`) and the corpus cache (`textgen.corpus_cache`) both use, so
the data modules need not know about runs."""

from __future__ import annotations

import os

def process_alive(pid: int) -> bool | None:
    """Whether a process with this PID exists (signal 0 probes without signalling); None where
    that cannot be asked (Windows, where `os.kill(pid, 0)` would terminate the process)."""
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
