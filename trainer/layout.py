"""Every path of a run, named in one place: the files and folders in OUTPUT_DIR, and their places in the bucket.

OUTPUT_DIR/
  checkpoint-<step>/        the Trainer's checkpoints, each with checkpoint_complete.json once whole
  damaged-checkpoint-<step>/  a checkpoint that failed verification, set aside
  best/<task>/              SELECT_BEST=per_task: each task's best weights so far, with selection.json
  model/                    the final multitask model
  export/<task>/            each task as a standalone Transformers model (and .trainer-export.json)
  metrics.json  report.html  settings.json  run.json  .run.lock  .gcs-staging/
JOB_DIR/ (gs://...)         checkpoints/  model/  logs/  (or Vertex AI's AIP_CHECKPOINT_DIR, AIP_MODEL_DIR,
                            AIP_TENSORBOARD_LOG_DIR), with run.json and lease.json beside the checkpoints
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer.errors import UserError
from trainer.storage import base as storage

COMPLETE_MARKER = "checkpoint_complete.json"


CHECKPOINT_PREFIX = "checkpoint-"  # the Trainer's name for a checkpoint directory, also used in the bucket


DAMAGED_PREFIX = "damaged-"  # a checkpoint that failed verification, set aside


FINAL_MODEL_DIR = "model"


EXPORT_DIR = "export"


TASK_FILE = "trainer_task.json"  # in each export/<task>: the task's declaration, so predict can use it


EXPORT_MARKER = ".trainer-export.json"  # in an export folder: this project wrote it (and may replace it)


METRICS_FILE = "metrics.json"  # OUTPUT_DIR/metrics.json: what a run measured, written at its end


REPORT_FILE = "report.html"


SETTINGS_FILE = "settings.json"


RUN_FILE = "run.json"


LOCK_FILE = ".run.lock"


LEASE_FILE = "lease.json"


BEST_DIR = "best"


SELECTION_FILE = "selection.json"


STAGING_DIR = ".gcs-staging"


VERTEX_VARS = {"checkpoints": "AIP_CHECKPOINT_DIR", "model": "AIP_MODEL_DIR", "logs": "AIP_TENSORBOARD_LOG_DIR"}


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


EXPORT_WHAT = "OUTPUT_DIR/export"  # how errors name the run's export folder
