"""The one exception type for mistakes a user can fix (bad file, bad field, bad flag).

Command-line entry points catch it, print its message on one line and exit with status 2;
every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A user-facing error; its message names the file, line or field at fault."""


class BackendError(Exception):
    """Another process we started (e.g. the PyTorch side) failed; carries its stderr tail."""


class Interrupted(Exception):
    """A run stopped by Ctrl-C; the message says at which step and what resumes it."""
