"""The GCS server goes away in the middle of a checkpoint upload and comes back ~20 s later."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
from transformers import TrainerState, TrainingArguments

from tests.gcs_emulator import GcsEmulator
from tests.test_gcs_callback import pending_steps, wait_for_uploads
from trainer.checkpoints import remote
from trainer.checkpoints.mirror import CloudSyncCallback
from trainer.checkpoints.resume import resume_from_bucket
from trainer.config.env import VertexDirs
from trainer.layout import STAGING_DIR, BucketDirs
from trainer.storage import gcs
from trainer.storage.checksums import file_checksums
from trainer.storage.gcs import GcsStore

OUTAGE_S = 20.0
# Production backoff shape, capped low so the retry after the restart comes within ~2 s.
RETRY = gcs.GCS_RETRY.with_delay(initial=0.5, maximum=2.0, multiplier=2.0).with_timeout(120.0)


def write_checkpoint(output_dir: Path, step: int, files: int = 6) -> Path:
    ckpt = output_dir / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    for i in range(files):
        (ckpt / f"part-{i}.bin").write_bytes(bytes([step % 256, i]) * 50_000)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def local_sums(ckpt: Path) -> dict[str, dict]:
    return {p.relative_to(ckpt).as_posix(): file_checksums(p) for p in ckpt.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_upload_survives_server_restart(
    gcs_client, gcs_emulator: GcsEmulator, gcs_bucket: str, tmp_path: Path, monkeypatch
) -> None:
    dirs = BucketDirs.resolve(f"gs://{gcs_bucket}/job", VertexDirs())
    cb = CloudSyncCallback(dirs, GcsStore(gcs_client, RETRY), upload_timeout=120)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), save_total_limit=None, report_to=[], use_cpu=True)
    out = Path(args.output_dir)

    def on_save(step: int) -> float:
        started = time.monotonic()
        cb.queue_checkpoint(args, TrainerState(global_step=step, is_world_process_zero=True))
        return time.monotonic() - started

    write_checkpoint(out, 10)
    on_save(10)
    wait_for_uploads(cb, 60)

    # checkpoint-20: stop the server once two of its files are up; hold the marker until we have looked.
    real_file, real_bytes = GcsStore.upload_file, GcsStore.upload_bytes
    uploaded, two_up, server_down = [], threading.Event(), threading.Event()
    marker_due, may_commit = threading.Event(), threading.Event()

    def upload_file(self, path, uri, sums):
        real_file(self, path, uri, sums)
        uploaded.append(uri.prefix)
        if len(uploaded) == 2:  # the first two files of checkpoint-20
            two_up.set()
            assert server_down.wait(30)

    def upload_bytes(self, data, uri):
        if uri.prefix.endswith("checkpoint-20/" + remote.MARKER):
            marker_due.set()
            assert may_commit.wait(60)
        real_bytes(self, data, uri)

    monkeypatch.setattr(GcsStore, "upload_file", upload_file)
    monkeypatch.setattr(GcsStore, "upload_bytes", upload_bytes)

    expected = {20: local_sums(write_checkpoint(out, 20)), 30: local_sums(write_checkpoint(out, 30))}
    on_save(20)
    assert two_up.wait(30)
    gcs_emulator.stop()
    server_down.set()
    outage_started = time.monotonic()

    # Training goes on during the outage: saving checkpoint-30 returns at once and queues it.
    assert on_save(30) < 1.0
    time.sleep(1.0)
    assert pending_steps(cb) == [20, 30] and cb.errors == []
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
    assert cb.errors == [], "the upload gave up during the outage instead of retrying"
    gcs_emulator.start()  # same port, same data

    # All files and the manifest of checkpoint-20 are up, but not the marker: it must not be used.
    assert marker_due.wait(60)
    names = {b.name for b in gcs_client.list_blobs(gcs_bucket, prefix="job/checkpoints/checkpoint-20/")}
    assert "job/checkpoints/checkpoint-20/manifest.json" in names
    assert [s for s, _ in remote.list_committed_checkpoints(GcsStore(gcs_client), dirs.checkpoints)] == [10]
    resumed = resume_from_bucket(GcsStore(gcs_client), dirs.checkpoints, tmp_path / "resume")
    assert resumed == tmp_path / "resume" / "checkpoint-10"

    may_commit.set()
    wait_for_uploads(cb, 60)
    assert sorted(cb.committed) == [10, 20, 30]
    committed = remote.list_committed_checkpoints(GcsStore(gcs_client), dirs.checkpoints)
    assert [s for s, _ in committed] == [10, 20, 30]
    for step in (20, 30):
        ckpt = dirs.checkpoints.child(f"checkpoint-{step}")
        path = remote.download_checkpoint(GcsStore(gcs_client), ckpt, tmp_path / "dl")
        assert local_sums(path) == expected[step]


def staged(out: Path) -> list[str]:
    """The checkpoint snapshots in the staging folder, by step."""
    root = out / STAGING_DIR
    return sorted(p.name.split(".")[0] for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def test_outage_warns_once_and_only_the_newest_checkpoint_waits(
    gcs_client, gcs_emulator: GcsEmulator, gcs_bucket: str, tmp_path: Path, caplog
) -> None:
    dirs = BucketDirs.resolve(f"gs://{gcs_bucket}/job", VertexDirs())
    fast = gcs.GCS_RETRY.with_delay(initial=0.1, maximum=0.3, multiplier=2.0).with_timeout(60.0)
    cb = CloudSyncCallback(dirs, GcsStore(gcs_client, fast), upload_timeout=60)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), save_total_limit=2, report_to=[], use_cpu=True)
    out = Path(args.output_dir)

    def save(step: int) -> None:
        write_checkpoint(out, step, files=2)
        cb.queue_checkpoint(args, TrainerState(global_step=step, is_world_process_zero=True))

    save(1)
    wait_for_uploads(cb, 30)
    gcs_emulator.stop()
    with caplog.at_level(logging.INFO):
        for step in (2, 3, 4, 5):  # 2 starts and retries; 3 and 4 are replaced while they wait
            save(step)
            time.sleep(0.3)
            assert staged(out) == sorted({"checkpoint-2", f"checkpoint-{step}"})  # the running one + the newest
        assert pending_steps(cb) == [2, 5] and cb.skipped == [3, 4]
        time.sleep(1.0)  # several more failed attempts: still one warning
        gcs_emulator.start()
        wait_for_uploads(cb, 60)
    failing = [r for r in caplog.records if "requests are failing" in r.getMessage()]
    recovered = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(failing) == 1 and failing[0].levelno == logging.WARNING, caplog.text
    assert len(recovered) == 1 and recovered[0].levelno == logging.WARNING, caplog.text
    assert "2 older checkpoint(s) were not uploaded" in caplog.text
    assert cb.committed == [1, 2, 5] and cb.errors == []
    # rotation after coalescing: the newest two of what was committed; nothing of 3 and 4 reached the bucket
    assert [s for s, _ in remote.list_committed_checkpoints(GcsStore(gcs_client), dirs.checkpoints)] == [2, 5]
    names = [b.name for b in gcs_client.list_blobs(gcs_bucket, prefix="job/checkpoints/")]
    assert not [n for n in names if "checkpoint-3/" in n or "checkpoint-4/" in n]
    assert staged(out) == []
