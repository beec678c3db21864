"""`make cloud-train` with the real gcloud CLI, against a fake Vertex AI endpoint on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "test-project-123"
JOB_NUMBER = "4242424242"
JOB_NAME = f"projects/987654321/locations/us-central1/customJobs/{JOB_NUMBER}"

pytestmark = pytest.mark.skipif(shutil.which("gcloud") is None, reason="the gcloud CLI is not installed")


class FakeVertex(ThreadingHTTPServer):
    """Answers the two calls gcloud makes: customJobs create (POST) and get (GET)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.job: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _Handler(BaseHTTPRequestHandler):
    server: FakeVertex

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # http.server's naming
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.requests.append({"method": "POST", "path": self.path, "body": body})
        if self.path.split("?")[0] != f"/v1/projects/{PROJECT}/locations/us-central1/customJobs":
            return self._reply(404, {"error": {"code": 404, "message": f"no route {self.path}", "status": "NOT_FOUND"}})
        self.server.job = {**body, "name": JOB_NAME, "state": "JOB_STATE_PENDING",
                           "createTime": "2026-01-02T03:04:05Z"}
        self._reply(200, self.server.job)

    def do_GET(self) -> None:
        self.server.requests.append({"method": "GET", "path": self.path})
        if self.path.split("?")[0] != f"/v1/projects/{PROJECT}/locations/us-central1/customJobs/{JOB_NUMBER}":
            return self._reply(404, {"error": {"code": 404, "message": f"no route {self.path}", "status": "NOT_FOUND"}})
        self._reply(200, {**self.server.job, "state": "JOB_STATE_RUNNING", "startTime": "2026-01-02T03:09:00Z"})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def vertex() -> Iterator[FakeVertex]:
    server = FakeVertex()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An empty project dir (its own .env goes here) and an environment free of the caller's cloud settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSDK_", "GOOGLE_", "MAKE"))}
    for name in ("PROJECT_ID", "BUCKET_NAME", "REGION", "JOB_NAME", "JOB_DIR", "JOB_ID", "OUTPUT_DIR", "TASKS",
                 "MAX_STEPS"):
        env.pop(name, None)
    env.update(
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
        CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1",
        CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="1",
        PYTHONPATH=str(ROOT),
    )
    work = tmp_path / "project"
    work.mkdir()
    return work, env


@pytest.fixture
def gcloud_to_fake(workdir: tuple[Path, dict[str, str]], vertex: FakeVertex) -> tuple[Path, dict[str, str]]:
    """The workdir, with a gcloud config of its own that talks to the fake endpoint without credentials."""
    _, env = workdir
    for prop, value in (("auth/disable_credentials", "true"), ("api_endpoint_overrides/aiplatform", vertex.url)):
        subprocess.run(["gcloud", "config", "set", prop, value], env=env, check=True, capture_output=True)
    return workdir


def make(work: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    venv = Path(sys.executable).parent.parent  # the environment running the tests
    cmd = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-C", str(work), f"VENV={venv}"]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=180)


def test_cloud_train_submits_the_rendered_spec(gcloud_to_fake: tuple[Path, dict[str, str]], vertex: FakeVertex):
    work, env = gcloud_to_fake
    (work / ".env").write_text(
        "# settings as a user writes them\n"
        f"PROJECT_ID={PROJECT}\n"
        "BUCKET_NAME=test-bucket\n"
        'TASKS="stsb,rte"\n'
        "MAX_STEPS=50\n"
        "HF_TOKEN=hf_do_not_send\n"
    )
    env.update(REPLICA_COUNT="2", SPOT="true", JOB_TIMEOUT="2h", JOB_NAME="e2e-job", BATCH_SIZE="16")
    result = make(work, env, "cloud-train", "SKIP_DOCKER=1")
    assert result.returncode == 0, result.stdout + result.stderr

    (request,) = vertex.requests
    assert request["path"].startswith(f"/v1/projects/{PROJECT}/locations/us-central1/customJobs")
    body = request["body"]
    assert body["displayName"] == "e2e-job"
    spec = body["jobSpec"]
    image = f"us-central1-docker.pkg.dev/{PROJECT}/multitask/multitask-trainer:latest"
    env_list = [
        {"name": "TASKS", "value": "stsb,rte"},
        {"name": "MAX_STEPS", "value": "50"},
        {"name": "BATCH_SIZE", "value": "16"},
        {"name": "JOB_DIR", "value": "gs://test-bucket/jobs/e2e-job"},
    ]
    assert set(spec) == {"workerPoolSpecs", "scheduling", "baseOutputDirectory"}
    # replicaCount is an int64, which the API's JSON carries as a string.
    assert [p["replicaCount"] for p in spec["workerPoolSpecs"]] == ["1", "1"]
    for pool in spec["workerPoolSpecs"]:
        assert set(pool) == {"machineSpec", "replicaCount", "diskSpec", "containerSpec"}
        assert pool["machineSpec"] == {
            "machineType": "n1-standard-8",
            "acceleratorType": "NVIDIA_TESLA_T4",
            "acceleratorCount": 1,
        }
        assert pool["diskSpec"] == {"bootDiskType": "pd-ssd", "bootDiskSizeGb": 100}
        assert pool["containerSpec"]["imageUri"] == image
        assert sorted(pool["containerSpec"]["env"], key=str) == sorted(env_list, key=str)
    assert spec["baseOutputDirectory"] == {"outputUriPrefix": "gs://test-bucket/jobs/e2e-job"}
    assert spec["scheduling"] == {"timeout": "7200s", "restartJobOnWorkerRestart": True, "strategy": "SPOT"}
    assert "hf_do_not_send" not in json.dumps(body)

    assert f"Job id:  {JOB_NUMBER}" in result.stdout
    console = f"https://console.cloud.google.com/ai/platform/locations/us-central1/training/{JOB_NUMBER}?project={PROJECT}"
    assert console in result.stdout
    assert (work / ".make" / "last-job-id").read_text().strip() == JOB_NUMBER

    status = make(work, env, "cloud-status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "JOB_STATE_RUNNING" in status.stdout
    assert vertex.requests[-1]["method"] == "GET"


@pytest.mark.parametrize(
    ("target", "dotenv", "missing"),
    [
        ("cloud-train", "BUCKET_NAME=b-1\n", "PROJECT_ID"),
        ("cloud-train", f"PROJECT_ID={PROJECT}\n", "BUCKET_NAME"),
        ("docker-push", "", "PROJECT_ID"),
        ("cloud-status", f"PROJECT_ID={PROJECT}\n", "JOB_ID"),
        ("cloud-logs", f"PROJECT_ID={PROJECT}\n", "JOB_ID"),
    ],
)
def test_targets_refuse_to_start_without_a_setting(
    workdir: tuple[Path, dict[str, str]], vertex: FakeVertex, target: str, dotenv: str, missing: str
):
    work, env = workdir
    (work / ".env").write_text(dotenv)
    result = make(work, env, target, "SKIP_DOCKER=1")
    assert result.returncode != 0
    assert missing in result.stderr
    assert ".env.example" in result.stderr or "JOB_ID=" in result.stderr
    assert vertex.requests == []


# --- hostile values: nothing in a setting ever runs (issue 18) ------------------------------------------------

HOSTILE = {
    "single quote": "x'; touch {canary}; echo '",
    "double quote": 'x"; touch {canary}; echo "',
    "command substitution": "us-central1$(touch {canary})",
    "backticks": "a`touch {canary}`",
    "semicolon": "a; touch {canary}",
    "newline": "a\ntouch {canary}",
}


def dotenv_line(name: str, value: str) -> str:
    """NAME="value" with .env's double-quote escapes, so any value fits on one line."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{name}="{escaped}"\n'


def test_hostile_values_never_run(gcloud_to_fake: tuple[Path, dict[str, str]], vertex: FakeVertex):
    work, env = gcloud_to_fake
    for kind in HOSTILE:
        check_hostile_value(work, env, HOSTILE[kind].format(canary=work.parent / "canary"), work.parent / "canary")
    assert vertex.requests == []
    assert not (work / ".make" / "job-spec.yaml").exists() and not (work / ".make" / "env.mk").exists()


def check_hostile_value(work: Path, env: dict[str, str], value: str, canary: Path) -> None:
    """One hostile value in each gcloud setting in turn: one `error:` line naming it, and nothing runs."""
    good = {"PROJECT_ID": PROJECT, "BUCKET_NAME": "test-bucket", "JOB_ID": JOB_NUMBER}
    cases = [  # (target, the hostile setting, from .env or the environment)
        ("cloud-status", "REGION", "env"),
        ("cloud-status", "PROJECT_ID", ".env"),
        ("cloud-logs", "JOB_ID", ".env"),
        ("cloud-train", "JOB_NAME", ".env"),
        ("cloud-train", "PROJECT_ID", "env"),
    ]
    for target, name, source in cases:
        settings = {**good, name: value}
        dotenv = {k: v for k, v in settings.items() if source == ".env" or k != name}
        (work / ".env").write_text("".join(dotenv_line(k, v) for k, v in dotenv.items()))
        result = make(work, {**env, name: value} if source == "env" else env, target, "SKIP_DOCKER=1")
        assert not canary.exists(), f"{target} ran {name}={value!r} from {source}"
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode != 0 and len(errors) == 1, result.stderr
        assert errors[0].startswith(f"error: {name}=") and "not valid" in errors[0], errors[0]
        assert "Traceback" not in result.stderr
    # make -n: every value hostile, in .env and in the environment; make never holds one, so no command shows it
    (work / ".env").write_text("".join(dotenv_line(k, value) for k in ("PROJECT_ID", "REGION", "JOB_NAME")))
    hostile_env = {**env, "JOB_ID": value, "BUCKET_NAME": value, "IMAGE_TAG": value}
    result = make(work, hostile_env, "-n", "cloud-train", "cloud-status", "cloud-logs", "create-bucket",
                  "SKIP_DOCKER=1")
    assert not canary.exists() and value not in result.stdout, result.stdout


def test_a_valid_job_id_reaches_gcloud_as_one_argument(gcloud_to_fake, vertex: FakeVertex):
    """JOB_ID from the environment, PROJECT_ID from .env: cloud-status asks the fake for exactly that job."""
    work, env = gcloud_to_fake
    (work / ".env").write_text(dotenv_line("PROJECT_ID", PROJECT) + dotenv_line("REGION", "us-central1"))
    vertex.job = {"name": JOB_NAME, "displayName": "j"}
    result = make(work, {**env, "JOB_ID": JOB_NUMBER}, "cloud-status")
    assert result.returncode == 0, result.stderr
    assert [r["path"].split("?")[0] for r in vertex.requests] == [
        f"/v1/projects/{PROJECT}/locations/us-central1/customJobs/{JOB_NUMBER}"]
