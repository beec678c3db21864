"""Is a destination writable? Asked before anything is written, so a bad OUTPUT_DIR costs one line, not a run.

A directory (or a file's folder) that is a file, sits under a file, or is on a read-only location is refused.
The only test that tells for sure is writing: a probe folder is created beside what would be created, and
removed at once (the folder's times put back), so nothing is left behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from trainer.errors import UserError


def check_writable_dir(path: str | os.PathLike[str], what: str) -> None:
    """Refuse `path` as a directory to write in (created if missing); `what` names it (`OUTPUT_DIR`, `--export_dir`)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"{what}={path} is a file; give a directory (it is created if missing)")
    problem = _unwritable(target)
    if problem:
        raise UserError(f"{what}={path} {problem}")


def check_writable_file(path: str | os.PathLike[str], what: str) -> None:
    """Refuse `path` as a file to write: a directory, or in a folder that can't be made or written."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{what}={path} is a directory; give a file path")
    problem = _unwritable(target.parent)
    if problem:
        raise UserError(f"{what}={path} {problem}")


def _unwritable(directory: Path) -> str | None:
    """Why `directory` can't be created and written in, or None: its nearest existing ancestor decides."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"is under {existing}, which is a file; give a path in a directory"
    times = existing.stat()
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-probe-", dir=existing))
        os.utime(existing, ns=(times.st_atime_ns, times.st_mtime_ns))  # and the folder looks untouched
    except OSError as err:
        return f"can't be written: {existing} is read-only or not writable ({err.strerror}); choose a writable place"
    return None
