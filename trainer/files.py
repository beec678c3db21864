"""Files we write: atomically, with the modes `open` gives, and only where writing can succeed.

- `write_text_atomically`: a reader never sees half a file.
- `link_tree`: a snapshot of a folder that costs no disk (hard links).
- `follow_umask`: safetensors writes its files with mode 0600 whatever the umask (so `model.safetensors` was the
  one file of a run that the group could not read); this gives such files the mode a plain `open` would have:
  0666 minus the umask.
- `check_writable_dir` / `check_writable_file`: is a destination writable? Asked before anything is written, so a
  bad OUTPUT_DIR costs one line, not a run. A directory (or a file's folder) that is a file, sits under a file, or
  is on a read-only location is refused. The only test that tells for sure is writing: a probe folder is created
  beside what would be created, and removed at once (the folder's times put back), so nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from trainer.errors import UserError


def write_text_atomically(path: Path, text: str) -> None:
    """Write `path` under a temporary name and rename it: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def link_tree(src: Path, dest: Path) -> None:
    """Hard-link every file of `src` into `dest` (copy where links are impossible): a snapshot that
    costs no disk and that deleting or rotating `src` cannot pull away."""
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def current_umask() -> int:
    """The process umask, read without changing it (Linux: /proc), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(directory: str | os.PathLike[str], pattern: str = "*.safetensors") -> None:
    """Give the files matching `pattern` directly in `directory` the mode `open` gives a new file."""
    mode = 0o666 & ~current_umask()
    for path in Path(directory).glob(pattern):
        if path.is_file() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


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
