"""One run per OUTPUT_DIR and JOB_DIR (issue 11, parts 1 and 2): run identities, the local lock, the bucket lease.

Through the real CLI and the real storage emulator where the one-line refusal is the point; in-process `train`
where only the decision is (each CLI start costs ~5 s of imports).
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from trainer.checkpoints import remote
from trainer.errors import UserError
from trainer.runs.lease import takeover_reason, this_machine
from trainer.storage import gcs
from trainer.storage.gcs import GcsStore
from trainer.train import train

from .tiny import ROOT, quick_env, run_cli, save_tiny_pretrained, settings_of

BUCKET = "g-test-bucket"
QUICK = {"MAX_STEPS": "4", "SAVE_STEPS": "4", "EVAL_STEPS": "4", "REPORT_TO": "none"}


def in_process(env: dict[str, str]):
    settings = settings_of(**{k.lower(): v for k, v in env.items()})
    return train(settings)


def bucket_state(client) -> dict[str, tuple]:
    return {b.name: (b.generation, b.crc32c) for b in client.list_blobs(BUCKET)}


def error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def run_json(path) -> dict:
    return json.loads(path.read_text())


def test_a_job_dir_belongs_to_one_run(tmp_path, gcs_client, gcs_bucket):
    job = f"gs://{BUCKET}/reuse"
    in_process(quick_env(tmp_path / "a", JOB_DIR=job, SEED="1", **QUICK))
    run_a = run_json(tmp_path / "a" / "run.json")["run_id"]
    recorded = gcs_client.bucket(BUCKET).blob("reuse/checkpoints/run.json").download_as_bytes()
    assert json.loads(recorded)["run_id"] == run_a
    before = bucket_state(gcs_client)

    # a new run with another seed in the same JOB_DIR (and a new OUTPUT_DIR): one line, nothing written
    other = run_cli("train", env=quick_env(tmp_path / "b", JOB_DIR=job, SEED="2", **QUICK))
    line = error_line(other)
    assert run_a in line and "SEED 1 -> 2" in line and "new JOB_DIR" in line and "RESUME=auto" in line, line
    assert bucket_state(gcs_client) == before
    assert not (tmp_path / "b").exists()

    # RESUME=auto continues only a run whose settings match
    with pytest.raises(UserError, match=rf"RESUME=auto: .*run {run_a}.*SEED 1 -> 2"):
        in_process(quick_env(tmp_path / "c", JOB_DIR=job, SEED="2", RESUME="auto", **QUICK))
    assert bucket_state(gcs_client) == before and not (tmp_path / "c").exists()

    report = in_process(quick_env(tmp_path / "d", JOB_DIR=job, SEED="1", RESUME="auto", **{**QUICK, "MAX_STEPS": "8"}))
    assert report["global_step"] == 8
    assert json.loads((tmp_path / "d" / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert run_json(tmp_path / "d" / "run.json")["run_id"] == run_a  # the same run, continued
    store, ckpts = GcsStore(gcs_client), gcs.parse_gcs_uri(f"{job}/checkpoints")
    assert [s for s, _ in remote.list_committed_checkpoints(store, ckpts)][-1] == 8
    assert "reuse/checkpoints/lease.json" not in bucket_state(gcs_client)  # released at the end


def test_resume_with_other_tasks_or_another_model_is_one_line(exported_run, tmp_path):
    out, env, _ = exported_run
    listing = sorted((str(p), p.stat().st_mtime_ns) for p in out.rglob("*"))
    result = run_cli("train", env={**env, "RESUME": "auto", "TASKS": "demo_sentiment,demo_category"})
    line = error_line(result)
    assert "RESUME=auto" in line and "TASKS demo_sentiment,demo_similarity,demo_category -> " in line, line
    model = save_tiny_pretrained(tmp_path / "tiny")
    with pytest.raises(UserError, match=rf"checkpoint's directory holds run .*MODEL_NAME demo -> {model}"):
        in_process({**env, "RESUME": str(out / "checkpoint-8"), "MODEL_NAME": str(model),
                    "OUTPUT_DIR": str(tmp_path / "new")})
    assert sorted((str(p), p.stat().st_mtime_ns) for p in out.rglob("*")) == listing  # nothing written


@pytest.mark.slow
def test_two_runs_at_once_and_a_stale_lease(tmp_path, gcs_client, gcs_bucket, caplog):
    job = f"gs://{BUCKET}/busy"
    lease_blob = gcs_client.bucket(BUCKET).blob("busy/checkpoints/lease.json")
    long_run = quick_env(tmp_path / "one", JOB_DIR=job, MAX_STEPS="100000", SAVE_STEPS="100000",
                         EVAL_STEPS="100000", REPORT_TO="none")
    with open(tmp_path / "one.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "trainer", "train"], cwd=ROOT, stdout=log, stderr=log,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **long_run})
    try:
        deadline = time.time() + 120
        claimed = tmp_path / "one" / "run.json"  # written after the lock and the lease are taken
        while time.time() < deadline and proc.poll() is None and not claimed.exists():
            time.sleep(0.2)
        assert proc.poll() is None and lease_blob.exists(), (tmp_path / "one.log").read_text()[-3000:]
        run_one = run_json(claimed)["run_id"]
        proc.send_signal(signal.SIGSTOP)  # holds its lock and lease, and leaves the CPU to the runs below

        # the same OUTPUT_DIR: the local lock
        line = error_line(run_cli("train", env=quick_env(tmp_path / "one", JOB_DIR=job, RESUME="auto", **QUICK)))
        assert f"is in use by run {run_one} (pid {proc.pid} on" in line and "another OUTPUT_DIR" in line, line
        # another OUTPUT_DIR, the same JOB_DIR: the bucket lease
        with pytest.raises(UserError, match=rf"is in use by run {run_one} \(pid {proc.pid} on .*last seen \d+ s ago"):
            in_process(quick_env(tmp_path / "two", JOB_DIR=job, RESUME="auto", **QUICK))
        assert run_json(tmp_path / "one" / "run.json")["run_id"] == run_one
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    # kill -9 leaves no local lock; its lease, as a preempted VM would have left it, goes stale and is taken over
    stale = {**json.loads(lease_blob.download_as_bytes()), "host": "preempted-vm", "machine": "another-boot",
             "heartbeat": time.time() - 600}
    lease_blob.upload_from_string(json.dumps(stale))
    in_process(quick_env(tmp_path / "one", JOB_DIR=job, RESUME="auto", **QUICK))
    warned = [r.getMessage() for r in caplog.records if "taking over the lease" in r.getMessage()]
    assert len(warned) == 1 and "preempted-vm" in warned[0] and re.search(r"heartbeat is 6\d\d s old", warned[0])
    assert run_json(tmp_path / "one" / "run.json")["run_id"] == run_one
    assert not lease_blob.exists()


def test_when_a_lease_is_taken_over():
    me = {"run_id": "r1", "machine": this_machine(), "job": "", "pid": os.getpid()}
    now = time.time()
    live = {"run_id": "r0", "machine": this_machine(), "pid": os.getpid(), "heartbeat": now - 5, "job": ""}
    assert takeover_reason(live, me, now, stale_after=90) is None  # alive on this machine
    assert "90 s" in takeover_reason({**live, "heartbeat": now - 100}, me, now, stale_after=90)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert "is gone" in takeover_reason({**live, "pid": dead.pid}, me, now, stale_after=90)
    elsewhere = {**live, "machine": "another-boot", "pid": dead.pid}
    assert takeover_reason(elsewhere, me, now, stale_after=90) is None  # a pid means nothing on another machine
    vertex = {**elsewhere, "job": "123", "run_id": "r1"}
    assert "earlier attempt" in takeover_reason(vertex, {**me, "job": "123"}, now, stale_after=90)
    assert takeover_reason({**vertex, "run_id": "r0"}, {**me, "job": "123"}, now, stale_after=90) is None


def test_heartbeats_ride_out_a_storage_outage(gcs_emulator, gcs_client, gcs_bucket, caplog):
    """The real emulator, stopped and started again: one warning, one recovery line, training never waits."""
    from trainer.runs.lease import Lease, owner

    caplog.set_level(logging.INFO, logger="trainer.runs.lease")
    uri = gcs.parse_gcs_uri(f"gs://{BUCKET}/hb/checkpoints/lease.json")
    me = owner("r1")
    lease = Lease(GcsStore(gcs_client), uri, me, interval=0.3, heartbeat_store=gcs.open_store(timeout=0.3))
    lease.acquire()
    gcs_emulator.stop()
    time.sleep(2.0)
    gcs_emulator.start()
    deadline = time.time() + 10
    while time.time() < deadline and not any("refreshed again" in r.getMessage() for r in caplog.records):
        time.sleep(0.1)
    lease.release()
    messages = [r.getMessage() for r in caplog.records if r.name == "trainer.runs.lease"]
    assert sum("could not refresh the lease" in m for m in messages) == 1, messages
    assert sum("refreshed again" in m for m in messages) == 1, messages
    assert not lease.lost and not gcs_client.bucket(BUCKET).blob(uri.prefix).exists()  # released
