"""The one exception type users see: a problem with their input, said in one line."""

import os


class TextgenError(Exception):
    """A user-facing error: the CLI prints `Error: <message>` and exits non-zero, no traceback.

    The message names what is wrong and how to fix it, on one line.
    """

    exit_code = 2


def os_reason(e: OSError) -> str:
    """A one-line reason for an OSError (h5py's messages span several lines)."""
    if e.errno:
        return os.strerror(e.errno)
    return " ".join(str(e.strerror or e).split())
