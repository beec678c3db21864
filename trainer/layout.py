"""Every path of a run, named in one place: the files and folders in OUTPUT_DIR, and their places in the bucket.

OUTPUT_DIR/                 `RunDirs`
  checkpoint-<step>/        the Trainer's checkpoints, each with checkpoint_complete.json once whole, a copy of
                            run.json and (SELECT_BEST=per_task or average) best/ as hard links
  damaged-checkpoint-<step>/  a checkpoint that failed verification, set aside
  best/<task>-step<N>/      SELECT_BEST=per_task or average: each task's best weights so far, with best/selection.json
                            (with an adapter, only the task's adapter and head: task_state.safetensors)
  model/                    the final multitask model
  export/<task>/            each task as a standalone Transformers model (and export/.trainer-export.json)
  logs/                     the TensorBoard logs, unless LOG_DIR is elsewhere
  metrics.json  metrics_<split>.json  report.html  settings.json  run.json  .run.lock  .gcs-staging/
JOB_DIR/ (gs://...)         `BucketDirs`: checkpoints/ model/ logs/ (or Vertex AI's AIP_CHECKPOINT_DIR, AIP_MODEL_DIR,
                            AIP_TENSORBOARD_LOG_DIR, each of which wins), with run.json and lease.json beside the
                            checkpoints; model/ holds export/, metrics.json, report.html and settings.json too
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.errors import UserError
from trainer.storage import base as storage

if TYPE_CHECKING:
    from trainer.config.env import VertexDirs

COMPLETE_MARKER = "checkpoint_complete.json"


CHECKPOINT_PREFIX = "checkpoint-"  # the Trainer's name for a checkpoint directory, also used in the bucket


DAMAGED_PREFIX = "damaged-"  # a checkpoint that failed verification, set aside


FINAL_MODEL_DIR = "model"  # OUTPUT_DIR/model and JOB_DIR/model


CHECKPOINTS_DIR = "checkpoints"  # JOB_DIR/checkpoints


LOGS_DIR = "logs"  # OUTPUT_DIR/logs (LOG_DIR's default) and JOB_DIR/logs


EXPORT_DIR = "export"


TASK_FILE = "trainer_task.json"  # in each export/<task>: the task's declaration, so predict can use it


EXPORT_MARKER = ".trainer-export.json"  # in an export folder: this project wrote it (and may replace it)


METRICS_FILE = "metrics.json"  # OUTPUT_DIR/metrics.json: what a run measured, written at its end


SPLIT_METRICS_FILE = "metrics_{split}.json"  # OUTPUT_DIR/metrics_<split>.json: what `python -m trainer evaluate` scored


REPORT_FILE = "report.html"


SETTINGS_FILE = "settings.json"


RUN_FILE = "run.json"


LOCK_FILE = ".run.lock"


LEASE_FILE = "lease.json"


BEST_DIR = "best"


SELECTION_FILE = "selection.json"


TASK_STATE_FILE = "task_state.safetensors"  # in best/<task>-step<N> with an adapter: the task's adapter and head only


STAGING_DIR = ".gcs-staging"


CHECKPOINT_NAME = re.compile(rf"{re.escape(CHECKPOINT_PREFIX)}(\d+)")


def checkpoint_name(step: int) -> str:
    """`checkpoint-<step>`: a checkpoint's folder, in OUTPUT_DIR and in the bucket."""
    return f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(name: str) -> int | None:
    """The step of a `checkpoint-<step>` name, else None."""
    match = CHECKPOINT_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def best_name(task: str, step: int) -> str:
    """A task's selected weights in best/, named with the step they come from."""
    return f"{task}-step{step}"


@dataclass(frozen=True, init=False)
class RunDirs:
    """The files and folders of a run on local disk: OUTPUT_DIR's and LOG_DIR (default OUTPUT_DIR/logs)."""

    output_dir: Path
    log_dir: Path

    def __init__(self, output_dir: str | os.PathLike[str], log_dir: str | os.PathLike[str] | None = None) -> None:
        object.__setattr__(self, "output_dir", Path(output_dir))
        object.__setattr__(self, "log_dir", Path(log_dir) if log_dir else Path(output_dir) / LOGS_DIR)

    def checkpoint(self, step: int) -> Path:
        return self.output_dir / checkpoint_name(step)

    @property
    def best(self) -> Path:
        return self.output_dir / BEST_DIR

    def best_task(self, task: str, step: int) -> Path:
        return self.best / best_name(task, step)

    @property
    def model(self) -> Path:
        return self.output_dir / FINAL_MODEL_DIR

    @property
    def export(self) -> Path:
        return self.output_dir / EXPORT_DIR

    def export_task(self, task: str) -> Path:
        return self.export / task

    @property
    def metrics(self) -> Path:
        return self.output_dir / METRICS_FILE

    def split_metrics(self, split: str) -> Path:
        return self.output_dir / SPLIT_METRICS_FILE.format(split=split)

    @property
    def report(self) -> Path:
        return self.output_dir / REPORT_FILE

    @property
    def settings(self) -> Path:
        return self.output_dir / SETTINGS_FILE

    @property
    def run_file(self) -> Path:
        return self.output_dir / RUN_FILE

    @property
    def lock(self) -> Path:
        return self.output_dir / LOCK_FILE

    @property
    def staging(self) -> Path:
        """Snapshots of the checkpoints being uploaded (hard links), and the copy of a log file being sent."""
        return self.output_dir / STAGING_DIR


@dataclass(frozen=True)
class BucketDirs:
    """Where checkpoints, the final model and the TensorBoard logs go in the bucket (URIs of its backend)."""

    checkpoints: Any
    model: Any
    logs: Any

    @classmethod
    def resolve(cls, job_dir: str | None, vertex: VertexDirs) -> BucketDirs | None:
        """From JOB_DIR (its checkpoints/, model/ and logs/) and Vertex AI's `AIP_*` directories (which win); None
        when neither is set. Some `AIP_*` directories without the others need JOB_DIR for the rest."""
        job = storage.parse_uri(job_dir) if job_dir and job_dir.strip() else None
        given = {CHECKPOINTS_DIR: vertex.checkpoints, FINAL_MODEL_DIR: vertex.model, LOGS_DIR: vertex.logs}
        if job is None and not any(given.values()):
            return None
        if job is None and not all(given.values()):
            raise UserError(f"{', '.join(vertex.unset())} not set while other AIP_* directories are; "
                            "set JOB_DIR=gs://... as well")
        checkpoints, model, logs = (storage.parse_uri(value) if value else job.child(name)
                                    for name, value in given.items())
        return cls(checkpoints, model, logs)

    def checkpoint(self, step: int) -> Any:
        return self.checkpoints.child(checkpoint_name(step))

    @property
    def run_file(self) -> Any:
        """The run identity of the checkpoints, beside them (see trainer.runs.identity)."""
        return self.checkpoints.child(RUN_FILE)

    @property
    def lease(self) -> Any:
        """The lease of the run that writes the checkpoints, beside them (see trainer.runs.lease)."""
        return self.checkpoints.child(LEASE_FILE)

    @property
    def export(self) -> Any:
        return self.model.child(EXPORT_DIR)

    @property
    def metrics(self) -> Any:
        return self.model.child(METRICS_FILE)

    @property
    def report(self) -> Any:
        return self.model.child(REPORT_FILE)

    @property
    def settings(self) -> Any:
        return self.model.child(SETTINGS_FILE)

    def final_outputs(self, run: RunDirs) -> list[tuple[Path, Any]]:
        """Where each of a finished run's outputs goes: (local, bucket) pairs, folders and files. The logs are not
        among them: they are mirrored file by file, during the run and at its end."""
        return [(run.model, self.model), (run.export, self.export), (run.metrics, self.metrics),
                (run.report, self.report)]


EXPORT_WHAT = "OUTPUT_DIR/export"  # how errors name the run's export folder
