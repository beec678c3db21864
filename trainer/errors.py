"""User-facing errors: one clear line, a non-zero exit, no traceback unless asked for."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

EXIT_USER_ERROR = 2


def first_line(error: BaseException, if_empty: str | None = None) -> str:
    """The first line of an error's message, for a one-line `UserError` or log line.

    Library errors (YAML, HTTP, `datasets`) often carry a multi-line message or none at all; an empty one gives
    `if_empty`, or the error's type name.
    """
    text = str(error).strip()
    if not text:
        return type(error).__name__ if if_empty is None else if_empty
    return text.splitlines()[0]


class UserError(Exception):
    """Bad input from the user: settings, task files, data rows, model names.

    The message must name the problem and what is allowed; it is printed as one line.
    """


def exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a `UserError` into `error: <message>` on stderr and exit code 2.

    Set `TRAINER_DEBUG=1` to see the full traceback instead.
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            if os.environ.get("TRAINER_DEBUG"):
                raise
            message = " ".join(str(err).split())
            print(f"error: {message}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
