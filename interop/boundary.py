"""The one place where a command's failure becomes an exit status and a message (both CLIs).

- `UserError`: exit 2, its one line.
- An OS error the user causes or can mend (a permission, a read-only or full disk, a
  path through a file, a missing directory), even when a library wrapped it: exit 2,
  one line naming the path.
- `Interrupted` (Ctrl-C during training; it says at which step and which checkpoint
  resumes) or a bare `KeyboardInterrupt`: exit 130.
- `BackendError` (a process we started failed): exit 1 with its report.
- Anything else is a bug: its traceback, then a line saying so, exit 1.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable

from interop.errors import BackendError, Interrupted, UserError

USER_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENOENT,
    errno.ENAMETOOLONG,
    errno.ENOTEMPTY,
    errno.EEXIST,
}


# How tensorstore (under Orbax) reports an OS error: in its message, not as an OSError.
_ERRNO_IN_TEXT = re.compile(r"os_error_code='(\d+)'")
_PATH_IN_TEXT = re.compile(r'(?:Failed writing|local file|Error writing [^"]*) "([^"]+)"')


def user_os_error(exc: BaseException) -> OSError | None:
    """The user-caused OSError behind `exc` (itself, what it was raised from, or one a
    library spelled out in its message)."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
            return exc
        found = _ERRNO_IN_TEXT.search(str(exc))
        if found and int(found.group(1)) in USER_ERRNOS:
            code = int(found.group(1))
            paths = _PATH_IN_TEXT.findall(str(exc))
            return OSError(code, os.strerror(code), paths[-1] if paths else None)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def describe_os_error(err: OSError) -> str:
    where = err.filename if err.filename is not None else "a file"
    text = err.strerror or str(err)
    if err.filename2 is not None:
        return f"{where} -> {err.filename2}: {text}"
    return f"{where}: {text}"


class _Held(logging.Handler):
    """Keeps library log records (Orbax's background-thread tracebacks) until the command's
    outcome says whether they matter: they are shown unless the failure was the user's."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_command(prog: str, command: Callable[[], int | None], held: str = "absl") -> int:
    """Run `command`, turning its failure into the exit status and message above; the
    `held` logger's records are shown after it, unless it failed by the user's doing."""
    logger, handler = logging.getLogger(held), _Held()
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    users = True
    try:
        status = _outcome(prog, command)
        users = status in (2, 130)
        return status
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        for record in handler.records if not users else ():
            logger.handle(record)


def _outcome(prog: str, command: Callable[[], int | None]) -> int:
    try:
        return command() or 0
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BackendError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # a bug, unless a user's OS error sits behind it
        found = user_os_error(err)
        if found is not None:
            print(f"{prog}: error: {describe_os_error(found)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"{prog}: internal error (a bug in {prog}; the traceback is above)", file=sys.stderr)
        return 1
