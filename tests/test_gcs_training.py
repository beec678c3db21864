"""Training against a real local GCS server (gcp-storage-emulator): uploads, kill -9, SIGTERM."""

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time

import google_crc32c
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer.checkpoints import remote
from trainer.checkpoints.local import is_complete
from trainer.layout import STAGING_DIR
from trainer.storage import gcs
from trainer.storage.gcs import GcsStore
from trainer.training.preemption import EXIT_PREEMPTED

from .tiny import ROOT, quick_env, run_cli, save_tiny_pretrained

BUCKET = "g-test-bucket"


def crc32c_b64(path) -> str:
    return base64.b64encode(google_crc32c.Checksum(path.read_bytes()).digest()).decode()


def remote_objects(client, prefix: str) -> dict[str, object]:
    return {b.name.removeprefix(prefix): b for b in client.list_blobs(BUCKET, prefix=prefix)}


def download_logs(client, prefix: str, directory) -> EventAccumulator:
    """The bucket's TensorBoard files under `prefix`, read as TensorBoard reads a log directory."""
    for name, blob in remote_objects(client, prefix).items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(directory / name))
    return EventAccumulator(str(directory)).Reload()


def committed_steps(client, job: str) -> list[int]:
    return [s for s, _ in remote.list_committed_checkpoints(GcsStore(client), gcs.parse_gcs_uri(f"{job}/checkpoints"))]


def test_run_with_job_dir_leaves_everything_in_the_bucket(tmp_path, gcs_client, gcs_bucket, cli):
    out = tmp_path / "out"
    env = quick_env(out, JOB_DIR=f"gs://{BUCKET}/runs/one", SAVE_STEPS="4", SAVE_TOTAL_LIMIT="2")
    result = cli("train", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert committed_steps(gcs_client, f"gs://{BUCKET}/runs/one") == [8, 12]  # rotation keeps SAVE_TOTAL_LIMIT
    ckpt = remote_objects(gcs_client, "runs/one/checkpoints/checkpoint-12/")
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "model.safetensors", "trainer_state.json",
            "config.json", "multitask.json", remote.MANIFEST, remote.MARKER} <= set(ckpt)
    local_ckpt = out / "checkpoint-12"
    for name, blob in ckpt.items():
        if name not in (remote.MANIFEST, remote.MARKER):
            assert blob.crc32c == crc32c_b64(local_ckpt / name), name
    model = remote_objects(gcs_client, "runs/one/model/")
    for local in [*(out / "model").rglob("*"), *(out / "export").rglob("*"), out / "metrics.json"]:
        if local.is_file():
            rel = str(local.relative_to(out / "model" if local.is_relative_to(out / "model") else out))
            assert model[rel].crc32c == crc32c_b64(local), rel
    assert {"export/demo_sentiment/model.safetensors", "export/demo_category/config.json", "metrics.json"} <= set(model)
    assert any(n.startswith("runs/one/logs/") for n in [b.name for b in gcs_client.list_blobs(BUCKET)])


def _train_process(env: dict, log) -> subprocess.Popen:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen([sys.executable, "-m", "trainer", "train"], cwd=ROOT, env=full, stdout=log, stderr=log)


def _steps_done(log_path) -> int:
    """Steps trained so far, from the Trainer's own log lines (LOGGING_STEPS=1, unbuffered output)."""
    return log_path.read_text(errors="replace").count("'loss':") if log_path.exists() else 0


@pytest.mark.slow
def test_kill_9_then_resume_from_the_bucket_matches_an_uninterrupted_run(tmp_path, gcs_client, gcs_bucket):
    model = save_tiny_pretrained(tmp_path / "tiny")
    # A checkpoint every 20 steps: as in production, an upload finishes well within one save interval,
    # so a kill loses about SAVE_STEPS steps: those since the newest commit (more only if uploads fell behind).
    common = {"MODEL_NAME": str(model), "MAX_STEPS": "80", "SAVE_STEPS": "20", "BATCH_SIZE": "32",
              "MAX_TRAIN_SAMPLES": "400", "MAX_EVAL_SAMPLES": "16", "EVAL_STEPS": "10", "SEED": "5",
              "LOGGING_STEPS": "1", "LOG_UPLOAD_SECONDS": "1"}
    straight = run_cli("train", env={**common, "OUTPUT_DIR": str(tmp_path / "straight")})
    assert straight.returncode == 0, straight.stderr[-3000:]

    job = f"gs://{BUCKET}/jobs/kill9"
    task_log = tmp_path / "first.log"
    env = {**common, "OUTPUT_DIR": str(tmp_path / "first"), "JOB_DIR": job, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "first.log", "w") as log:
        proc = _train_process(env, log)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not [s for s in committed_steps(gcs_client, job)
                                                                        if s >= 20]:
            time.sleep(0.05)
        # wait for one more log upload after that checkpoint: the bucket's history then runs past it
        sizes = lambda: sum(b.size for n, b in remote_objects(gcs_client, "jobs/kill9/logs/").items())  # noqa: E731
        before = sizes()
        while time.time() < deadline and proc.poll() is None and sizes() == before:
            time.sleep(0.05)
        streamed = [n for n in remote_objects(gcs_client, "jobs/kill9/logs/") if "tfevents" in n]
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert running and streamed, "no TensorBoard events reached the bucket while the run was training"
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-2000:]
    done = _steps_done(task_log)
    last_committed = max(committed_steps(gcs_client, job))
    assert 20 <= last_committed < 80
    # At most one save interval plus the next checkpoint's upload: the kill waits for a log upload after the
    # first commit, and that can fall while the next checkpoint is still on its way up.
    assert done - last_committed < 2 * 20, f"lost {done - last_committed} steps (trained {done})"

    killed = download_logs(gcs_client, "jobs/kill9/logs/", tmp_path / "killed")
    assert max(e.step for e in killed.Scalars("train/loss")) > last_committed  # steps to be logged twice

    resumed = run_cli("train", env={**common, "OUTPUT_DIR": str(tmp_path / "second"), "JOB_DIR": job,
                                    "RESUME": "auto"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"downloaded checkpoint-{last_committed}" in resumed.stderr
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "second" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run diverged"
    # the per-task selection travelled through the bucket with the checkpoint (SELECT_BEST=per_task)
    selected = [json.loads((tmp_path / run / "metrics.json").read_text())["selected"] for run in ("straight", "second")]
    assert selected[0] == selected[1]
    for task, chosen in selected[0].items():
        a, b = (load_file(tmp_path / run / "export" / task / "model.safetensors") for run in ("straight", "second"))
        assert all(torch.equal(a[k], b[k]) for k in a), f"export/{task} (step {chosen['step']}) differs"
    # the training history in the bucket: every logged step once, 1..80, across the killed run's event
    # files and the resumed run's (whose purge marker drops the killed run's steps after its checkpoint)
    events = download_logs(gcs_client, "jobs/kill9/logs/", tmp_path / "history")
    assert len(list((tmp_path / "history").rglob("events.out.tfevents.*"))) >= 2
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 81))
    assert [e.step for e in events.Scalars("eval/average")] == list(range(10, 81, 10))
    print(f"kill -9 at step {done}; resumed from checkpoint-{last_committed}; lost {done - last_committed} steps")


def test_sigterm_saves_commits_and_exits_nonzero_within_30s(tmp_path, gcs_client, gcs_bucket):
    job = f"gs://{BUCKET}/jobs/preempt"
    task_log = tmp_path / "run.log"
    env = {"OUTPUT_DIR": str(tmp_path / "out"), "JOB_DIR": job, "MAX_STEPS": "100000", "SAVE_STEPS": "100000",
           "EVAL_STEPS": "100000", "LOGGING_STEPS": "1", "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "run.log", "w") as log:
        proc = _train_process(env, log)
        deadline = time.time() + 120
        while time.time() < deadline and _steps_done(task_log) < 5:
            time.sleep(0.1)
        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        elapsed = time.time() - signalled
    output = (tmp_path / "run.log").read_text()
    assert rc == EXIT_PREEMPTED, output[-3000:]
    assert elapsed < 30, f"took {elapsed:.1f}s to checkpoint and exit"
    steps = committed_steps(gcs_client, job)
    assert steps == [_steps_done(task_log)], (steps, output[-2000:])
    assert "preempted: stopped at step" in output
    state = json.loads(gcs_client.bucket(BUCKET).blob(f"jobs/preempt/checkpoints/checkpoint-{steps[0]}/"
                                                      "trainer_state.json").download_as_bytes())
    assert state["global_step"] == steps[0]
    assert not (tmp_path / "out" / "model").exists()  # no final export for an interrupted run


@pytest.mark.parametrize("variable", ["AIP_CHECKPOINT_DIR"])
def test_vertex_dirs_take_precedence_over_job_dir(tmp_path, gcs_client, gcs_bucket, variable, cli):
    env = quick_env(tmp_path / "out", JOB_DIR=f"gs://{BUCKET}/ignored", MAX_STEPS="4", SAVE_STEPS="4",
                    AIP_CHECKPOINT_DIR=f"gs://{BUCKET}/vertex/checkpoints/",
                    AIP_MODEL_DIR=f"gs://{BUCKET}/vertex/model/", AIP_TENSORBOARD_LOG_DIR=f"gs://{BUCKET}/vertex/logs/")
    result = cli("train", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    names = [b.name for b in gcs_client.list_blobs(BUCKET)]
    assert "vertex/checkpoints/checkpoint-4/COMMITTED" in names or any(
        n.startswith("vertex/checkpoints/checkpoint-4/") for n in names)
    assert any(n.startswith("vertex/model/export/") for n in names)
    assert any(n.startswith("vertex/logs/") for n in names)
    assert not any(n.startswith("ignored/") for n in names)


def test_missing_bucket_is_one_line_before_anything_is_written(tmp_path, gcs_client, gcs_bucket, cli):
    out = tmp_path / "out"
    result = cli("train", env=quick_env(out, JOB_DIR="gs://no-such-bucket/x"))
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: bucket gs://no-such-bucket does not exist; create it with `make create-bucket` or fix JOB_DIR"]
    assert "Traceback" not in result.stderr and "UPLOAD FAILED" not in result.stderr, result.stderr[-2000:]
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert list(gcs_client.list_blobs(BUCKET)) == []


def _committed_lines(text: str, job: str) -> list[int]:
    """The steps of the "committed <checkpoints>/checkpoint-N" log lines, in order."""
    return [int(m) for m in re.findall(rf"committed {re.escape(job)}/checkpoints/checkpoint-(\d+) ", text)]


@pytest.mark.slow
def test_outage_then_sigterm_with_storage_down(tmp_path, gcs_client, gcs_emulator, gcs_bucket):
    """A 6 s outage while training saves every 2 steps, then SIGTERM while storage is down again."""
    job, out, task_log = f"gs://{BUCKET}/jobs/outage", tmp_path / "out", tmp_path / "run.log"
    stale = out / STAGING_DIR / "checkpoint-7.3"  # what a killed run leaves
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    env = {"OUTPUT_DIR": str(out), "JOB_DIR": job, "MAX_STEPS": "100000", "SAVE_STEPS": "2", "EVAL_STEPS": "100000",
           "SAVE_TOTAL_LIMIT": "2", "BATCH_SIZE": "8", "MAX_TRAIN_SAMPLES": "200", "MAX_EVAL_SAMPLES": "8",
           "LOGGING_STEPS": "1", "PYTHONUNBUFFERED": "1", "STORAGE_EMULATOR_HOST": gcs_emulator.url}
    with open(task_log, "w") as log:
        proc = _train_process(env, log)
        try:
            deadline = time.time() + 180
            while time.time() < deadline and proc.poll() is None and not committed_steps(gcs_client, job):
                time.sleep(0.1)
            assert not stale.exists(), "the killed run's staging was not removed at the start"
            gcs_emulator.stop()
            down_at, folders = _steps_done(task_log), 0
            while time.time() < deadline and _steps_done(task_log) < down_at + 8:  # 4 saves at least
                if (out / STAGING_DIR).is_dir():
                    folders = max(folders, sum(p.is_dir() for p in (out / STAGING_DIR).iterdir()))
                time.sleep(0.02)
            assert folders <= 2, f"{folders} checkpoints staged at once: the running upload and the newest only"
            gcs_emulator.start()
            up_at = _steps_done(task_log)
            while time.time() < deadline and not ([s for s in committed_steps(gcs_client, job) if s >= up_at]
                                                  and len(committed_steps(gcs_client, job)) <= 2):
                time.sleep(0.1)  # the newest checkpoint is next: it commits (and rotation follows) within seconds
            assert max(committed_steps(gcs_client, job)) >= up_at
            gcs_emulator.stop()
            time.sleep(1.0)
            signalled = time.time()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
            elapsed = time.time() - signalled
        finally:
            if proc.poll() is None:
                proc.kill()
    gcs_emulator.start()
    text = task_log.read_text(errors="replace")
    assert rc == EXIT_PREEMPTED, text[-3000:]
    assert elapsed < 30, f"took {elapsed:.1f} s from SIGTERM to exit"

    # one warning per outage (two), one recovery (the second outage outlives the run), skipped checkpoints
    assert text.count("requests are failing") == 2 and text.count("reachable again") == 1, text[-3000:]
    assert "older checkpoint(s) were not uploaded" in text
    commits = _committed_lines(text, job)
    saved_in_outage = [c for c in commits if down_at < c < up_at]  # 4 or more saves, the newest of them waits
    assert len(saved_in_outage) <= 2, f"the checkpoints saved during the outage were all uploaded: {commits}"
    newest = committed_steps(gcs_client, job)
    assert newest == commits[-2:], (newest, commits)  # rotation (SAVE_TOTAL_LIMIT=2) after coalescing

    line = [ln for ln in text.splitlines() if ln.startswith("preempted:")][-1]
    step = int(re.search(r"stopped at step (\d+)", line).group(1))
    assert step > newest[-1] and f"not committed to {job}/checkpoints" in line, line
    assert f"newest committed in the bucket: step {newest[-1]};" in line, line
    waited = float(re.search(r"waited ([\d.]+) s for uploads", line).group(1))
    assert 5 < waited <= 25 and waited < elapsed, line  # the grace's 25 s, less the last step and its save
    assert is_complete(out / f"checkpoint-{step}")  # kept for a restart on this machine
    assert not (out / STAGING_DIR).exists()
