"""How every keras_tl command reports bad input: one line ``error: <message>`` on stderr, exit status 2.

train, study, probe, visualize and predict all call :func:`run`; a :class:`~keras_tl.errors.UserError`
raised anywhere below becomes that line, whatever its message held (newlines, runs of spaces).
"""

from __future__ import annotations

import sys

from keras_tl.errors import UserError

USAGE_ERROR = 2


def error_line(message) -> str:
    return "error: " + " ".join(str(message).split())


def print_error(message) -> None:
    print(error_line(message), file=sys.stderr, flush=True)


def run(fn, *args, **kwargs) -> int:
    """``fn(*args, **kwargs)`` as a command: its exit status (0 when it returns None), or 2 after
    printing the error line when it raises UserError."""
    try:
        status = fn(*args, **kwargs)
    except UserError as e:
        print_error(e)
        return USAGE_ERROR
    return 0 if status is None else int(status)
