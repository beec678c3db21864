"""The local lock of an OUTPUT_DIR: one writing process at a time.

`flock` on `OUTPUT_DIR/.run.lock`, held on an open file for the run's lifetime. The kernel drops it when the
process ends, however it ends (kill -9 included), so a dead run never leaves a stale lock. The file holds the
owner (run id, pid, host, since) for the refusal message; it is never deleted (unlinking a lock file that
another process is about to lock would let two runs in). Only the process that writes OUTPUT_DIR takes it
(under torchrun, rank 0).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from trainer.errors import UserError
from trainer.layout import RunDirs


class OutputLock:
    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.output_dir = Path(output_dir)
        self.path = RunDirs(self.output_dir).lock
        self._fd: int | None = None

    def acquire(self, owner: dict[str, Any]) -> None:
        """Take the lock or raise `UserError` naming the run that holds it."""
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise UserError(f"OUTPUT_DIR={self.output_dir} can't be used: {err.strerror or err}; "
                            "give a writable directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_owner(fd)
            os.close(fd)
            raise UserError(f"OUTPUT_DIR={self.output_dir} is in use by run {holder.get('run_id', '?')} "
                            f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since "
                            f"{holder.get('since', '?')}); wait for it to end, or use another OUTPUT_DIR") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}
