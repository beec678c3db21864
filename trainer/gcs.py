"""Google Cloud Storage: gs:// URIs, checksummed uploads and committed checkpoints.

A checkpoint in the bucket is `<dir>/checkpoint-<step>/` holding the checkpoint's files, then
`manifest.json` (names, sizes, checksums), then the `COMMITTED` marker, written last. A checkpoint
without its marker is never listed, downloaded or resumed from. One writer per checkpoints dir.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import tempfile
import time
from base64 import b64encode
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import google_crc32c
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY

from trainer.checkpoints import CHECKPOINT_PREFIX, checkpoint_step
from trainer.errors import UserError

logger = logging.getLogger(__name__)

SCHEME = "gs://"
MANIFEST = "manifest.json"
MARKER = "COMMITTED"
MANIFEST_FORMAT = 1

# Exponential backoff (1 s doubling up to 30 s) for up to 10 minutes per request. Passed explicitly to
# every call, uploads included, so retries never hinge on the library's defaults (older releases
# retried uploads only with if_generation_match, which we do not use).
GCS_RETRY: Retry = DEFAULT_RETRY.with_delay(initial=1.0, maximum=30.0, multiplier=2.0).with_timeout(600.0)

_BUCKET_CHARS = re.compile(r"^[a-z0-9._-]+$")
_GOOGLE_LIKE = re.compile(r"g[o0][o0]g[l1]e")
_READ_CHUNK = 8 * 1024 * 1024


class IntegrityError(RuntimeError):
    """A stored object does not match its manifest or the local file it came from."""


# ---------------------------------------------------------------------------------------------- URIs


@dataclass(frozen=True)
class GcsUri:
    """A bucket and an object-name prefix without leading or trailing slashes."""

    bucket: str
    prefix: str = ""

    def child(self, *parts: str) -> GcsUri:
        """This URI with `parts` appended (each may contain slashes)."""
        names = [p for part in (self.prefix, *parts) for p in part.split("/") if p]
        return GcsUri(self.bucket, "/".join(names))

    @property
    def name(self) -> str:
        """Last path component of the prefix ('' for the bucket root)."""
        return self.prefix.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"


def validate_bucket_name(name: str) -> None:
    """Raise `UserError` unless `name` follows the Cloud Storage bucket naming rules."""
    allowed = "lowercase letters, digits, '-', '_' and '.'"
    if not name:
        raise UserError(f"bucket name is empty; use 3-63 characters: {allowed}")
    bad = sorted({c for c in name if not _BUCKET_CHARS.match(c)})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise UserError(f"bucket name {name!r} has invalid character(s) {shown}; use only {allowed}")
    if not (name[0].isalnum() and name[-1].isalnum()):
        raise UserError(f"bucket name {name!r} must start and end with a lowercase letter or digit")
    limit = 222 if "." in name else 63
    if not 3 <= len(name) <= limit:
        raise UserError(f"bucket name {name!r} is {len(name)} characters; use 3-63 (up to 222 with dots)")
    if any(len(part) > 63 for part in name.split(".")):
        raise UserError(f"bucket name {name!r} has a dot-separated part over 63 characters; the limit is 63")
    if ".." in name:
        raise UserError(f"bucket name {name!r} has an empty dot-separated part ('..'), which is not allowed")
    if name.startswith("goog"):
        raise UserError(f"bucket name {name!r} must not start with 'goog'")
    if _GOOGLE_LIKE.search(name):
        raise UserError(f"bucket name {name!r} must not contain 'google' or a look-alike such as 'g00gle'")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return
    raise UserError(f"bucket name {name!r} looks like an IP address, which is not allowed")


def parse_gcs_uri(uri: str) -> GcsUri:
    """Parse `gs://bucket[/prefix]`, raising `UserError` with one clear line when it is malformed."""
    text = str(uri).strip()
    if not text.startswith(SCHEME):
        raise UserError(f"{text!r} is not a Cloud Storage URI; it must start with gs://, e.g. gs://my-bucket/run1")
    bucket, _, path = text[len(SCHEME):].partition("/")
    if not bucket:
        raise UserError(f"{text!r} has no bucket name; use gs://<bucket>/<path>")
    validate_bucket_name(bucket)
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts) or any(c in path for c in "\r\n"):
        raise UserError(f"{text!r} has an invalid path; '.', '..' and line breaks are not allowed in it")
    return GcsUri(bucket, "/".join(parts))


# -------------------------------------------------------------------------------------------- client


def make_client(project: str | None = None) -> storage.Client:
    """A storage client: anonymous against `STORAGE_EMULATOR_HOST` when set, else Application Default
    Credentials."""
    project = project or os.environ.get("PROJECT_ID") or None
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "local", credentials=AnonymousCredentials())
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return storage.Client(project=project)
    except DefaultCredentialsError:
        raise UserError(
            "no Google Cloud credentials found; run `gcloud auth application-default login` "
            "or set GOOGLE_APPLICATION_CREDENTIALS"
        ) from None


# ------------------------------------------------------------------------------------------ checksums


def _b64(digest: bytes) -> str:
    return b64encode(digest).decode("ascii")


def _checksums(chunks: Iterable[bytes]) -> dict[str, Any]:
    """Size and crc32c. No md5: it costs ~20x the CPU of crc32c (taken from training while
    uploading in the background), and crc32c is what Cloud Storage verifies for every object."""
    crc = google_crc32c.Checksum()
    size = 0
    for chunk in chunks:
        crc.update(chunk)
        size += len(chunk)
    return {"size": size, "crc32c": _b64(crc.digest())}


def file_checksums(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size and crc32c of a file, base64-encoded as Cloud Storage reports them."""
    with open(path, "rb") as f:
        return _checksums(iter(lambda: f.read(_READ_CHUNK), b""))


def _check_stored(blob: storage.Blob, expected: dict[str, Any]) -> None:
    """Compare what the server says it stored with the local size and checksums."""
    stored = {"size": blob.size, "crc32c": blob.crc32c}
    for key, value in stored.items():
        if value is not None and value != expected[key]:
            raise IntegrityError(
                f"gs://{blob.bucket.name}/{blob.name}: stored {key} {value} != local {expected[key]}"
            )


def _upload_file(blob: storage.Blob, path: Path, sums: dict[str, Any], retry: Retry) -> None:
    """One checksummed upload: the server checks the crc32c we computed; we check what it stored.

    The client library is not asked to hash the file again while sending it (`checksum=None`):
    the crc32c computed beforehand travels with the upload, and `_check_stored` compares size,
    and crc32c of the stored object with the local file. That halves the CPU an upload
    takes from training.
    """
    blob.upload_from_filename(str(path), checksum=None, crc32c_checksum_value=sums["crc32c"], retry=retry)
    _check_stored(blob, sums)


def _upload_bytes(blob: storage.Blob, data: bytes, retry: Retry) -> None:
    sums = _checksums([data])
    blob.upload_from_string(data, content_type="application/json", checksum="crc32c", retry=retry)
    _check_stored(blob, sums)


# ------------------------------------------------------------------------------------------- uploads


def _delete_if_exists(blob: storage.Blob, retry: Retry) -> None:
    with contextlib.suppress(api_exceptions.NotFound):
        blob.delete(retry=retry)


def _local_files(local_dir: Path) -> list[Path]:
    return sorted(p for p in local_dir.rglob("*") if p.is_file())


def upload_tree(
    client: storage.Client, local_dir: str | os.PathLike[str], dest: GcsUri, retry: Retry = GCS_RETRY
) -> list[dict[str, Any]]:
    """Upload every file under `local_dir` to `dest/<relative path>`, each checksum-verified.

    Returns one manifest entry per file: path (relative, '/'-separated), size, crc32c.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    bucket = client.bucket(dest.bucket)
    entries = []
    for path in _local_files(root):
        rel = path.relative_to(root).as_posix()
        sums = file_checksums(path)
        _upload_file(bucket.blob(dest.child(rel).prefix), path, sums, retry)
        entries.append({"path": rel, **sums})
    return entries


def upload_file(
    client: storage.Client, local_file: str | os.PathLike[str], dest: GcsUri, retry: Retry = GCS_RETRY
) -> dict[str, Any]:
    """Upload one file to the object `dest`, checksum-verified; returns its size and checksums."""
    sums = file_checksums(local_file)
    _upload_file(client.bucket(dest.bucket).blob(dest.prefix), Path(local_file), sums, retry)
    return sums


def upload_checkpoint(
    client: storage.Client,
    local_dir: str | os.PathLike[str],
    checkpoints: GcsUri,
    step: int,
    retry: Retry = GCS_RETRY,
) -> GcsUri:
    """Upload a local checkpoint to `checkpoints/checkpoint-<step>/` and commit it.

    Order: remove an old marker (re-upload of the same step), upload the files, write
    `manifest.json`, then the `COMMITTED` marker last. Returns the checkpoint's URI.
    """
    dest = checkpoints.child(f"{CHECKPOINT_PREFIX}{step}")
    bucket = client.bucket(dest.bucket)
    marker = bucket.blob(dest.child(MARKER).prefix)
    _delete_if_exists(marker, retry)
    started = time.monotonic()
    files = upload_tree(client, local_dir, dest, retry)
    if not files:
        raise IntegrityError(f"{local_dir} has no files; refusing to commit an empty checkpoint")
    manifest = {"format": MANIFEST_FORMAT, "step": step, "files": files}
    manifest_bytes = json.dumps(manifest, indent=1).encode()
    _upload_bytes(bucket.blob(dest.child(MANIFEST).prefix), manifest_bytes, retry)
    commit = {"step": step, "files": len(files), "manifest_crc32c": _checksums([manifest_bytes])["crc32c"]}
    _upload_bytes(marker, json.dumps(commit).encode(), retry)
    total = sum(f["size"] for f in files)
    logger.info(
        "committed %s (%d files, %.1f MB, %.1f s)", dest, len(files), total / 1e6, time.monotonic() - started
    )
    return dest


# ------------------------------------------------------------------------------- listing and rotation


def _scan_checkpoints(client: storage.Client, checkpoints: GcsUri, retry: Retry) -> dict[int, bool]:
    """Every `checkpoint-<step>` under `checkpoints`, mapped to whether it has its marker."""
    base = f"{checkpoints.prefix}/" if checkpoints.prefix else ""
    found: dict[int, bool] = {}
    try:
        for blob in client.list_blobs(checkpoints.bucket, prefix=base, retry=retry):
            top, _, rest = blob.name[len(base):].partition("/")
            step = checkpoint_step(top)
            if step is not None and rest:
                found[step] = found.get(step, False) or rest == MARKER
    except api_exceptions.NotFound:
        raise UserError(
            f"bucket gs://{checkpoints.bucket} does not exist; create it with `make create-bucket` "
            "or fix JOB_DIR"
        ) from None
    except api_exceptions.Forbidden as err:
        raise UserError(f"no permission to list {checkpoints}: {err.message}") from None
    return found


def list_committed_checkpoints(
    client: storage.Client, checkpoints: GcsUri, retry: Retry = GCS_RETRY
) -> list[tuple[int, GcsUri]]:
    """Committed checkpoints under `checkpoints`, oldest first; ones without a marker are skipped."""
    found = _scan_checkpoints(client, checkpoints, retry)
    return [(s, checkpoints.child(f"{CHECKPOINT_PREFIX}{s}")) for s in sorted(found) if found[s]]


def delete_checkpoint(client: storage.Client, ckpt: GcsUri, retry: Retry = GCS_RETRY) -> None:
    """Delete a remote checkpoint, its marker first so it is never seen half-deleted as committed."""
    bucket = client.bucket(ckpt.bucket)
    _delete_if_exists(bucket.blob(ckpt.child(MARKER).prefix), retry)
    for blob in client.list_blobs(ckpt.bucket, prefix=f"{ckpt.prefix}/", retry=retry):
        _delete_if_exists(blob, retry)


def rotate_remote_checkpoints(
    client: storage.Client,
    checkpoints: GcsUri,
    keep: int | None,
    protect: Iterable[int] = (),
    retry: Retry = GCS_RETRY,
) -> list[int]:
    """Keep the newest `keep` committed checkpoints (SAVE_TOTAL_LIMIT; None keeps all) and delete the rest.

    The newest committed checkpoint is always kept, as are the steps in `protect` (e.g. the best
    one). Uncommitted leftovers older than the newest committed checkpoint are failed uploads and
    are deleted too. Returns the deleted steps.
    """
    if keep is None:
        return []
    found = _scan_checkpoints(client, checkpoints, retry)
    committed = sorted(s for s, ok in found.items() if ok)
    if not committed:
        return []
    kept = set(committed[-max(keep, 1):]) | set(protect)
    doomed = [s for s in sorted(found) if s not in kept and s < committed[-1]]
    for step in doomed:
        delete_checkpoint(client, checkpoints.child(f"{CHECKPOINT_PREFIX}{step}"), retry)
        logger.info("deleted old checkpoint %s", checkpoints.child(f"{CHECKPOINT_PREFIX}{step}"))
    return doomed


# ------------------------------------------------------------------------------------------ download


def _safe_relative(rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or any(p in ("", ".", "..") for p in rel.split("/")):
        raise IntegrityError(f"manifest lists an unsafe path {rel!r}")
    return path


def read_manifest(client: storage.Client, ckpt: GcsUri, retry: Retry = GCS_RETRY) -> dict[str, Any]:
    """The manifest of a committed checkpoint, checked against the crc32c its marker records.

    Raises `IntegrityError` when the checkpoint is not committed or the manifest is unusable.
    """
    bucket = client.bucket(ckpt.bucket)
    try:
        commit = json.loads(bucket.blob(ckpt.child(MARKER).prefix).download_as_bytes(retry=retry))
    except api_exceptions.NotFound:
        raise IntegrityError(f"{ckpt} has no {MARKER} marker; it was never fully uploaded") from None
    except (ValueError, DataCorruption) as err:
        raise IntegrityError(f"{ckpt}/{MARKER} is unreadable: {err}") from err
    try:
        raw = bucket.blob(ckpt.child(MANIFEST).prefix).download_as_bytes(retry=retry)
        manifest = json.loads(raw)
    except (api_exceptions.NotFound, ValueError, DataCorruption) as err:
        raise IntegrityError(f"{ckpt}/{MANIFEST} is missing or unreadable: {err}") from err
    if isinstance(commit, dict) and commit.get("manifest_crc32c") not in (None, _checksums([raw])["crc32c"]):
        raise IntegrityError(f"{ckpt}/{MANIFEST} is not the manifest that was committed")
    if not isinstance(manifest, dict) or not manifest.get("files"):
        raise IntegrityError(f"{ckpt}/{MANIFEST} lists no files")
    return manifest


def download_checkpoint(
    client: storage.Client,
    ckpt: GcsUri,
    local_parent: str | os.PathLike[str],
    retry: Retry = GCS_RETRY,
) -> Path:
    """Download a committed checkpoint to `local_parent/<name>`, verified against its manifest.

    Files land in a temporary sibling directory first, each checked for size and crc32c,
    and are renamed into place only when all match. Raises `IntegrityError` on any mismatch.
    """
    manifest = read_manifest(client, ckpt, retry)
    parent = Path(local_parent)
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / ckpt.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{ckpt.name}.", suffix=".partial", dir=parent))
    bucket = client.bucket(ckpt.bucket)
    try:
        for entry in manifest["files"]:
            rel = _safe_relative(entry["path"])
            dest = tmp.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            source = f"{ckpt}/{rel}"
            try:
                bucket.blob(ckpt.child(str(rel)).prefix).download_to_filename(
                    str(dest), checksum="crc32c", retry=retry
                )
            except api_exceptions.NotFound:
                raise IntegrityError(f"{source} is listed in the manifest but missing") from None
            except DataCorruption as err:
                raise IntegrityError(f"{source} failed the download checksum: {err}") from err
            got = file_checksums(dest)
            for key in ("size", "crc32c"):
                if key in entry and got[key] != entry[key]:
                    raise IntegrityError(f"{source}: {key} {got[key]} != manifest {entry[key]}")
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("downloaded and verified %s -> %s", ckpt, target)
    return target


def _replace_dir(src: Path, target: Path) -> None:
    """Rename `src` to `target`, replacing an existing `target` directory."""
    if not target.exists():
        os.replace(src, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(src, target)
    shutil.rmtree(old, ignore_errors=True)
