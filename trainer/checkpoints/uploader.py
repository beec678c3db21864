"""One background thread that runs uploads in order, so training never waits for the network.

Checkpoints, TensorBoard logs and the final files all go through it. A job is a name and a function;
failures are recorded (and logged when they happen), not raised, until `raise_errors`. A job submitted
with a `key` while a job with that key is still queued (not started) is dropped: the queued one reads
its files when it runs, so it sends the newest state anyway, and keeps its place in the order.

Jobs of a `group` (checkpoints) each send their own snapshot instead; when the uploads fall behind (a slow
or unreachable bucket), `drop_waiting(group)` discards the ones not started, running their cleanup, so the
newest is always the next of its group and what waits stays bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


class UploadError(RuntimeError):
    """At least one upload failed for good, or did not finish in time."""


@dataclass
class _Job:
    name: str
    work: Callable[[], None]
    cleanup: Callable[[], None] | None = None
    key: str | None = None
    group: str | None = None


class BackgroundUploader:
    def __init__(self, thread_name: str = "uploads") -> None:
        self.thread_name = thread_name
        self.errors: list[str] = []
        self._queue: list[_Job] = []
        self._running: _Job | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, name: str, work: Callable[[], None], cleanup: Callable[[], None] | None = None,
               key: str | None = None, group: str | None = None) -> bool:
        """Queue `work`; `cleanup` runs after it. False when a queued job with the same `key` makes it redundant."""
        with self._cond:
            if key is not None and any(j.key == key for j in self._queue):
                return False
            self._queue.append(_Job(name, work, cleanup, key, group))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._worker, name=self.thread_name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return True

    def drop_waiting(self, group: str | None = None) -> list[str]:
        """Discard the queued jobs of `group` (None: every queued job) that have not started; the running one
        goes on. Runs their cleanup; returns their names, oldest first."""
        with self._cond:
            dropped = [j for j in self._queue if group is None or j.group == group]
            self._queue = [j for j in self._queue if not (group is None or j.group == group)]
            self._cond.notify_all()
        for job in dropped:
            self._cleanup(job)
        return [j.name for j in dropped]

    @property
    def pending(self) -> list[str]:
        """Names of the jobs queued or running, oldest first."""
        with self._cond:
            return [j.name for j in ([self._running] if self._running else []) + self._queue]

    def drain(self, timeout: float) -> bool:
        """Wait until every job has run; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def finish(self, timeout: float, what: Callable[[str], str] = lambda name: name) -> None:
        """Wait up to `timeout` seconds; record every job still pending then as failed."""
        started = time.monotonic()
        if not self.drain(timeout):
            waited = time.monotonic() - started
            for name in self.pending:
                self.record(f"{what(name)}: still uploading after {waited:.0f} s")

    def record(self, message: str) -> None:
        logger.error("UPLOAD FAILED: %s", message)
        with self._cond:
            self.errors.append(message)

    def raise_errors(self, error: type[Exception] = UploadError) -> None:
        with self._cond:
            errors = list(self.errors)
        if errors:
            raise error(f"{len(errors)} upload(s) failed: " + "; ".join(errors))

    def _cleanup(self, job: _Job) -> None:
        if job.cleanup is not None:
            try:
                job.cleanup()
            except Exception as err:  # cleaning up must not stop the uploads
                logger.warning("cleaning up after %s failed: %s", job.name, err)

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                self._running = job = self._queue.pop(0)
            try:
                job.work()
            except Exception as err:  # recorded, raised later by raise_errors
                self.record(f"{job.name}: {type(err).__name__}: {err}")
            finally:
                self._cleanup(job)
                with self._cond:
                    self._running = None
                    self._cond.notify_all()
