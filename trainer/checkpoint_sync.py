"""Mirror a run to Cloud Storage in the background (checkpoints, TensorBoard logs, the final model), and
resume from the bucket.

Layout: `JOB_DIR/checkpoints/checkpoint-<step>/`, `JOB_DIR/model/`, `JOB_DIR/logs/`. On Vertex AI,
`AIP_CHECKPOINT_DIR`, `AIP_MODEL_DIR` and `AIP_TENSORBOARD_LOG_DIR` take precedence.

The uploads run in one `BackgroundUploader` thread; the callback here only decides what to send when.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainer import remote_checkpoints as remote
from trainer import storage
from trainer.checkpoints import checkpoint_dir, checkpoint_step, link_tree
from trainer.checksums import IntegrityError, file_checksums
from trainer.errors import UserError
from trainer.uploader import BackgroundUploader, UploadError

logger = logging.getLogger(__name__)

STAGING_DIR = ".gcs-staging"
VERTEX_VARS = {"checkpoints": "AIP_CHECKPOINT_DIR", "model": "AIP_MODEL_DIR", "logs": "AIP_TENSORBOARD_LOG_DIR"}


class CheckpointUploadError(UploadError):
    """At least one upload to Cloud Storage failed for good, or did not finish in time."""


@dataclass(frozen=True)
class CloudDirs:
    """Where checkpoints, the final model and the TensorBoard logs go in the bucket (URIs of its backend)."""

    checkpoints: Any
    model: Any
    logs: Any


def resolve_cloud_dirs(job_dir: str | None, environ: Mapping[str, str] | None = None) -> CloudDirs | None:
    """Cloud destinations from JOB_DIR and the Vertex `AIP_*` variables (which win); None when neither."""
    environ = os.environ if environ is None else environ
    vertex = {key: environ.get(var, "").strip() for key, var in VERTEX_VARS.items()}
    job = storage.parse_uri(job_dir) if job_dir and job_dir.strip() else None
    if job is None and not any(vertex.values()):
        return None
    dirs = {}
    for key, value in vertex.items():
        if value:
            dirs[key] = storage.parse_uri(value)
        elif job is not None:
            dirs[key] = job.child(key)
        else:
            missing = ", ".join(VERTEX_VARS[k] for k, v in vertex.items() if not v)
            raise UserError(f"{missing} not set while other AIP_* directories are; set JOB_DIR=gs://... as well")
    return CloudDirs(**dirs)


def resume_from_bucket(
    store: storage.Store,
    checkpoints: Any,
    local_output_dir: str | os.PathLike[str],
    newer_than: int = -1,
) -> Path | None:
    """Download the newest committed checkpoint into `local_output_dir/checkpoint-<step>`, verified.

    Returns its path, or None when the bucket holds no committed checkpoint after step
    `newer_than` (the newest one already on local disk). A checkpoint that
    fails verification is reported and the next older committed one is tried. When every one fails and
    there is no local checkpoint to fall back to, that is a `UserError` naming each of them.
    """
    committed = remote.list_committed_checkpoints(store, checkpoints)
    failures = []
    for step, uri in reversed(committed):
        if step <= newer_than:
            break
        try:
            return remote.download_checkpoint(store, uri, local_output_dir)
        except IntegrityError as err:
            logger.warning("checkpoint-%d in %s is unusable, trying an older one: %s", step, checkpoints, err)
            failures.append(f"checkpoint-{step}: {err}")
    if failures and newer_than < 0:
        raise UserError(f"no committed checkpoint in {checkpoints} passed verification ({'; '.join(failures)}); "
                        "delete them, or use RESUME=never (or a new JOB_DIR) to start over")
    if failures:
        logger.warning("resuming from the local checkpoint-%d instead", newer_than)
    return None


def download_named_checkpoint(store: storage.Store, resume: str, local_output_dir: str | os.PathLike[str]) -> Path:
    """RESUME=gs://.../checkpoint-<step>: download and verify that one checkpoint. One that is not there, or not
    committed, or fails verification is a `UserError` naming it and the committed checkpoints beside it."""
    uri = storage.parse_uri(resume)
    parent = storage.parse_uri(str(uri).rstrip("/").rpartition("/")[0]) if uri.name else uri
    beside = [f"checkpoint-{s}" for s, _ in remote.list_committed_checkpoints(store, parent)]  # a bucket must exist
    under = [f"checkpoint-{s}" for s, _ in remote.list_committed_checkpoints(store, uri)]
    if checkpoint_step(uri.name) is None:
        found = f"committed checkpoints under it: {', '.join(under)}" if under else "it holds no committed checkpoint"
        raise UserError(f"RESUME={resume} is not a checkpoint-<step> directory; {found}")
    if uri.name not in beside:
        state = "was never committed (no COMMITTED marker)" if store.list_names(uri) else "does not exist"
        found = f"committed checkpoints in {parent}: {', '.join(beside)}" if beside else \
            f"{parent} holds no committed checkpoint"
        raise UserError(f"RESUME={resume} {state}; {found}")
    try:
        return remote.download_checkpoint(store, uri, local_output_dir)
    except IntegrityError as err:
        raise UserError(f"RESUME={resume} failed verification: {err}; pick another checkpoint, or RESUME=auto") \
            from None


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

    On save, the checkpoint's files are hard-linked into `OUTPUT_DIR/.gcs-staging/` at once (local
    rotation cannot pull them away mid-upload) and queued; training does not wait. After each
    commit, remote checkpoints are rotated with `save_total_limit`.

    `on_train_end` waits up to `upload_timeout` seconds. Failures are logged as errors when they
    happen and raised as `CheckpointUploadError` by `wait()` and `upload_final()`: call one of them
    at the end of the run so that it exits non-zero.
    """

    def __init__(
        self,
        dirs: CloudDirs,
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
        self.committed: list[int] = []
        self.uploads = BackgroundUploader("gcs-upload")
        self._logs: LogMirror | None = None
        self._last_log_upload = time.monotonic()
        self._seq = 0

    @property
    def errors(self) -> list[str]:
        return self.uploads.errors

    # ---------------------------------------------------------------- Trainer events

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        if state.is_world_process_zero:
            # Fail before training when the bucket is missing or not ours to list.
            remote.list_committed_checkpoints(self.store, self.dirs.checkpoints)
            if self.log_dir is not None:
                scratch = Path(args.output_dir) / STAGING_DIR
                self._logs = LogMirror(self.log_dir, self.dirs.logs, self.store, scratch)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if state.is_world_process_zero and time.monotonic() - self._last_log_upload >= self.log_upload_seconds:
            self.sync_logs()

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
        self.sync_logs()  # first: once checkpoint-<step> is committed, the bucket has the history up to it
        self.uploads.submit(f"checkpoint-{step}", lambda: self._upload(step, staged, args.save_total_limit, protect),
                            cleanup=lambda: _remove_staged(staged))
        logger.info("queued checkpoint-%d for upload to %s", step, self.dirs.checkpoints)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        if state.is_world_process_zero:
            self.sync_logs()
            if not self.uploads.drain(self.upload_timeout):
                logger.error("uploads still pending after %.0f s: %s", self.upload_timeout, self.pending)

    # ---------------------------------------------------------------- public helpers

    @property
    def pending(self) -> list[int]:
        """Steps of the checkpoints queued or being uploaded."""
        return [int(n.removeprefix("checkpoint-")) for n in self.uploads.pending if n.startswith("checkpoint-")]

    def upload_soon(self, local: str | os.PathLike[str], dest: Any) -> None:
        """Queue one file (e.g. settings.json at the start, so a running job's report knows its settings)."""
        self.uploads.submit(f"{local} -> {dest}", lambda: self._send(remote.upload_file, Path(local), dest))

    def sync_logs(self) -> None:
        """Queue a log upload (replacing one that has not started: the newest snapshot is all that matters)."""
        if self._logs is not None:
            self._last_log_upload = time.monotonic()
            self.uploads.submit(f"logs -> {self.dirs.logs}", self._logs.sync, key="logs")

    def wait(self, timeout: float | None = None) -> None:
        """Wait for queued uploads; raise `CheckpointUploadError` on timeout or any failure."""
        self.uploads.finish(self.upload_timeout if timeout is None else timeout, self._describe)
        self.uploads.raise_errors(CheckpointUploadError)

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
        model = Path(model_dir)
        uploads: list[tuple[Path, Any, Callable[..., object]]] = [(model, self.dirs.model, remote.upload_tree)]
        if export_dir is not None:
            uploads.append((Path(export_dir), self.dirs.model.child("export"), remote.upload_tree))
        if metrics_file is not None and not Path(metrics_file).resolve().is_relative_to(model.resolve()):
            metrics = Path(metrics_file)
            uploads.append((metrics, self.dirs.model.child(metrics.name), remote.upload_file))
        if report_file is not None:
            uploads.append((Path(report_file), self.dirs.model.child(Path(report_file).name), remote.upload_file))
        for local, dest, upload in uploads:
            self.uploads.submit(f"{local} -> {dest}", lambda u=upload, src=local, to=dest: self._send(u, src, to))
        if logs_dir is not None and self._logs is None:  # not streamed during the run: send them now
            self._logs = LogMirror(Path(logs_dir), self.dirs.logs, self.store, model.parent / STAGING_DIR)
        if logs_dir is not None and not Path(logs_dir).is_dir():
            logger.info("no logs to upload: %s is not a directory", logs_dir)
        self.sync_logs()
        self.uploads.finish(self.upload_timeout, self._describe)
        self.uploads.raise_errors(CheckpointUploadError)

    # ---------------------------------------------------------------- internals (the upload thread)

    def _describe(self, name: str) -> str:
        return f"{name} -> {self.dirs.checkpoints}" if name.startswith("checkpoint-") else name

    def _fail(self, step: int, reason: str) -> None:
        self.uploads.record(f"checkpoint-{step} -> {self.dirs.checkpoints}: {reason}")

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
        try:
            remote.rotate_remote_checkpoints(self.store, self.dirs.checkpoints, keep, protect)
        except Exception as err:  # not data loss: the next rotation catches up
            logger.warning("rotating %s failed: %s", self.dirs.checkpoints, err)


def _remove_staged(staged: Path) -> None:
    shutil.rmtree(staged, ignore_errors=True)
    with contextlib.suppress(OSError):
        staged.parent.rmdir()  # the staging root, once empty
