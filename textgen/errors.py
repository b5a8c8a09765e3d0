"""The one exception type users see: a problem with their input, said in one line."""


class TextgenError(Exception):
    """A user-facing error: the CLI prints `Error: <message>` and exits non-zero, no traceback.

    The message names what is wrong and how to fix it, on one line.
    """

    exit_code = 2
