"""The one exception type users see: a problem with their input, said in one line."""

import os


class TextgenError(Exception):
    """A user-facing error: the CLI prints `Error: <message>` and exits non-zero, no traceback.

    The message names what is wrong and how to fix it, on one line.
    """

    exit_code = 2


# characters str.splitlines() breaks at: a message holding one (say, a key read from a damaged
# file) would print as several lines
_LINE_BREAKS = {c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85,
                                                0x2028, 0x2029)}


def one_line(message: str) -> str:
    """`message` with its line-breaking characters escaped, so it prints as one line."""
    return str(message).translate(_LINE_BREAKS)


def os_reason(e: OSError) -> str:
    """A one-line reason for an OSError (h5py's messages span several lines)."""
    if e.errno:
        return os.strerror(e.errno)
    return " ".join(str(e.strerror or e).split())
