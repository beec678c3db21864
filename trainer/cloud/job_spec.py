"""Render a Vertex AI CustomJobSpec (YAML for `gcloud ai custom-jobs create --config`) from the settings.

Cloud settings come from the environment (and `.env`, which never overrides it); see the
"Cloud (Docker / Vertex AI)" section of `.env.example`. The container gets the training settings that are
set (names from `trainer.config.settings.ENV_NAMES`) and nothing else, so no secret leaves this machine.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from trainer.cloud import gcloud as cloud
from trainer.config import settings as training_settings
from trainer.config.env import effective_environ, parse_bool, parse_int
from trainer.errors import UserError
from trainer.files import check_writable_file
from trainer.storage import gcs

ENV_EXAMPLE_HINT = "see the Cloud section of .env.example"

# Vertex AI MachineSpec.acceleratorType values for NVIDIA GPUs (API v1).
NVIDIA_ACCELERATORS = (
    "NVIDIA_TESLA_T4",
    "NVIDIA_L4",
    "NVIDIA_TESLA_A100",
    "NVIDIA_A100_80GB",
    "NVIDIA_H100_80GB",
    "NVIDIA_H100_MEGA_80GB",
    "NVIDIA_H200_141GB",
    "NVIDIA_B200",
    "NVIDIA_TESLA_V100",
    "NVIDIA_TESLA_P100",
    "NVIDIA_TESLA_P4",
    "NVIDIA_TESLA_K80",
)
# GPUs that CUDA 13 (the default base image's CUDA) no longer supports.
PRE_TURING = {"NVIDIA_TESLA_V100", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_P4", "NVIDIA_TESLA_K80"}
# Machine families whose GPU type is fixed; the GPU count of a2/a3/a4 is the machine type's "-<N>g" suffix.
FAMILY_GPU = {
    "n1-": {"NVIDIA_TESLA_T4", "NVIDIA_TESLA_V100", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_P4", "NVIDIA_TESLA_K80"},
    "g2-": {"NVIDIA_L4"},
    "a2-highgpu-": {"NVIDIA_TESLA_A100"},
    "a2-megagpu-": {"NVIDIA_TESLA_A100"},
    "a2-ultragpu-": {"NVIDIA_A100_80GB"},
    "a3-highgpu-": {"NVIDIA_H100_80GB"},
    "a3-megagpu-": {"NVIDIA_H100_MEGA_80GB"},
    "a3-ultragpu-": {"NVIDIA_H200_141GB"},
    "a4-highgpu-": {"NVIDIA_B200"},
}
G2_GPUS = {"g2-standard-24": 2, "g2-standard-48": 4, "g2-standard-96": 8}  # the other g2 types have 1
GPU_COUNTS = (1, 2, 4, 8, 16)
BOOT_DISK_TYPES = ("pd-ssd", "pd-standard", "pd-balanced", "hyperdisk-balanced")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|API_KEY|ACCESS_KEY", re.I)
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class CloudSettings:
    """Where and on what a Vertex AI custom job runs."""

    project_id: str
    region: str
    bucket_name: str | None
    job_name: str
    job_dir: str
    image_uri: str
    machine_type: str
    accelerator_type: str | None  # None: CPU only
    accelerator_count: int
    replica_count: int
    boot_disk_type: str
    boot_disk_size_gb: int
    spot: bool
    timeout_s: int
    restart_job_on_worker_restart: bool
    service_account: str | None


def _get(environ: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """A setting with surrounding blanks removed; empty counts as unset."""
    value = (environ.get(name) or "").strip()
    return value or default


def _require(environ: Mapping[str, str], name: str, example: str) -> str:
    value = _get(environ, name)
    if value is None:
        raise UserError(
            f"{name} is not set; set it in .env or the environment, e.g. {name}={example} ({ENV_EXAMPLE_HINT})"
        )
    return value


def _named(name: str, check: Any, value: str) -> Any:
    """Run one of trainer.storage.gcs's validators, naming the setting in its error."""
    try:
        return check(value)
    except UserError as err:
        raise UserError(f"{name}: {err}") from None


def _bool(name: str, raw: str | None, default: bool) -> bool:
    return default if raw is None else parse_bool(name, raw)


def parse_duration(name: str, raw: str) -> int:
    """Seconds from '3600', '3600s', '90m', '24h' or '7d'."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", raw.strip().lower())
    if not match:
        raise UserError(f"{name}={raw!r} is not a duration; use seconds or a number with s, m, h or d, e.g. 24h")
    seconds = int(float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"])
    if seconds <= 0:
        raise UserError(f"{name}={raw!r} must be longer than 0 seconds")
    return seconds


def _accelerator(environ: Mapping[str, str], machine_type: str) -> tuple[str | None, int]:
    """(type, count) with defaults from the machine family; (None, 0) for CPU only."""
    raw_type = _get(environ, "ACCELERATOR_TYPE", "NVIDIA_TESLA_T4")
    raw_count = _get(environ, "ACCELERATOR_COUNT")
    count = parse_int("ACCELERATOR_COUNT", raw_count, 0) if raw_count is not None else None
    if raw_type.lower() in ("none", "cpu") or count == 0:
        return None, 0
    accel = raw_type.upper()
    if accel.startswith("TPU"):
        raise UserError(f"ACCELERATOR_TYPE={raw_type} is a TPU; this image trains on NVIDIA GPUs or CPU (none)")
    if accel not in NVIDIA_ACCELERATORS:
        raise UserError(
            f"ACCELERATOR_TYPE={raw_type!r} is unknown; use none or one of: {', '.join(NVIDIA_ACCELERATORS)}"
        )
    family = next((f for f in FAMILY_GPU if machine_type.startswith(f)), None)
    if family and accel not in FAMILY_GPU[family]:
        raise UserError(
            f"MACHINE_TYPE={machine_type} takes {' or '.join(sorted(FAMILY_GPU[family]))}, "
            f"not ACCELERATOR_TYPE={accel}"
        )
    fixed = re.search(r"-(\d+)g$", machine_type) if family and family.startswith("a") else None
    built_in = int(fixed.group(1)) if fixed else G2_GPUS.get(machine_type, 1) if family == "g2-" else None
    if count is None:
        count = built_in or 1
    if count not in GPU_COUNTS:
        raise UserError(f"ACCELERATOR_COUNT={count} is not allowed; use one of {GPU_COUNTS}")
    if built_in is not None and count != built_in:
        raise UserError(f"MACHINE_TYPE={machine_type} comes with {built_in} GPU(s), not ACCELERATOR_COUNT={count}")
    if accel in PRE_TURING:
        print(
            f"warning: {accel} is not supported by CUDA 13 (the default image); build with a CUDA 12 BASE_IMAGE",
            file=sys.stderr,
        )
    return accel, count


def default_job_name(now: datetime | None = None) -> str:
    """multitask-YYYYmmdd-HHMMSS in UTC (the Makefile makes the same)."""
    return f"multitask-{(now or datetime.now(timezone.utc)):%Y%m%d-%H%M%S}"


# Settings with a default that must match a pattern: name -> (default, pattern, what is allowed).
PATTERNED_SETTINGS = {
    "REGION": ("us-central1", cloud.REGION, "use a region like us-central1"),
    "IMAGE_REPO_NAME": (
        "multitask",
        r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?",
        "an Artifact Registry repository name has lowercase letters, digits and hyphens",
    ),
    "IMAGE_NAME": (
        "multitask-trainer",
        r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*",
        "use lowercase letters, digits, '.', '_', '-' and '/'",
    ),
    "IMAGE_TAG": ("latest", r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", "use up to 128 letters, digits, '_', '.' or '-'"),
    "MACHINE_TYPE": (
        "n1-standard-8",
        r"[a-z][a-z0-9]*(-[a-z0-9]+)+",
        "use a Compute Engine machine type such as n1-standard-8 or g2-standard-8",
    ),
}


def cloud_settings(environ: Mapping[str, str], now: datetime | None = None) -> CloudSettings:
    """Read and check the cloud settings; a bad one raises UserError naming it."""
    project = cloud.check("PROJECT_ID", _require(environ, "PROJECT_ID", "my-project"), cloud.PROJECT_ID,
                     cloud.PROJECT_ID_RULE)
    checked = {
        name: cloud.check(name, _get(environ, name, default), pattern, what)
        for name, (default, pattern, what) in PATTERNED_SETTINGS.items()
    }
    region = checked["REGION"]
    bucket = _get(environ, "BUCKET_NAME")
    if bucket is not None:
        bucket = bucket.removeprefix("gs://").rstrip("/")
        _named("BUCKET_NAME", gcs.validate_bucket_name, bucket)
    job_name = cloud.check(
        "JOB_NAME",
        _get(environ, "JOB_NAME") or default_job_name(now),
        r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
        "use up to 128 letters, digits, '.', '_' or '-'",
    )
    job_dir = _get(environ, "JOB_DIR")
    if job_dir is None:
        if bucket is None:
            _require(environ, "BUCKET_NAME", "my-bucket")
        job_dir = f"gs://{bucket}/jobs/{job_name}"
    job_dir = str(_named("JOB_DIR", gcs.parse_gcs_uri, job_dir.rstrip("/")))

    repo, image, tag = checked["IMAGE_REPO_NAME"], checked["IMAGE_NAME"], checked["IMAGE_TAG"]
    machine_type = checked["MACHINE_TYPE"]
    accelerator_type, accelerator_count = _accelerator(environ, machine_type)
    replica_count = parse_int("REPLICA_COUNT", _get(environ, "REPLICA_COUNT", "1"), 1, 1000)
    boot_disk_type = _get(environ, "BOOT_DISK_TYPE", "pd-ssd")
    if boot_disk_type not in BOOT_DISK_TYPES:
        raise UserError(f"BOOT_DISK_TYPE={boot_disk_type!r} is not allowed; use one of: {', '.join(BOOT_DISK_TYPES)}")
    service_account = _get(environ, "SERVICE_ACCOUNT")
    if service_account is not None:
        cloud.check("SERVICE_ACCOUNT", service_account, r"[^@\s]+@[^@\s]+\.[^@\s]+", "use the service account's email")
    return CloudSettings(
        project_id=project,
        region=region,
        bucket_name=bucket,
        job_name=job_name,
        job_dir=job_dir,
        image_uri=f"{region}-docker.pkg.dev/{project}/{repo}/{image}:{tag}",
        machine_type=machine_type,
        accelerator_type=accelerator_type,
        accelerator_count=accelerator_count,
        replica_count=replica_count,
        boot_disk_type=boot_disk_type,
        boot_disk_size_gb=parse_int("BOOT_DISK_SIZE_GB", _get(environ, "BOOT_DISK_SIZE_GB", "100"), 100, 64000),
        spot=_bool("SPOT", _get(environ, "SPOT"), False),
        timeout_s=parse_duration("JOB_TIMEOUT", _get(environ, "JOB_TIMEOUT", "24h")),
        restart_job_on_worker_restart=_bool(
            "RESTART_JOB_ON_WORKER_RESTART", _get(environ, "RESTART_JOB_ON_WORKER_RESTART"), replica_count > 1
        ),
        service_account=service_account,
    )


def training_env(environ: Mapping[str, str], job_dir: str) -> list[dict[str, str]]:
    """The container's env: the training settings that are set, plus JOB_DIR; validated like `train` would."""
    names = [n for n in training_settings.ENV_NAMES if not SECRET_NAME.search(n)]
    values = {n: environ[n].strip() for n in names if (environ.get(n) or "").strip()}
    if "JOB_DIR" in names:
        values["JOB_DIR"] = job_dir
    training_settings.load_settings(environ=values, dotenv_path=None)  # fail here, not an hour into the job
    for name in ("DATA_DIR", "TASKS_FILE"):
        if name in values and not values[name].startswith("gs://"):
            print(
                f"warning: {name}={values[name]} is a local path; the job's container sees only what the image holds",
                file=sys.stderr,
            )
    for name in ("OUTPUT_DIR", "LOG_DIR"):
        if values.get(name, "").startswith("/") and not values[name].startswith(("/app/", "/tmp/")):
            print(
                f"warning: {name}={values[name]} may not be writable in the job's container (a non-root user in "
                "/app); a relative path or /tmp/... is safe, and JOB_DIR keeps the results",
                file=sys.stderr,
            )
    return [{"name": n, "value": values[n]} for n in names if n in values]


def render_job_spec(environ: Mapping[str, str], now: datetime | None = None) -> dict[str, Any]:
    """A CustomJobSpec (camelCase, as the Vertex AI v1 REST API and gcloud's --config take it)."""
    return build_spec(cloud_settings(environ, now), environ)


def build_spec(cloud: CloudSettings, environ: Mapping[str, str]) -> dict[str, Any]:
    """The CustomJobSpec for checked cloud settings and the training settings in `environ`."""
    machine_spec: dict[str, Any] = {"machineType": cloud.machine_type}
    if cloud.accelerator_type:
        machine_spec["acceleratorType"] = cloud.accelerator_type
        machine_spec["acceleratorCount"] = cloud.accelerator_count
    container = {"imageUri": cloud.image_uri, "env": training_env(environ, cloud.job_dir)}

    def pool(replicas: int) -> dict[str, Any]:
        return {
            "machineSpec": dict(machine_spec),
            "replicaCount": replicas,
            "diskSpec": {"bootDiskType": cloud.boot_disk_type, "bootDiskSizeGb": cloud.boot_disk_size_gb},
            "containerSpec": {"imageUri": container["imageUri"], "env": [dict(e) for e in container["env"]]},
        }

    pools = [pool(1)]  # workerpool0: the chief
    if cloud.replica_count > 1:
        pools.append(pool(cloud.replica_count - 1))  # workerpool1: the other nodes
    scheduling: dict[str, Any] = {
        "timeout": f"{cloud.timeout_s}s",
        "restartJobOnWorkerRestart": cloud.restart_job_on_worker_restart,
    }
    if cloud.spot:
        scheduling["strategy"] = "SPOT"
    spec: dict[str, Any] = {
        "workerPoolSpecs": pools,
        "scheduling": scheduling,
        "baseOutputDirectory": {"outputUriPrefix": cloud.job_dir},
    }
    if cloud.service_account:
        spec["serviceAccount"] = cloud.service_account
    return spec


def to_yaml(spec: Mapping[str, Any]) -> str:
    """YAML in the spec's own key order."""
    return yaml.safe_dump(dict(spec), sort_keys=False, default_flow_style=False)


def write_job_spec(output: str | None = None) -> None:
    """`python -m trainer job-spec [--output=FILE]`: print the CustomJobSpec YAML, or write it to FILE."""
    environ = effective_environ()
    cloud = cloud_settings(environ)
    text = to_yaml(build_spec(cloud, environ))
    if output:
        check_writable_file(output, "--output")
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
        print(
            f"wrote {output}: {cloud.replica_count} x {cloud.machine_type}"
            f"{f' + {cloud.accelerator_count} x {cloud.accelerator_type}' if cloud.accelerator_type else ' (CPU)'}"
            f"{', spot' if cloud.spot else ''}; image {cloud.image_uri}; JOB_DIR {cloud.job_dir}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
