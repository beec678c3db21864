"""Checkpoints are verified by checksum before a resume: a damaged one is reported, set aside, and an older one
(local or in the bucket) is used. Bucket checkpoints that are missing or all corrupt are one `error:` line."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.checkpoints import remote
from trainer.checkpoints.local import damage
from trainer.checkpoints.resume import download_named_checkpoint, resolve_resume, resume_checkpoint
from trainer.config.env import VertexDirs
from trainer.config.settings import parse_resume
from trainer.errors import UserError
from trainer.layout import COMPLETE_MARKER, DAMAGED_PREFIX, BucketDirs
from trainer.storage.gcs import GcsStore, parse_gcs_uri
from trainer.training.arguments import training_arguments

from .tiny import run_cli, settings_of

BUCKET = "g-test-bucket"


def flip(path: Path, count: int = 64, at: int | None = None) -> None:
    """Flip `count` bytes in the middle of `path` (its size stays the same: only a checksum can tell)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if at is None else at
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_marker_records_a_crc32c_for_every_file(exported_run):
    out, _, _ = exported_run
    marker = json.loads((out / "checkpoint-12" / COMPLETE_MARKER).read_text())
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(marker["files"])
    assert all(set(entry) == {"size", "crc32c"} for entry in marker["files"].values())
    assert damage(out / "checkpoint-12") is None


def test_flipped_bytes_in_the_weights_are_skipped_and_the_run_resumes_bit_equal(exported_run, run_copy):
    straight = load_file(exported_run[0] / "model" / "model.safetensors")
    copy, env = run_copy
    flip(copy / "checkpoint-12" / "model.safetensors")
    result = run_cli("train", env={**env, "RESUME": "auto"})
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "is damaged" in line]
    assert len(warnings) == 1 and "model.safetensors does not match its crc32c" in warnings[0], result.stderr[-3000:]
    assert f"resuming from {copy / 'checkpoint-8'}" in result.stderr
    assert (copy / f"{DAMAGED_PREFIX}checkpoint-12").is_dir()  # kept for a look, out of every lookup
    resumed = load_file(copy / "model" / "model.safetensors")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), "resumed from a damaged checkpoint"
    assert damage(copy / "checkpoint-12") is None  # saved again, intact


def test_damaged_optimizer_state_falls_back_and_a_named_damaged_checkpoint_is_refused(run_copy, caplog):
    copy, _ = run_copy
    flip(copy / "checkpoint-12" / "optimizer.pt", at=200)
    with pytest.raises(UserError, match=r"checkpoint-12 is not a usable checkpoint: optimizer.pt does not match"):
        resolve_resume(parse_resume(str(copy / "checkpoint-12")), str(copy))
    assert resolve_resume(parse_resume("auto"), str(copy)) == str(copy / "checkpoint-8")
    assert "optimizer.pt does not match its crc32c" in caplog.text


def _settings(out: Path, **extra):
    return settings_of(output_dir=str(out), **extra)


def test_a_damaged_local_checkpoint_falls_back_to_the_bucket(run_copy, gcs_client, gcs_bucket):
    copy, _ = run_copy
    job = f"gs://{BUCKET}/jobs/verify"
    remote.upload_checkpoint(GcsStore(gcs_client), copy / "checkpoint-12", parse_gcs_uri(f"{job}/checkpoints"), 12)
    flip(copy / "checkpoint-12" / "model.safetensors")
    # an interrupted download's leftovers are cleaned up first
    (copy / ".checkpoint-12.x1.partial").mkdir()
    (copy / ".checkpoint-12.x1.partial" / "model.safetensors").write_bytes(b"half")
    settings = _settings(copy, resume="auto", job_dir=job)
    found = resume_checkpoint(settings, training_arguments(settings), BucketDirs.resolve(job, VertexDirs()))
    assert found == str(copy / "checkpoint-12")
    assert damage(copy / "checkpoint-12") is None  # the bucket's intact copy
    assert not list(copy.glob("*.partial"))


def test_every_bucket_checkpoint_corrupt_is_one_line(tmp_path, exported_run, gcs_client, gcs_bucket):
    out, env, _ = exported_run
    job = f"gs://{BUCKET}/jobs/corrupt"
    ckpts = parse_gcs_uri(f"{job}/checkpoints")
    for step in (8, 12):
        uri = remote.upload_checkpoint(GcsStore(gcs_client), out / f"checkpoint-{step}", ckpts, step)
        gcs_client.bucket(BUCKET).blob(uri.child("optimizer.pt").prefix).upload_from_string(b"garbage")
    fresh = tmp_path / "fresh"
    result = run_cli("train", env={**env, "OUTPUT_DIR": str(fresh), "JOB_DIR": job, "RESUME": "auto"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"no committed checkpoint in {ckpts} passed verification" in lines[0], lines
    assert "checkpoint-12: " in lines[0] and "checkpoint-8: " in lines[0]
    assert not fresh.exists() or not [p for p in fresh.rglob("*") if p.is_file()], "a failed resume wrote files"


def test_resume_from_a_bucket_checkpoint_that_is_not_there_is_one_line(tmp_path, exported_run, gcs_client,
                                                                        gcs_bucket):
    out, env, _ = exported_run
    ckpts = f"gs://{BUCKET}/jobs/here/checkpoints"
    remote.upload_checkpoint(GcsStore(gcs_client), out / "checkpoint-12", parse_gcs_uri(ckpts), 12)
    result = run_cli("train", env={**env, "OUTPUT_DIR": str(tmp_path / "o"), "RESUME": f"{ckpts}/checkpoint-5"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert error_lines(result.stderr) == [f"error: RESUME={ckpts}/checkpoint-5 does not exist; committed checkpoints "
                                          f"in {ckpts}: checkpoint-12"], result.stderr[-3000:]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("resume, message", [
    ("gs://g-test-bucket/jobs/here/checkpoints", "is not a checkpoint-<step> directory; committed checkpoints under "
                                                 "it: checkpoint-12"),
    ("gs://g-test-bucket/jobs/else/checkpoint-12", "does not exist; gs://g-test-bucket/jobs/else holds no committed "
                                                   "checkpoint"),
    ("gs://no-such-bucket/checkpoint-12", "bucket gs://no-such-bucket does not exist"),
    ("gs://g-test-bucket/jobs/half/checkpoint-12", "was never committed (no COMMITTED marker); "
                                                   "gs://g-test-bucket/jobs/half holds no committed checkpoint"),
])
def test_named_bucket_checkpoint_problems_name_what_exists(tmp_path, exported_run, gcs_client, gcs_bucket, resume,
                                                           message):
    out, _, _ = exported_run
    remote.upload_checkpoint(GcsStore(gcs_client), out / "checkpoint-12",
                             parse_gcs_uri("gs://g-test-bucket/jobs/here/checkpoints"), 12)
    gcs_client.bucket(BUCKET).blob("jobs/half/checkpoint-12/model.safetensors").upload_from_string(b"x")
    with pytest.raises(UserError) as err:
        download_named_checkpoint(GcsStore(gcs_client), parse_resume(resume), tmp_path / "o")
    assert message in str(err.value)
    assert not (tmp_path / "o").exists()
