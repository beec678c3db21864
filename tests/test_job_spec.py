"""The Vertex AI CustomJobSpec rendered from the settings: shapes, defaults, env and bad input."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainer.cloud.job_spec import render_job_spec, to_yaml
from trainer.config.env import CLOUD_ENV_NAMES, effective_environ
from trainer.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
BASE = {"PROJECT_ID": "my-project", "BUCKET_NAME": "my-bucket", "JOB_NAME": "nightly-7"}
IMAGE = "us-central1-docker.pkg.dev/my-project/multitask/multitask-trainer:latest"

# Fields of the Vertex AI v1 messages (GoogleCloudAiplatformV1*), as gcloud's API client defines them.
SCHEMA: dict[str, set[str]] = {
    "CustomJobSpec": {
        "baseOutputDirectory", "enableDashboardAccess", "enableWebAccess", "experiment", "experimentRun",
        "models", "network", "persistentResourceId", "protectedArtifactLocationId", "reservedIpRanges",
        "scheduling", "serviceAccount", "tensorboard", "workerPoolSpecs",
    },
    "WorkerPoolSpec": {"containerSpec", "diskSpec", "machineSpec", "nfsMounts", "pythonPackageSpec", "replicaCount"},
    "MachineSpec": {"acceleratorCount", "acceleratorType", "machineType", "reservationAffinity", "tpuTopology"},
    "DiskSpec": {"bootDiskSizeGb", "bootDiskType"},
    "ContainerSpec": {"args", "command", "env", "imageUri"},
    "EnvVar": {"name", "value"},
    "Scheduling": {"disableRetries", "maxWaitDuration", "restartJobOnWorkerRestart", "strategy", "timeout"},
    "GcsDestination": {"outputUriPrefix"},
}


def assert_valid_custom_job_spec(spec: dict[str, Any]) -> None:
    """Every key is a real camelCase CustomJobSpec field at its level; values have the API's types."""

    def keys(obj: dict[str, Any], message: str) -> None:
        unknown = set(obj) - SCHEMA[message]
        assert not unknown, f"{message} has unknown fields {unknown}"
        assert all(re.fullmatch(r"[a-z][a-zA-Z0-9]*", k) for k in obj), obj.keys()

    keys(spec, "CustomJobSpec")
    keys(spec["baseOutputDirectory"], "GcsDestination")
    keys(spec["scheduling"], "Scheduling")
    assert re.fullmatch(r"\d+s", spec["scheduling"]["timeout"])
    assert spec["scheduling"].get("strategy", "SPOT") in ("SPOT", "STANDARD")
    for pool in spec["workerPoolSpecs"]:
        keys(pool, "WorkerPoolSpec")
        keys(pool["machineSpec"], "MachineSpec")
        keys(pool["diskSpec"], "DiskSpec")
        keys(pool["containerSpec"], "ContainerSpec")
        for var in pool["containerSpec"]["env"]:
            keys(var, "EnvVar")
            assert isinstance(var["value"], str)
        assert isinstance(pool["replicaCount"], int) and pool["replicaCount"] >= 1
        assert isinstance(pool["diskSpec"]["bootDiskSizeGb"], int)
    assert yaml.safe_load(to_yaml(spec)) == spec


def env_of(pool: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pool["containerSpec"]["env"]}


def test_single_gpu_defaults():
    environ = {
        **BASE,
        "TASKS": "stsb,rte",
        "MAX_STEPS": "200",
        "MODEL_NAME": "roberta-base",
        "HF_TOKEN": "hf_secret",
        "GOOGLE_APPLICATION_CREDENTIALS": "/home/me/key.json",
        "SERVICE_ACCOUNT": "",
        "BATCH_SIZE": "",
    }
    spec = render_job_spec(environ, now=NOW)
    assert_valid_custom_job_spec(spec)
    (pool,) = spec["workerPoolSpecs"]
    assert pool["replicaCount"] == 1
    assert pool["machineSpec"] == {"machineType": "n1-standard-8", "acceleratorType": "NVIDIA_TESLA_T4",
                                   "acceleratorCount": 1}
    assert pool["diskSpec"] == {"bootDiskType": "pd-ssd", "bootDiskSizeGb": 100}
    assert pool["containerSpec"]["imageUri"] == IMAGE
    assert env_of(pool) == {
        "MODEL_NAME": "roberta-base",
        "TASKS": "stsb,rte",
        "MAX_STEPS": "200",
        "JOB_DIR": "gs://my-bucket/jobs/nightly-7",
    }
    assert spec["baseOutputDirectory"] == {"outputUriPrefix": "gs://my-bucket/jobs/nightly-7"}
    assert spec["scheduling"] == {"timeout": "86400s", "restartJobOnWorkerRestart": False}
    assert "serviceAccount" not in spec
    assert "hf_secret" not in to_yaml(spec) and "key.json" not in to_yaml(spec)


def test_multi_node_spot():
    environ = {
        **BASE,
        "REGION": "europe-west4",
        "IMAGE_REPO_NAME": "ml",
        "IMAGE_NAME": "trainer",
        "IMAGE_TAG": "v3",
        "MACHINE_TYPE": "a2-highgpu-2g",
        "ACCELERATOR_TYPE": "NVIDIA_TESLA_A100",
        "REPLICA_COUNT": "4",
        "SPOT": "true",
        "JOB_TIMEOUT": "90m",
        "BOOT_DISK_SIZE_GB": "250",
        "SERVICE_ACCOUNT": "trainer@my-project.iam.gserviceaccount.com",
        "JOB_DIR": "gs://other-bucket/runs/exp1/",
        "SAMPLING": "temperature",
    }
    spec = render_job_spec(environ, now=NOW)
    assert_valid_custom_job_spec(spec)
    chief, workers = spec["workerPoolSpecs"]
    assert (chief["replicaCount"], workers["replicaCount"]) == (1, 3)
    for pool in (chief, workers):
        assert pool["machineSpec"] == {"machineType": "a2-highgpu-2g", "acceleratorType": "NVIDIA_TESLA_A100",
                                       "acceleratorCount": 2}
        assert pool["diskSpec"]["bootDiskSizeGb"] == 250
        assert pool["containerSpec"]["imageUri"] == "europe-west4-docker.pkg.dev/my-project/ml/trainer:v3"
        assert env_of(pool) == {"SAMPLING": "temperature", "JOB_DIR": "gs://other-bucket/runs/exp1"}
    assert spec["scheduling"] == {"timeout": "5400s", "restartJobOnWorkerRestart": True, "strategy": "SPOT"}
    assert spec["serviceAccount"] == "trainer@my-project.iam.gserviceaccount.com"
    assert spec["baseOutputDirectory"]["outputUriPrefix"] == "gs://other-bucket/runs/exp1"


def test_cpu_only():
    environ = {**BASE, "MACHINE_TYPE": "e2-standard-8", "ACCELERATOR_TYPE": "none", "REPLICA_COUNT": "2"}
    spec = render_job_spec(environ, now=NOW)
    assert_valid_custom_job_spec(spec)
    assert [p["machineSpec"] for p in spec["workerPoolSpecs"]] == [{"machineType": "e2-standard-8"}] * 2
    count_zero = render_job_spec({**BASE, "ACCELERATOR_COUNT": "0"}, now=NOW)
    assert count_zero["workerPoolSpecs"][0]["machineSpec"] == {"machineType": "n1-standard-8"}


def test_defaults_from_bucket_and_clock():
    spec = render_job_spec({"PROJECT_ID": "my-project", "BUCKET_NAME": "gs://my-bucket/"}, now=NOW)
    job_dir = "gs://my-bucket/jobs/multitask-20260102-030405"
    assert spec["baseOutputDirectory"]["outputUriPrefix"] == job_dir
    assert env_of(spec["workerPoolSpecs"][0]) == {"JOB_DIR": job_dir}


def test_gpu_count_follows_the_machine_type():
    spec = render_job_spec({**BASE, "MACHINE_TYPE": "g2-standard-48", "ACCELERATOR_TYPE": "NVIDIA_L4"}, now=NOW)
    assert spec["workerPoolSpecs"][0]["machineSpec"]["acceleratorCount"] == 4


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"PROJECT_ID": ""}, "PROJECT_ID"),
        ({"PROJECT_ID": "My_Project"}, "PROJECT_ID"),
        ({"BUCKET_NAME": ""}, "BUCKET_NAME"),
        ({"JOB_DIR": "/local/dir"}, "JOB_DIR"),
        ({"REGION": "central"}, "REGION"),
        ({"ACCELERATOR_TYPE": "T4"}, "ACCELERATOR_TYPE"),
        ({"ACCELERATOR_TYPE": "TPU_V3"}, "ACCELERATOR_TYPE"),
        ({"MACHINE_TYPE": "g2-standard-8", "ACCELERATOR_TYPE": "NVIDIA_TESLA_T4"}, "MACHINE_TYPE"),
        ({"MACHINE_TYPE": "a2-highgpu-1g", "ACCELERATOR_TYPE": "NVIDIA_TESLA_A100", "ACCELERATOR_COUNT": "2"},
         "ACCELERATOR_COUNT"),
        ({"ACCELERATOR_COUNT": "3"}, "ACCELERATOR_COUNT"),
        ({"ACCELERATOR_COUNT": "two"}, "ACCELERATOR_COUNT"),
        ({"REPLICA_COUNT": "0"}, "REPLICA_COUNT"),
        ({"BOOT_DISK_SIZE_GB": "50"}, "BOOT_DISK_SIZE_GB"),
        ({"BOOT_DISK_TYPE": "ssd"}, "BOOT_DISK_TYPE"),
        ({"SPOT": "maybe"}, "SPOT"),
        ({"JOB_TIMEOUT": "soon"}, "JOB_TIMEOUT"),
        ({"JOB_TIMEOUT": "0h"}, "JOB_TIMEOUT"),
        ({"JOB_NAME": "my job"}, "JOB_NAME"),
        ({"IMAGE_TAG": "v:1"}, "IMAGE_TAG"),
        ({"SERVICE_ACCOUNT": "trainer"}, "SERVICE_ACCOUNT"),
        ({"BATCH_SIZE": "0"}, "BATCH_SIZE"),  # training settings are checked before submission
        ({"SAMPLING": "random"}, "SAMPLING"),
    ],
)
def test_bad_settings_name_the_variable(overrides: dict[str, str], named: str):
    with pytest.raises(UserError) as info:
        render_job_spec({**BASE, **overrides}, now=NOW)
    message = str(info.value)
    assert named in message and "\n" not in message


def test_missing_project_points_to_env_example():
    with pytest.raises(UserError, match=r"PROJECT_ID is not set.*\.env\.example"):
        render_job_spec({"BUCKET_NAME": "b-123"}, now=NOW)


def test_cloud_settings_are_documented():
    example = (ROOT / ".env.example").read_text()
    cloud_section = example[example.index("# --- Cloud (Docker / Vertex AI) ---"):]
    for name in CLOUD_ENV_NAMES:
        if name != "JOB_DIR":  # a training setting, documented above the Cloud section
            assert re.search(rf"^# {name}=", cloud_section, re.M), f"{name} missing from .env.example"


@pytest.mark.parametrize("variant, machine, accelerator", [
    ({}, "a3-highgpu-1g", "NVIDIA_H100_80GB"),  # the recipe as written: bf16 LoRA on one H100
    ({"QUANTIZE": "4bit", "MACHINE_TYPE": "g2-standard-8", "ACCELERATOR_TYPE": "NVIDIA_L4"}, "g2-standard-8",
     "NVIDIA_L4"),  # the README's QLoRA variant on one L4
])
def test_the_llama_recipe_renders_the_machine_it_needs(variant, machine, accelerator):
    """examples/llama_lora_per_task.env names its machine, GPU and disk; job-spec renders them (and the
    QLoRA variant's overrides), and the container gets the recipe's training settings."""
    environ = effective_environ(ROOT / "examples" / "llama_lora_per_task.env", {**BASE, **variant})
    spec = render_job_spec(environ, now=NOW)
    assert_valid_custom_job_spec(spec)
    (pool,) = spec["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": machine, "acceleratorType": accelerator, "acceleratorCount": 1}
    assert pool["diskSpec"] == {"bootDiskType": "pd-ssd", "bootDiskSizeGb": 200}
    env = env_of(pool)
    assert env["ADAPTER"] == "lora_per_task" and env["MODEL_NAME"] == "meta-llama/Llama-3.2-1B"
    assert env.get("QUANTIZE") == variant.get("QUANTIZE")
