"""CloudSyncCallback: background committed uploads from a real Trainer, failures, final upload."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tests.gcs_emulator import GcsEmulator
from trainer.checkpoints import remote
from trainer.checkpoints.mirror import CheckpointUploadError, CloudSyncCallback
from trainer.checkpoints.save_sequence import CompleteMarker, SaveSequence
from trainer.config.env import VertexDirs
from trainer.layout import STAGING_DIR, BucketDirs, RunDirs, checkpoint_step
from trainer.storage import gcs
from trainer.storage.checksums import file_checksums
from trainer.storage.gcs import GcsStore, GcsUri

FAST_RETRY = gcs.GCS_RETRY.with_delay(initial=0.1, maximum=0.5).with_timeout(2.0)


class TinyRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}


def tiny_dataset(n: int = 32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n, 4, generator=g)
    return [{"x": x, "labels": x.sum()} for x in xs]


def local_sums(ckpt: Path) -> dict[str, dict]:
    return {p.relative_to(ckpt).as_posix(): file_checksums(p) for p in ckpt.rglob("*") if p.is_file()}


def manifest_sums(client, uri: GcsUri) -> dict[str, dict]:
    manifest = json.loads(client.bucket(uri.bucket).blob(uri.child(remote.MANIFEST).prefix).download_as_bytes())
    return {f["path"]: {k: f[k] for k in ("size", "crc32c")} for f in manifest["files"]}


def wait_for_uploads(cb: CloudSyncCallback, timeout: float) -> None:
    """Wait for the queued uploads as `upload_final` does, without sending the final outputs (so the callback stays
    open); raise `CheckpointUploadError` on timeout or any failure."""
    cb.uploads.finish(timeout, lambda name: f"{name} -> {cb.dirs.checkpoints}")
    cb.uploads.raise_errors(CheckpointUploadError)


def pending_steps(cb: CloudSyncCallback) -> list[int]:
    """Steps of the checkpoints queued or being uploaded."""
    return [s for s in map(checkpoint_step, cb.uploads.pending) if s is not None]


def callback_args(tmp_path: Path, save_total_limit: int | None = None) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path / "out"), save_total_limit=save_total_limit, report_to=[],
                             use_cpu=True)


def fake_checkpoint(args: TrainingArguments, step: int) -> Path:
    ckpt = Path(args.output_dir) / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(step.to_bytes(4, "big") * 1000)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def save(cb: CloudSyncCallback, args: TrainingArguments, step: int, main: bool = True) -> float:
    """Call on_save as the Trainer does; returns how long it blocked."""
    state = TrainerState(global_step=step, is_world_process_zero=main)
    started = time.monotonic()
    cb.queue_checkpoint(args, state)
    return time.monotonic() - started


class KeepingUp(TrainerCallback):
    """Waits for each checkpoint's upload: a bucket that keeps up with the saves, so none is replaced while
    waiting (that is tests/test_upload_backlog.py's)."""

    def __init__(self, cb: CloudSyncCallback) -> None:
        self.cb = cb

    def on_save(self, args, state, control, **kwargs) -> None:
        assert self.cb.uploads.drain(30)


def test_trainer_run_uploads_commits_and_rotates(gcs_client, gcs_bucket: str, tmp_path: Path) -> None:
    dirs = BucketDirs.resolve(f"gs://{gcs_bucket}/job", VertexDirs())
    cb = CloudSyncCallback(dirs, GcsStore(gcs_client), upload_timeout=60)
    out = tmp_path / "out"
    args = TrainingArguments(
        output_dir=str(out), max_steps=8, save_strategy="steps", save_steps=2, save_total_limit=2,
        per_device_train_batch_size=4, learning_rate=0.1, report_to=[], use_cpu=True, disable_tqdm=True,
        logging_steps=100,
    )
    saves = SaveSequence(CompleteMarker(), upload=cb)
    trainer = Trainer(model=TinyRegressor(), args=args, train_dataset=tiny_dataset(),
                      callbacks=[cb, saves, KeepingUp(cb)])
    trainer.train()
    wait_for_uploads(cb, 60)

    assert sorted(cb.committed) == [2, 4, 6, 8]
    committed = remote.list_committed_checkpoints(GcsStore(gcs_client), dirs.checkpoints)
    assert [s for s, _ in committed] == [6, 8]  # SAVE_TOTAL_LIMIT=2 remotely as well as locally
    for step, uri in committed:
        local = out / f"checkpoint-{step}"
        assert {"optimizer.pt", "scheduler.pt", "trainer_state.json", "model.safetensors"} <= set(local_sums(local))
        assert manifest_sums(gcs_client, uri) == local_sums(local)
    assert not (out / STAGING_DIR).exists()

    model_dir, logs_dir, export_dir = out / "model", out / "logs", out / "export"
    trainer.save_model(str(model_dir))
    (logs_dir / "run").mkdir(parents=True)
    (logs_dir / "run" / "events.out.tfevents.1").write_bytes(b"tb")
    (export_dir / "task_a").mkdir(parents=True)
    (export_dir / "task_a" / "config.json").write_text("{}")
    (out / "metrics.json").write_text(json.dumps({"average": 0.5}))
    cb.upload_final(RunDirs(out, logs_dir))
    names = {b.name for b in gcs_client.list_blobs(gcs_bucket, prefix="job/")}
    assert {"job/model/model.safetensors", "job/model/metrics.json", "job/model/export/task_a/config.json",
            "job/logs/run/events.out.tfevents.1"} <= names
    stored = gcs_client.bucket(gcs_bucket).get_blob("job/model/model.safetensors")
    assert stored.crc32c == file_checksums(model_dir / "model.safetensors")["crc32c"]


def test_on_save_snapshots_so_local_rotation_cannot_break_upload(
    gcs_client, gcs_bucket: str, tmp_path: Path, monkeypatch
) -> None:
    release = threading.Event()
    real = remote.upload_checkpoint

    def held_upload(*a, **kw):
        assert release.wait(10)
        return real(*a, **kw)

    monkeypatch.setattr(remote, "upload_checkpoint", held_upload)
    dirs = BucketDirs.resolve(f"gs://{gcs_bucket}/job", VertexDirs())
    cb = CloudSyncCallback(dirs, GcsStore(gcs_client))
    args = callback_args(tmp_path)
    ckpt = fake_checkpoint(args, 3)
    expected = local_sums(ckpt)
    assert save(cb, args, 3) < 1.0  # training does not wait for the upload
    assert pending_steps(cb) == [3]
    for path in ckpt.iterdir():  # the Trainer's local rotation deletes the checkpoint mid-upload
        path.unlink()
    ckpt.rmdir()
    release.set()
    wait_for_uploads(cb, 30)
    assert manifest_sums(gcs_client, dirs.checkpoints.child("checkpoint-3")) == expected


def test_only_main_process_uploads(gcs_client, gcs_bucket: str, tmp_path: Path) -> None:
    cb = CloudSyncCallback(BucketDirs.resolve(f"gs://{gcs_bucket}/job", VertexDirs()), GcsStore(gcs_client))
    args = callback_args(tmp_path)
    fake_checkpoint(args, 1)
    save(cb, args, 1, main=False)
    assert pending_steps(cb) == [] and cb.uploads._thread is None
    wait_for_uploads(cb, 5)
    assert list(gcs_client.list_blobs(gcs_bucket)) == []


def test_failed_upload_is_loud_and_raised(
    gcs_client, gcs_emulator: GcsEmulator, gcs_bucket: str, tmp_path: Path, caplog
) -> None:
    dirs = BucketDirs.resolve(f"gs://{gcs_bucket}/job", VertexDirs())
    cb = CloudSyncCallback(dirs, GcsStore(gcs_client, FAST_RETRY), upload_timeout=30)
    args = callback_args(tmp_path)
    fake_checkpoint(args, 1)
    gcs_emulator.stop()  # the server is gone for longer than the retry deadline
    with caplog.at_level(logging.ERROR):
        save(cb, args, 1)
        with pytest.raises(CheckpointUploadError, match="checkpoint-1"):
            wait_for_uploads(cb, 30)
    assert "UPLOAD FAILED" in caplog.text and "checkpoint-1" in caplog.text

    # The final model still goes up, and the earlier failure is raised again.
    gcs_emulator.start()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"w" * 100)
    with pytest.raises(CheckpointUploadError, match="checkpoint-1"):
        cb.upload_final(RunDirs(tmp_path))
    assert gcs_client.bucket(gcs_bucket).get_blob("job/model/weights.bin") is not None
    assert remote.list_committed_checkpoints(GcsStore(gcs_client), dirs.checkpoints) == []


def test_wait_times_out_loudly(gcs_client, gcs_emulator: GcsEmulator, gcs_bucket: str, tmp_path: Path) -> None:
    slow_retry = gcs.GCS_RETRY.with_delay(initial=0.2, maximum=0.5).with_timeout(30.0)
    cb = CloudSyncCallback(BucketDirs.resolve(f"gs://{gcs_bucket}/job", VertexDirs()), GcsStore(gcs_client, slow_retry))
    args = callback_args(tmp_path)
    fake_checkpoint(args, 2)
    gcs_emulator.stop()
    save(cb, args, 2)
    started = time.monotonic()
    with pytest.raises(CheckpointUploadError, match="checkpoint-2 .* still uploading after 1 s"):
        wait_for_uploads(cb, 1)
    assert time.monotonic() - started < 5
    gcs_emulator.start()  # let the worker finish instead of retrying in the background
    assert cb.uploads.drain(30)


def test_missing_local_checkpoint_is_an_error(gcs_client, gcs_bucket: str, tmp_path: Path) -> None:
    cb = CloudSyncCallback(BucketDirs.resolve(f"gs://{gcs_bucket}/job", VertexDirs()), GcsStore(gcs_client))
    save(cb, callback_args(tmp_path), 9)
    with pytest.raises(CheckpointUploadError, match="checkpoint-9 .* does not exist"):
        wait_for_uploads(cb, 5)


def test_train_begin_fails_fast_on_missing_bucket(gcs_client, tmp_path: Path) -> None:
    from trainer.errors import UserError

    cb = CloudSyncCallback(BucketDirs.resolve("gs://missing-bucket/job", VertexDirs()), GcsStore(gcs_client))
    with pytest.raises(UserError, match="does not exist"):
        cb.on_train_begin(callback_args(tmp_path), TrainerState(is_world_process_zero=True), TrainerControl())
