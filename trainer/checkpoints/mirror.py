"""Mirror a run to Cloud Storage in the background (checkpoints, TensorBoard logs, the final model), and
resume from the bucket.

Where each goes in the bucket is `trainer.layout.BucketDirs`: `JOB_DIR/checkpoints/checkpoint-<step>/`,
`JOB_DIR/model/`, `JOB_DIR/logs/`, or Vertex AI's `AIP_*` directories.

The uploads run in one `BackgroundUploader` thread; the callback here only decides what to send when.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainer.checkpoints import remote
from trainer.checkpoints.uploader import BackgroundUploader, UploadError
from trainer.files import link_tree
from trainer.layout import CHECKPOINT_PREFIX, BucketDirs, RunDirs, checkpoint_name, checkpoint_step
from trainer.storage import base as storage
from trainer.storage.checksums import file_checksums

logger = logging.getLogger(__name__)


class CheckpointUploadError(UploadError):
    """At least one upload to Cloud Storage failed for good, or did not finish in time."""


class LogMirror:
    """Sends a TensorBoard log directory to the bucket: the files that changed since the last time.

    Event files grow while the run writes them, so each is copied first and the copy is checksummed
    and uploaded (the reader tolerates a torn last record). Runs in the uploader's thread.
    """

    def __init__(self, local: Path, dest: Any, store: storage.Store, scratch: Path) -> None:
        self.local, self.dest, self.store, self.scratch = local, dest, store, scratch
        self.sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime) of what the bucket holds

    def sync(self) -> None:
        if not self.local.is_dir():
            return
        self.scratch.mkdir(parents=True, exist_ok=True)
        copy = self.scratch / "log-snapshot"
        try:
            for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
                rel = path.relative_to(self.local).as_posix()
                seen = path.stat()
                if self.sent.get(rel) == (seen.st_size, seen.st_mtime_ns):
                    continue  # unchanged since it was sent: not read again
                shutil.copyfile(path, copy)
                self.store.upload_file(copy, self.dest.child(rel), file_checksums(copy))
                self.sent[rel] = (seen.st_size, seen.st_mtime_ns)
        finally:
            copy.unlink(missing_ok=True)


class CloudSyncCallback(TrainerCallback):
    """Upload each saved checkpoint to `dirs.checkpoints` and commit it, and stream the TensorBoard logs to
    `dirs.logs` every `log_upload_seconds` and at each checkpoint; all in the background. Only the main
    process acts.

    At each save (`queue_checkpoint`, the last step of `SaveSequence`), the checkpoint's files are hard-linked into
    `OUTPUT_DIR/.gcs-staging/` at once (local rotation cannot pull them away mid-upload) and queued; training does
    not wait. A checkpoint still waiting (not started) when a newer one is saved is dropped and its links released:
    the newest is always next, and staging holds at most the running upload and one waiting checkpoint. After each
    commit, remote checkpoints are rotated with `save_total_limit`. The staging folder a killed run left behind is
    removed when training begins, and this run's at the end.

    `on_train_end` waits up to `upload_timeout` seconds (after `hurry`, until its deadline). Failures are
    logged as errors when they happen and raised as `CheckpointUploadError` by `upload_final()`: call it at the
    end of the run so that it exits non-zero; a preempted run calls `after_preemption()` instead, which never
    raises.
    """

    def __init__(
        self,
        dirs: BucketDirs,
        store: storage.Store | None = None,
        upload_timeout: float = 600.0,
        log_dir: str | os.PathLike[str] | None = None,
        log_upload_seconds: float = 60.0,
    ) -> None:
        self.dirs = dirs
        self.store = store or storage.open_store(dirs.checkpoints)
        self.upload_timeout = upload_timeout
        self.log_dir = Path(log_dir) if log_dir else None
        self.log_upload_seconds = log_upload_seconds
        self.committed: list[int] = []  # committed by this run, in order
        self.skipped: list[int] = []  # saved but never uploaded: a newer checkpoint replaced them while waiting
        self.waited = 0.0  # seconds on_train_end waited for uploads
        self.deadline: float | None = None  # time.monotonic() by which on_train_end stops waiting (hurry)
        self.uploads = BackgroundUploader("gcs-upload")
        self._bucket_newest: int | None = None  # the newest committed step the bucket held when the run began
        self._bucket_checked = False
        self._staging: Path | None = None
        self._reported_skips = 0
        self._logs: LogMirror | None = None
        self._last_log_upload = time.monotonic()
        self._seq = 0

    @property
    def errors(self) -> list[str]:
        return self.uploads.errors

    @property
    def newest_committed(self) -> int | None:
        """The newest committed checkpoint in the bucket (what a restart resumes from), None when there is none:
        the bucket's at the start or a later one this run committed (rotation never deletes the newest)."""
        steps = [s for s in (self._bucket_newest, *self.committed) if s is not None]
        return max(steps) if steps else None

    def check_bucket(self) -> None:
        """Fail with one line when the bucket is missing or not ours to list; call it before anything is
        written. Notes the newest committed checkpoint there."""
        committed = remote.list_committed_checkpoints(self.store, self.dirs.checkpoints)
        self._bucket_newest = committed[-1][0] if committed else None
        self._bucket_checked = True

    def hurry(self, deadline: float) -> None:
        """Stop waiting for uploads at `deadline` (`time.monotonic()`), e.g. the end of a preemption's grace."""
        self.deadline = deadline

    # ---------------------------------------------------------------- Trainer events

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        if state.is_world_process_zero:
            if not self._bucket_checked:  # fail before training when the bucket is missing or not ours
                self.check_bucket()
            self._staging = RunDirs(args.output_dir).staging
            remove_staging(self._staging)  # a killed run's snapshots: nothing will upload them now
            if self.log_dir is not None:
                self._logs = LogMirror(self.log_dir, self.dirs.logs, self.store, self._staging)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if state.is_world_process_zero and time.monotonic() - self._last_log_upload >= self.log_upload_seconds:
            self.sync_logs()

    def queue_checkpoint(self, args: TrainingArguments, state: TrainerState) -> None:
        """Snapshot checkpoint-<step> (hard links) and queue its upload: the last step of `SaveSequence`."""
        if not state.is_world_process_zero:
            return
        step = state.global_step
        local = RunDirs(args.output_dir).checkpoint(step)
        if not local.is_dir():
            self._fail(step, f"local checkpoint {local} does not exist")
            return
        for name in self.uploads.drop_waiting("checkpoint"):  # before linking: staging stays at two at most
            self.skipped.append(checkpoint_step(name))
            logger.debug("%s not uploaded: %s replaces it", name, local.name)
        self._seq += 1
        staged = RunDirs(args.output_dir).staging / f"{local.name}.{self._seq}"
        try:
            link_tree(local, staged)
        except OSError as err:
            shutil.rmtree(staged, ignore_errors=True)
            self._fail(step, f"could not snapshot {local}: {err}")
            return
        protect = (state.best_global_step,) if getattr(state, "best_global_step", None) else ()
        self.sync_logs()  # first: once checkpoint-<step> is committed, the bucket has the history up to it
        self.uploads.submit(local.name, lambda: self._upload(step, staged, args.save_total_limit, protect),
                            cleanup=lambda: _remove_staged(staged), group="checkpoint")
        logger.info("queued %s for upload to %s", local.name, self.dirs.checkpoints)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        if state.is_world_process_zero:
            self.sync_logs()
            started = time.monotonic()
            timeout = self.upload_timeout if self.deadline is None else max(0.0, self.deadline - started)
            done = self.uploads.drain(timeout)
            self.waited = time.monotonic() - started
            if not done:
                logger.error("uploads still pending after %.1f s: %s", self.waited, self.uploads.pending)

    # ---------------------------------------------------------------- public helpers

    def upload_soon(self, local: str | os.PathLike[str], dest: Any) -> None:
        """Queue one file (e.g. settings.json at the start, so a running job's report knows its settings)."""
        self.uploads.submit(f"{local} -> {dest}", lambda: self._send(remote.upload_file, Path(local), dest))

    def sync_logs(self) -> None:
        """Queue a log upload (replacing one that has not started: the newest snapshot is all that matters)."""
        if self._logs is not None:
            self._last_log_upload = time.monotonic()
            self.uploads.submit(f"logs -> {self.dirs.logs}", self._logs.sync, key="logs")

    def upload_final(self, run: RunDirs, report: bool = True) -> None:
        """Wait for checkpoint uploads, then upload the run's final outputs where `BucketDirs.final_outputs` puts
        them (the model, export, metrics.json and report.html, those that exist; `report`: False when this run
        could not write its report, so an older one is not sent) and its logs to `dirs.logs/`.

        Call it on the main process only. Raises `CheckpointUploadError` if any upload failed,
        including earlier checkpoints; the final model is uploaded regardless.
        """
        for local, dest in self.dirs.final_outputs(run):
            if not local.exists() or (local == run.report and not report):
                continue
            upload = remote.upload_tree if local.is_dir() else remote.upload_file
            self.uploads.submit(f"{local} -> {dest}", lambda u=upload, src=local, to=dest: self._send(u, src, to))
        if self._logs is None:  # not streamed during the run: send them now
            self._staging = self._staging or run.staging
            self._logs = LogMirror(run.log_dir, self.dirs.logs, self.store, self._staging)
        if not run.log_dir.is_dir():
            logger.info("no logs to upload: %s is not a directory", run.log_dir)
        self.sync_logs()
        self.uploads.finish(self.upload_timeout, self._describe)
        self._close()
        self.uploads.raise_errors(CheckpointUploadError)

    def after_preemption(self, step: int) -> str:
        """What became of checkpoint-`step` and what the bucket holds, for a preempted run's last line. Ends the
        uploads and never raises: the run exits 143 whatever happened, its local checkpoint kept for a restart."""
        newest = self.newest_committed
        if newest == step:
            said = f" and committed to {self.dirs.checkpoints}"
        else:
            lost = any(e.startswith(f"{checkpoint_name(step)} ") for e in self.errors)
            why = "its upload failed" if lost else "still uploading when the wait ended"
            said = f" (kept for a restart on this machine); not committed to {self.dirs.checkpoints} ({why})"
        errors = f"; {len(self.errors)} upload(s) failed, see the log" if self.errors else ""
        self._close()
        bucket = f"step {newest}" if newest is not None else "none yet"
        return f"{said}; waited {self.waited:.1f} s for uploads{errors}; newest committed in the bucket: {bucket}"

    # ---------------------------------------------------------------- internals (the upload thread)

    def _describe(self, name: str) -> str:
        return f"{name} -> {self.dirs.checkpoints}" if name.startswith(CHECKPOINT_PREFIX) else name

    def _close(self) -> None:
        """Start no more uploads and remove the staging folder (a running upload of it fails, uncommitted)."""
        self.uploads.drop_waiting()
        if self._staging is not None:
            remove_staging(self._staging)

    def _fail(self, step: int, reason: str) -> None:
        self.uploads.record(f"{checkpoint_name(step)} -> {self.dirs.checkpoints}: {reason}")

    def _send(self, upload: Callable[..., object], local: Path, dest: Any) -> None:
        upload(self.store, local, dest)
        logger.info("uploaded %s -> %s", local, dest)

    def _upload(self, step: int, staged: Path, keep: int | None, protect: tuple[int, ...]) -> None:
        """Upload and commit one staged checkpoint, then rotate."""
        try:
            remote.upload_checkpoint(self.store, staged, self.dirs.checkpoints, step)
        except Exception as err:
            self._fail(step, f"{type(err).__name__}: {err}")
            return
        self.committed.append(step)
        skipped, self._reported_skips = len(self.skipped) - self._reported_skips, len(self.skipped)
        if skipped:
            logger.info("committed %s; %d older checkpoint(s) were not uploaded while uploads were "
                        "behind (a newer one replaced each)", checkpoint_name(step), skipped)
        try:
            remote.rotate_remote_checkpoints(self.store, self.dirs.checkpoints, keep, protect, newest=step)
        except Exception as err:  # not data loss: the next rotation catches up
            logger.warning("rotating %s failed: %s", self.dirs.checkpoints, err)


def remove_staging(staging: Path) -> None:
    """Remove a staging folder and every snapshot in it (the checkpoints themselves stay: they are links)."""
    shutil.rmtree(staging, ignore_errors=True)


def _remove_staged(staged: Path) -> None:
    shutil.rmtree(staged, ignore_errors=True)
    with contextlib.suppress(OSError):
        staged.parent.rmdir()  # the staging root, once empty
