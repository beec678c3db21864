"""Files we write follow the process umask, like every file Python's `open` creates.

safetensors writes its files with mode 0600 whatever the umask (so `model.safetensors` was the one
file of a run that the group could not read). `follow_umask` gives such files the mode a plain
`open` would have: 0666 minus the umask.
"""

from __future__ import annotations

import os
from pathlib import Path


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
