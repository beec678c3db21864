"""`make cloud-train`, `cloud-status` and `cloud-logs`: gcloud called with an argument list, never through a shell.

The Makefile hands these commands no values, only the environment: each setting is read here (the environment
over `.env`), checked against its documented form, and passed to gcloud as one argument of its own. A value
with a quote, `$(...)`, a backtick or a `;` is refused with one line before gcloud starts; none could run as
code anyway, since no shell ever sees it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from trainer.errors import UserError

JOB_SPEC_FILE = ".make/job-spec.yaml"
LAST_JOB_FILE = ".make/last-job-id"
DEFAULT_REGION = "us-central1"
# https://cloud.google.com/resource-manager/docs/creating-managing-projects: 6-30 lowercase letters, digits or
# hyphens, starting with a letter and not ending with a hyphen (older projects may carry a "domain:" prefix).
PROJECT_ID = r"([a-z][a-z0-9.-]*:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"
PROJECT_ID_RULE = "a project ID has 6-30 lowercase letters, digits or hyphens and starts with a letter"
REGION = r"[a-z]+(-[a-z]+)+\d+"
# A custom job's ID (the number gcloud prints), or its full resource name.
JOB_ID = r"(projects/[a-z0-9.:-]+/locations/[a-z0-9-]+/customJobs/)?\d{1,20}"

# Cloud Storage bucket locations, from https://cloud.google.com/storage/docs/locations (as of 2025):
# regions, the predefined dual-regions, and the multi-regions. A location Google adds later is refused until it
# is added here; gcloud's own `gcloud storage buckets create --location` is then the way.
GCS_REGIONS = (
    "northamerica-northeast1", "northamerica-northeast2", "northamerica-south1",
    "us-central1", "us-east1", "us-east4", "us-east5", "us-south1", "us-west1", "us-west2", "us-west3", "us-west4",
    "southamerica-east1", "southamerica-west1",
    "europe-central2", "europe-north1", "europe-north2", "europe-southwest1", "europe-west1", "europe-west2",
    "europe-west3", "europe-west4", "europe-west6", "europe-west8", "europe-west9", "europe-west10",
    "europe-west12",
    "asia-east1", "asia-east2", "asia-northeast1", "asia-northeast2", "asia-northeast3", "asia-south1",
    "asia-south2", "asia-southeast1", "asia-southeast2",
    "me-central1", "me-central2", "me-west1",
    "australia-southeast1", "australia-southeast2",
    "africa-south1",
)
GCS_DUAL_REGIONS = ("asia1", "eur4", "eur5", "eur7", "eur8", "nam4")
GCS_MULTI_REGIONS = ("asia", "eu", "us")


def check(name: str, value: str, pattern: str, rule: str) -> str:
    """`value` if it matches `pattern` whole; else one line naming the setting and the form it takes."""
    if not re.fullmatch(pattern, value):
        raise UserError(f"{name}={value!r} is not valid: {rule}")
    return value


def check_bucket_location(region: str) -> str:
    """REGION for a bucket: one of Cloud Storage's documented locations (a bucket's location is permanent)."""
    if region.lower() not in (*GCS_REGIONS, *GCS_DUAL_REGIONS, *GCS_MULTI_REGIONS):
        raise UserError(
            f"REGION={region!r} is not a Cloud Storage location; use a region such as us-central1 or europe-west4, "
            f"a dual-region ({', '.join(d.upper() for d in GCS_DUAL_REGIONS)}) or a multi-region (US, EU, ASIA); "
            "see https://cloud.google.com/storage/docs/locations"
        )
    return region


def _setting(environ: Mapping[str, str], name: str) -> str:
    return (environ.get(name) or "").strip()


def project_and_region(environ: Mapping[str, str]) -> tuple[str, str]:
    project = _setting(environ, "PROJECT_ID")
    if not project:
        raise UserError("PROJECT_ID not set; set it in the environment or in .env "
                        "(see the Cloud section of .env.example)")
    region = _setting(environ, "REGION") or DEFAULT_REGION
    return (check("PROJECT_ID", project, PROJECT_ID, PROJECT_ID_RULE),
            check("REGION", region, REGION, "use a region like us-central1"))


def job_id(environ: Mapping[str, str]) -> str:
    """JOB_ID, else the job cloud-train last submitted from this folder."""
    value = _setting(environ, "JOB_ID")
    if not value and Path(LAST_JOB_FILE).is_file():
        value = Path(LAST_JOB_FILE).read_text().strip()
    if not value:
        raise UserError(f"JOB_ID not set and no job submitted from here yet ({LAST_JOB_FILE}); run make cloud-train "
                        "or pass JOB_ID=<id>")
    return check("JOB_ID", value, JOB_ID, "use the job's number that cloud-train printed, e.g. JOB_ID=1234567890")


def _run(argv: list[str]) -> int:
    """gcloud's own exit status; its output and errors go straight to ours."""
    sys.stdout.flush()
    try:
        return subprocess.run(argv, check=False).returncode
    except FileNotFoundError:
        raise UserError("gcloud not found; install the Google Cloud CLI") from None
    except KeyboardInterrupt:
        return 130


def status(environ: Mapping[str, str] = os.environ) -> int:
    """`python -m trainer cloud-status`: the job's state."""
    job = job_id(environ)
    project, region = project_and_region(environ)
    return _run(["gcloud", "ai", "custom-jobs", "describe", job, f"--project={project}", f"--region={region}",
                 "--format=yaml(name,displayName,state,createTime,startTime,endTime,error)"])


def logs(environ: Mapping[str, str] = os.environ) -> int:
    """`python -m trainer cloud-logs`: stream the job's logs."""
    job = job_id(environ)
    project, region = project_and_region(environ)
    return _run(["gcloud", "ai", "custom-jobs", "stream-logs", job, f"--project={project}", f"--region={region}"])


def train(environ: Mapping[str, str] = os.environ, check_only: bool = False) -> int:
    """`python -m trainer cloud-train`: render the job spec, submit it, remember the job's ID for status and logs.

    With `check_only`, every setting is checked and nothing is written or sent (the Makefile runs this before
    it builds the image).
    """
    from trainer.cloud.job_spec import build_spec, cloud_settings, to_yaml
    from trainer.files import check_writable_file

    cloud = cloud_settings(environ)
    spec = to_yaml(build_spec(cloud, environ))
    if check_only:
        return 0
    check_writable_file(JOB_SPEC_FILE, JOB_SPEC_FILE)
    Path(JOB_SPEC_FILE).parent.mkdir(parents=True, exist_ok=True)
    Path(JOB_SPEC_FILE).write_text(spec)
    argv = ["gcloud", "ai", "custom-jobs", "create", f"--project={cloud.project_id}", f"--region={cloud.region}",
            f"--display-name={cloud.job_name}", f"--config={JOB_SPEC_FILE}", "--format=value(name)"]
    print(" ".join(argv), file=sys.stderr, flush=True)
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    except FileNotFoundError:
        raise UserError("gcloud not found; install the Google Cloud CLI") from None
    if done.returncode != 0:
        return done.returncode
    name = done.stdout.strip()
    number = name.rsplit("/", 1)[-1]
    if not re.fullmatch(r"\d+", number):
        print(f"error: gcloud returned no job name (it printed {name[:80]!r})", file=sys.stderr)
        return 1
    Path(LAST_JOB_FILE).write_text(number + "\n")
    print(f"Job id:  {number} ({name})")
    print(f"Console: https://console.cloud.google.com/ai/platform/locations/{cloud.region}/training/{number}"
          f"?project={cloud.project_id}")
    print(f"Next:    make cloud-logs   |   make cloud-status   (JOB_ID={number})")
    return 0
