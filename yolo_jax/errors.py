"""User-facing errors: raised for bad flags, configs, data files and inputs; the command-line front (cli.py) prints
them as one `error:` line.

A `UserError` carries only a message (its first line a summary naming the file, line or config field; further
lines, if any, list the individual problems). The subclasses also derive from the built-in exception that callers
catch for that kind of problem, so `except ValueError` / `pytest.raises(FileNotFoundError)` keep working.
"""

from __future__ import annotations

import os
import re
import sys
import traceback

TRACEBACK_ENV = 'YOLO_JAX_TRACEBACK'
EXIT_CODE = 2  # user errors; 1 stays for crashes (Python's own exit code for an uncaught exception)
_MAX_LINES = 20


class UserError(Exception):
    """A problem the user can fix (a config field, a data file, an input): shown as its message, no traceback."""


class ConfigError(UserError, ValueError):
    """A config field with an invalid value or an unknown name; the message names the field (config.x.y)."""


class FlagError(UserError, ValueError):
    """A command-line flag that is missing, has a bad value or does not fit the others; the message names it."""


class DataError(UserError, ValueError):
    """A data file that cannot be used (annotations, class names, images, weights); the message names it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the run needs does not exist; the message names it."""


class OutputExistsError(UserError, FileExistsError):
    """An output that would replace an existing file or folder without being asked to; the message names it."""


def summarize(problems: list[str], header: str, limit: int = _MAX_LINES) -> str:
    """`header` then up to `limit` problems, one per indented line, and '... and N more' for the rest."""
    shown = [f'  {p}' for p in problems[:limit]]
    if len(problems) > limit:
        shown.append(f'  ... and {len(problems) - limit} more')
    return '\n'.join([header, *shown])


def show_traceback(argv: list[str] | None = None) -> bool:
    """True when --verbose is on the command line or YOLO_JAX_TRACEBACK is set to a non-empty value other than 0."""
    argv = sys.argv if argv is None else argv
    on = re.compile(r'--?verbose(=(true|1|yes))?', re.IGNORECASE)
    return os.environ.get(TRACEBACK_ENV, '') not in ('', '0') or any(on.fullmatch(a) for a in argv)


def report_and_exit(error: BaseException, *, verbose: bool = False, message: str | None = None) -> None:
    """Prints `error: <message>` (default: the error's text) to stderr, after the traceback if `verbose`, and
    exits with EXIT_CODE."""
    if verbose:
        traceback.print_exception(error)
    message = (str(error) if message is None else message).strip() or type(error).__name__
    first, *rest = message.splitlines()
    lines = [f'error: {first}', *(ln if ln.startswith(' ') else f'  {ln}' for ln in rest)]
    print('\n'.join(lines), file=sys.stderr, flush=True)
    sys.exit(EXIT_CODE)
