"""Committed checkpoint uploads, listing, verified downloads and rotation against a local GCS server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.gcs_emulator import GcsEmulator
from trainer.checkpoints import remote
from trainer.checkpoints.resume import resume_from_bucket
from trainer.layout import checkpoint_step
from trainer.storage import gcs
from trainer.storage.checksums import IntegrityError, file_checksums
from trainer.storage.gcs import GcsStore, GcsUri


def make_checkpoint(root: Path, step: int, big: bool = False) -> Path:
    """A local checkpoint-<step> with Trainer-like files whose content depends on the step."""
    ckpt = root / f"checkpoint-{step}"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(os.urandom(50_000))
    (ckpt / "optimizer.pt").write_bytes(os.urandom(100_000))
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (ckpt / "sub" / "rng_state.pth").write_bytes(os.urandom(1000))
    (ckpt / "empty.txt").write_bytes(b"")
    if big:  # over the client's 8 MiB multipart limit: a resumable upload
        (ckpt / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    return ckpt


def local_sums(ckpt: Path) -> dict[str, dict]:
    return {p.relative_to(ckpt).as_posix(): file_checksums(p) for p in ckpt.rglob("*") if p.is_file()}


@pytest.fixture
def ckpts(gcs_bucket: str) -> GcsUri:
    return gcs.parse_gcs_uri(f"gs://{gcs_bucket}/run1/checkpoints")


def test_upload_writes_files_manifest_and_marker_last(
    gcs_client, ckpts: GcsUri, tmp_path: Path, monkeypatch
) -> None:
    order: list[str] = []

    def recording(real):
        def upload(self, source, uri, *args, **kwargs):
            order.append(uri.prefix)
            return real(self, source, uri, *args, **kwargs)

        return upload

    monkeypatch.setattr(GcsStore, "upload_file", recording(GcsStore.upload_file))
    monkeypatch.setattr(GcsStore, "upload_bytes", recording(GcsStore.upload_bytes))
    local = make_checkpoint(tmp_path, 5, big=True)
    dest = remote.upload_checkpoint(GcsStore(gcs_client), local, ckpts, 5)
    assert dest == ckpts.child("checkpoint-5")
    assert [n.rsplit("/", 1)[-1] for n in order[-2:]] == [remote.MANIFEST, remote.MARKER]
    assert len(order) == len(local_sums(local)) + 2  # each file once, then manifest, then marker

    blobs = {b.name.removeprefix(dest.prefix + "/"): b for b in gcs_client.list_blobs(ckpts.bucket, prefix=dest.prefix)}
    expected = local_sums(local)
    assert set(blobs) == set(expected) | {remote.MANIFEST, remote.MARKER}
    for rel, sums in expected.items():  # what the server stored is what is on disk
        assert (blobs[rel].size, blobs[rel].crc32c) == (sums["size"], sums["crc32c"])

    # The marker is the newest object of the checkpoint (the emulator's generation is a timestamp).
    others = [int(b.generation) for name, b in blobs.items() if name != remote.MARKER]
    assert int(blobs[remote.MARKER].generation) > max(others)

    manifest = json.loads(blobs[remote.MANIFEST].download_as_bytes())
    assert manifest["step"] == 5
    assert {f["path"]: {k: f[k] for k in ("size", "crc32c")} for f in manifest["files"]} == expected
    assert remote.list_committed_checkpoints(GcsStore(gcs_client), ckpts) == [(5, dest)]


def test_upload_tree_detects_checksum_mismatch(gcs_client, ckpts: GcsUri, tmp_path: Path, monkeypatch) -> None:
    local = make_checkpoint(tmp_path, 1)
    real = file_checksums

    def wrong_crc(path):  # as if the file changed between hashing and uploading
        return {**real(path), "crc32c": "AAAAAA=="}

    monkeypatch.setattr(remote, "file_checksums", wrong_crc)
    with pytest.raises(IntegrityError, match="stored crc32c"):
        remote.upload_tree(GcsStore(gcs_client), local, ckpts.child("tree"))


def test_uncommitted_checkpoint_is_skipped(gcs_client, ckpts: GcsUri, tmp_path: Path, monkeypatch) -> None:
    for step in (10, 20):
        remote.upload_checkpoint(GcsStore(gcs_client), make_checkpoint(tmp_path, step), ckpts, step)
    # checkpoint-30 dies half-way: some files are in the bucket, no manifest, no marker.
    real, calls = GcsStore.upload_file, []

    def dying_upload(self, path, uri, sums):
        calls.append(uri.prefix)
        if len(calls) == 3:
            raise ConnectionError("preempted")
        return real(self, path, uri, sums)

    monkeypatch.setattr(GcsStore, "upload_file", dying_upload)
    with pytest.raises(ConnectionError):
        remote.upload_checkpoint(GcsStore(gcs_client), make_checkpoint(tmp_path, 30), ckpts, 30)
    monkeypatch.undo()
    # checkpoint-20 loses its marker (e.g. a crash during rotation or re-upload).
    gcs_client.bucket(ckpts.bucket).blob(ckpts.child("checkpoint-20", remote.MARKER).prefix).delete()

    names = [b.name for b in gcs_client.list_blobs(ckpts.bucket, prefix=ckpts.prefix)]
    assert any("checkpoint-30/" in n for n in names)
    assert [s for s, _ in remote.list_committed_checkpoints(GcsStore(gcs_client), ckpts)] == [10]
    with pytest.raises(IntegrityError, match="no COMMITTED marker"):
        remote.download_checkpoint(GcsStore(gcs_client), ckpts.child("checkpoint-30"), tmp_path / "dl")
    resumed = resume_from_bucket(GcsStore(gcs_client), ckpts, tmp_path / "resume")
    assert resumed == tmp_path / "resume" / "checkpoint-10"
    assert local_sums(resumed) == local_sums(tmp_path / "checkpoint-10")


def test_download_roundtrip_and_replace(gcs_client, ckpts: GcsUri, tmp_path: Path) -> None:
    local = make_checkpoint(tmp_path / "src", 7, big=True)
    uri = remote.upload_checkpoint(GcsStore(gcs_client), local, ckpts, 7)
    out = tmp_path / "out"
    (out / "checkpoint-7").mkdir(parents=True)
    (out / "checkpoint-7" / "stale.bin").write_bytes(b"old")
    path = remote.download_checkpoint(GcsStore(gcs_client), uri, out)
    assert path == out / "checkpoint-7"
    assert local_sums(path) == local_sums(local)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-7"]  # no temp dirs left


def test_download_catches_replaced_object(gcs_client, ckpts: GcsUri, tmp_path: Path) -> None:
    uri = remote.upload_checkpoint(GcsStore(gcs_client), make_checkpoint(tmp_path / "src", 3), ckpts, 3)
    # Same size, other bytes, consistent server metadata: only the manifest can tell.
    blob = gcs_client.bucket(uri.bucket).blob(uri.child("optimizer.pt").prefix)
    blob.upload_from_string(os.urandom(100_000))
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match="optimizer.pt: crc32c"):
        remote.download_checkpoint(GcsStore(gcs_client), uri, out)
    assert list(out.iterdir()) == []  # nothing half-downloaded left in place


def test_download_rejects_a_manifest_swapped_after_commit(gcs_client, ckpts: GcsUri, tmp_path: Path) -> None:
    uri = remote.upload_checkpoint(GcsStore(gcs_client), make_checkpoint(tmp_path / "src", 6), ckpts, 6)
    blob = gcs_client.bucket(uri.bucket).blob(uri.child(remote.MANIFEST).prefix)
    manifest = json.loads(blob.download_as_bytes())
    manifest["files"] = manifest["files"][:1]  # a shorter manifest would hide missing files
    blob.upload_from_string(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="not the manifest that was committed"):
        remote.download_checkpoint(GcsStore(gcs_client), uri, tmp_path / "out")


def test_download_catches_corruption_at_rest(
    gcs_client, gcs_emulator: GcsEmulator, ckpts: GcsUri, tmp_path: Path
) -> None:
    uri = remote.upload_checkpoint(GcsStore(gcs_client), make_checkpoint(tmp_path / "src", 4), ckpts, 4)
    stored = gcs_emulator.data_dir / ".cloudstorage" / uri.bucket / uri.child("model.safetensors").prefix
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF  # flip one byte on the server's disk; its metadata still has the old crc32c
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.safetensors"):
        remote.download_checkpoint(GcsStore(gcs_client), uri, tmp_path / "out")


def test_resume_falls_back_when_newest_is_corrupt(gcs_client, ckpts: GcsUri, tmp_path: Path, caplog) -> None:
    for step in (1, 2):
        remote.upload_checkpoint(GcsStore(gcs_client), make_checkpoint(tmp_path, step), ckpts, step)
    gcs_client.bucket(ckpts.bucket).blob(ckpts.child("checkpoint-2", "trainer_state.json").prefix).delete()
    resumed = resume_from_bucket(GcsStore(gcs_client), ckpts, tmp_path / "out")
    assert resumed == tmp_path / "out" / "checkpoint-1"
    assert "checkpoint-2" in caplog.text and "missing" in caplog.text


def test_resume_empty_bucket_returns_none(gcs_client, ckpts: GcsUri, tmp_path: Path) -> None:
    assert resume_from_bucket(GcsStore(gcs_client), ckpts, tmp_path) is None


def steps_in_bucket(client, ckpts: GcsUri) -> set[int]:
    names = (b.name.removeprefix(ckpts.prefix + "/") for b in client.list_blobs(ckpts.bucket, prefix=ckpts.prefix))
    return {checkpoint_step(n.split("/")[0]) for n in names}


def test_rotation_keeps_newest_committed(gcs_client, ckpts: GcsUri, tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        remote.upload_checkpoint(GcsStore(gcs_client), make_checkpoint(tmp_path, step), ckpts, step)
    assert remote.rotate_remote_checkpoints(GcsStore(gcs_client), ckpts, keep=None) == []
    assert remote.rotate_remote_checkpoints(GcsStore(gcs_client), ckpts, keep=3) == [10]
    assert steps_in_bucket(gcs_client, ckpts) == {20, 30, 40}

    # A newer checkpoint still uploading (no marker) does not count: checkpoint-40 stays.
    bucket = gcs_client.bucket(ckpts.bucket)
    bucket.blob(ckpts.child("checkpoint-50", "model.safetensors").prefix).upload_from_string(b"partial")
    assert remote.rotate_remote_checkpoints(GcsStore(gcs_client), ckpts, keep=1, protect=[20]) == [30]
    assert steps_in_bucket(gcs_client, ckpts) == {20, 40, 50}
    assert remote.rotate_remote_checkpoints(GcsStore(gcs_client), ckpts, keep=0) == [20]
    assert [s for s, _ in remote.list_committed_checkpoints(GcsStore(gcs_client), ckpts)] == [40]
    assert steps_in_bucket(gcs_client, ckpts) == {40, 50}


def test_rotation_deletes_failed_leftovers(gcs_client, ckpts: GcsUri, tmp_path: Path) -> None:
    bucket = gcs_client.bucket(ckpts.bucket)
    bucket.blob(ckpts.child("checkpoint-5", "optimizer.pt").prefix).upload_from_string(b"half")
    for step in (10, 20):
        remote.upload_checkpoint(GcsStore(gcs_client), make_checkpoint(tmp_path, step), ckpts, step)
    assert remote.rotate_remote_checkpoints(GcsStore(gcs_client), ckpts, keep=2) == [5]
    assert steps_in_bucket(gcs_client, ckpts) == {10, 20}


def test_missing_bucket_is_a_clear_error(gcs_client, tmp_path: Path) -> None:
    from trainer.errors import UserError

    with pytest.raises(UserError, match="gs://no-such-bucket does not exist"):
        remote.list_committed_checkpoints(GcsStore(gcs_client), gcs.parse_gcs_uri("gs://no-such-bucket/c"))


def test_rotation_never_deletes_this_runs_newest_checkpoint(gcs_client, ckpts: GcsUri, tmp_path: Path) -> None:
    """Higher steps of an earlier run in the same dir (issue 11: they made a run delete its own checkpoint right
    after committing it) are left alone, and the count runs down from the step just committed."""
    store = GcsStore(gcs_client)
    for step in (100, 120):
        remote.upload_checkpoint(store, make_checkpoint(tmp_path / "earlier", step), ckpts, step)
    remote.upload_checkpoint(store, make_checkpoint(tmp_path, 20), ckpts, 20)
    assert remote.rotate_remote_checkpoints(store, ckpts, keep=2, newest=20) == []
    for step in (40, 60):
        remote.upload_checkpoint(store, make_checkpoint(tmp_path, step), ckpts, step)
        remote.rotate_remote_checkpoints(store, ckpts, keep=2, newest=step)
    assert [s for s, _ in remote.list_committed_checkpoints(store, ckpts)] == [40, 60, 100, 120]
