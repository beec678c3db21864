"""Mirror Trainer checkpoints to Cloud Storage in the background, and resume from the bucket.

Layout: `JOB_DIR/checkpoints/checkpoint-<step>/`, `JOB_DIR/model/`, `JOB_DIR/logs/`. On Vertex AI,
`AIP_CHECKPOINT_DIR`, `AIP_MODEL_DIR` and `AIP_TENSORBOARD_LOG_DIR` take precedence.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from google.api_core.retry import Retry
from google.cloud import storage
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainer import gcs
from trainer.checkpoints import checkpoint_dir, link_tree
from trainer.errors import UserError
from trainer.gcs import GcsUri

logger = logging.getLogger(__name__)

STAGING_DIR = ".gcs-staging"
VERTEX_VARS = {"checkpoints": "AIP_CHECKPOINT_DIR", "model": "AIP_MODEL_DIR", "logs": "AIP_TENSORBOARD_LOG_DIR"}


class CheckpointUploadError(RuntimeError):
    """At least one upload to Cloud Storage failed for good, or did not finish in time."""


@dataclass(frozen=True)
class CloudDirs:
    """Where checkpoints, the final model and the TensorBoard logs go in Cloud Storage."""

    checkpoints: GcsUri
    model: GcsUri
    logs: GcsUri


def resolve_cloud_dirs(job_dir: str | None, environ: Mapping[str, str] | None = None) -> CloudDirs | None:
    """Cloud destinations from JOB_DIR and the Vertex `AIP_*` variables (which win); None when neither."""
    environ = os.environ if environ is None else environ
    vertex = {key: environ.get(var, "").strip() for key, var in VERTEX_VARS.items()}
    job = gcs.parse_gcs_uri(job_dir) if job_dir and job_dir.strip() else None
    if job is None and not any(vertex.values()):
        return None
    dirs = {}
    for key, value in vertex.items():
        if value:
            dirs[key] = gcs.parse_gcs_uri(value)
        elif job is not None:
            dirs[key] = job.child(key)
        else:
            missing = ", ".join(VERTEX_VARS[k] for k, v in vertex.items() if not v)
            raise UserError(f"{missing} not set while other AIP_* directories are; set JOB_DIR=gs://... as well")
    return CloudDirs(**dirs)


def resume_from_bucket(
    client: storage.Client,
    checkpoints: GcsUri,
    local_output_dir: str | os.PathLike[str],
    retry: Retry = gcs.GCS_RETRY,
    newer_than: int = -1,
) -> Path | None:
    """Download the newest committed checkpoint into `local_output_dir/checkpoint-<step>`, verified.

    Returns its path, or None when the bucket holds no committed checkpoint after step
    `newer_than` (the newest one already on local disk). A checkpoint that
    fails verification is reported and the next older committed one is tried.
    """
    committed = gcs.list_committed_checkpoints(client, checkpoints, retry)
    failures = []
    for step, uri in reversed(committed):
        if step <= newer_than:
            break
        try:
            return gcs.download_checkpoint(client, uri, local_output_dir, retry)
        except gcs.IntegrityError as err:
            logger.error("checkpoint-%d in %s is unusable, trying an older one: %s", step, checkpoints, err)
            failures.append(str(err))
    if failures:
        raise gcs.IntegrityError(f"no committed checkpoint in {checkpoints} passed verification: {failures[0]}")
    return None


@dataclass
class _Job:
    step: int
    staged: Path
    keep: int | None
    protect: tuple[int, ...]


class GcsCheckpointCallback(TrainerCallback):
    """Upload each saved checkpoint to `dirs.checkpoints` in one background thread, then commit it.

    On save, the checkpoint's files are hard-linked into `OUTPUT_DIR/.gcs-staging/` at once (local
    rotation cannot pull them away mid-upload) and queued; training does not wait. After each
    commit, remote checkpoints are rotated with `save_total_limit`. Only the main process acts.

    `on_train_end` waits up to `upload_timeout` seconds. Failures are logged as errors when they
    happen and raised as `CheckpointUploadError` by `wait()` and `upload_final()`: call one of them
    at the end of the run so that it exits non-zero.
    """

    def __init__(
        self,
        dirs: CloudDirs,
        client: storage.Client | None = None,
        upload_timeout: float = 600.0,
        retry: Retry = gcs.GCS_RETRY,
    ) -> None:
        self.dirs = dirs
        self.client = client or gcs.make_client()
        self.upload_timeout = upload_timeout
        self.retry = retry
        self.committed: list[int] = []
        self.errors: list[str] = []
        self._queue: list[_Job] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._seq = 0

    # ---------------------------------------------------------------- Trainer events

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        if state.is_world_process_zero:
            # Fail before training when the bucket is missing or not ours to list.
            gcs.list_committed_checkpoints(self.client, self.dirs.checkpoints, self.retry)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if not state.is_world_process_zero:
            return
        step = state.global_step
        local = checkpoint_dir(args.output_dir, step)
        if not local.is_dir():
            self._fail(step, f"local checkpoint {local} does not exist")
            return
        self._seq += 1
        staged = Path(args.output_dir) / STAGING_DIR / f"{local.name}.{self._seq}"
        try:
            link_tree(local, staged)
        except OSError as err:
            shutil.rmtree(staged, ignore_errors=True)
            self._fail(step, f"could not snapshot {local}: {err}")
            return
        protect = (state.best_global_step,) if getattr(state, "best_global_step", None) else ()
        self._enqueue(_Job(step, staged, args.save_total_limit, protect))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        if state.is_world_process_zero and not self._drain(self.upload_timeout):
            logger.error("checkpoint uploads still pending after %.0f s: %s", self.upload_timeout, self.pending)

    # ---------------------------------------------------------------- public helpers

    @property
    def pending(self) -> list[int]:
        """Steps queued or being uploaded."""
        with self._cond:
            return [job.step for job in self._queue]

    def wait(self, timeout: float | None = None) -> None:
        """Wait for queued checkpoint uploads; raise `CheckpointUploadError` on timeout or any failure."""
        self._finish_pending(self.upload_timeout if timeout is None else timeout)
        self._raise_errors()

    def upload_final(
        self,
        model_dir: str | os.PathLike[str],
        logs_dir: str | os.PathLike[str] | None = None,
        metrics_file: str | os.PathLike[str] | None = None,
        export_dir: str | os.PathLike[str] | None = None,
        report_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """Wait for checkpoint uploads, then upload the final model dir to `dirs.model/`, the per-task
        export to `dirs.model/export/`, `metrics_file` and `report_file` to `dirs.model/` and the logs to
        `dirs.logs/`.

        Call it on the main process only. Raises `CheckpointUploadError` if any upload failed,
        including earlier checkpoints; the final model is uploaded regardless.
        """
        self._finish_pending(self.upload_timeout)
        model = Path(model_dir)
        uploads: list[tuple[Path, GcsUri, Callable[..., object]]] = [(model, self.dirs.model, gcs.upload_tree)]
        if export_dir is not None:
            uploads.append((Path(export_dir), self.dirs.model.child("export"), gcs.upload_tree))
        if metrics_file is not None and not Path(metrics_file).resolve().is_relative_to(model.resolve()):
            metrics = Path(metrics_file)
            uploads.append((metrics, self.dirs.model.child(metrics.name), gcs.upload_file))
        if report_file is not None:
            uploads.append((Path(report_file), self.dirs.model.child(Path(report_file).name), gcs.upload_file))
        if logs_dir is not None:
            if Path(logs_dir).is_dir():
                uploads.append((Path(logs_dir), self.dirs.logs, gcs.upload_tree))
            else:
                logger.info("no logs to upload: %s is not a directory", logs_dir)
        for local, dest, upload in uploads:
            try:
                upload(self.client, local, dest, self.retry)
                logger.info("uploaded %s -> %s", local, dest)
            except Exception as err:
                self._record(f"{local} -> {dest}: {type(err).__name__}: {err}")
        self._raise_errors()

    # ---------------------------------------------------------------- internals

    def _record(self, message: str) -> None:
        logger.error("UPLOAD FAILED: %s", message)
        with self._cond:
            self.errors.append(message)

    def _fail(self, step: int, reason: str) -> None:
        self._record(f"checkpoint-{step} -> {self.dirs.checkpoints}: {reason}")

    def _finish_pending(self, timeout: float) -> None:
        """Wait for queued uploads; record those still running after `timeout` as failed."""
        if not self._drain(timeout):
            for step in self.pending:
                self._fail(step, f"still uploading after {timeout:.0f} s")

    def _raise_errors(self) -> None:
        with self._cond:
            errors = list(self.errors)
        if errors:
            raise CheckpointUploadError(f"{len(errors)} upload(s) to Cloud Storage failed: " + "; ".join(errors))

    def _enqueue(self, job: _Job) -> None:
        with self._cond:
            self._queue.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._worker, name="gcs-checkpoint-upload", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        logger.info("queued checkpoint-%d for upload to %s", job.step, self.dirs.checkpoints)

    def _drain(self, timeout: float) -> bool:
        """Wait until the queue is empty; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                job = self._queue[0]
            try:
                self._upload(job)
            finally:
                shutil.rmtree(job.staged, ignore_errors=True)
                with contextlib.suppress(OSError):
                    job.staged.parent.rmdir()  # the staging root, once empty
                with self._cond:
                    self._queue.pop(0)
                    self._cond.notify_all()

    def _upload(self, job: _Job) -> None:
        """Upload and commit one staged checkpoint, then rotate; failures are recorded, not raised."""
        try:
            gcs.upload_checkpoint(self.client, job.staged, self.dirs.checkpoints, job.step, self.retry)
        except Exception as err:
            self._fail(job.step, f"{type(err).__name__}: {err}")
            return
        with self._cond:
            self.committed.append(job.step)
        try:
            gcs.rotate_remote_checkpoints(self.client, self.dirs.checkpoints, job.keep, job.protect, self.retry)
        except Exception as err:  # not data loss: the next rotation catches up
            logger.warning("rotating %s failed: %s", self.dirs.checkpoints, err)
