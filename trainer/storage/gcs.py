"""The gs:// storage backend: Cloud Storage URIs and bucket naming rules, the client, and object I/O
(`GcsStore`) with checksummed, retried transfers. What is stored where (committed checkpoints, logs,
the final model) is `trainer/remote_checkpoints.py`'s and `trainer/checkpoint_sync.py`'s.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY

from trainer.errors import UserError
from trainer.storage.base import NotFound
from trainer.storage.checksums import IntegrityError, checksums
from trainer.storage.health import StoreHealth

logger = logging.getLogger(__name__)

SCHEME = "gs://"

# Exponential backoff (1 s doubling up to 10 s, jittered) for up to 10 minutes per request. Passed explicitly
# to every call, uploads included, so retries never hinge on the library's defaults (older releases
# retried uploads only with if_generation_match, which we do not use). The 10 s cap: uploads resume within
# seconds of an outage's end, at the cost of one request per few seconds to a service that is down.
GCS_RETRY: Retry = DEFAULT_RETRY.with_delay(initial=1.0, maximum=10.0, multiplier=2.0).with_timeout(600.0)

_BUCKET_CHARS = re.compile(r"^[a-z0-9._-]+$")
_GOOGLE_LIKE = re.compile(r"g[o0][o0]g[l1]e")


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


# ------------------------------------------------------------------------------------------ objects


def parse_uri(text: str) -> GcsUri:
    return parse_gcs_uri(text)


def open_store(client: storage.Client | None = None, retry: Retry | None = None,
               timeout: float | None = None, health: StoreHealth | None = None) -> GcsStore:
    """`timeout`: give up retrying a request after this many seconds (default GCS_RETRY's 10 minutes);
    `health`: another store's, so that an outage both see is reported once."""
    return GcsStore(client, retry or (GCS_RETRY.with_timeout(timeout) if timeout else None), health)


class GcsStore:
    """Object I/O on Cloud Storage (`trainer.storage.base.Store`), every request retried with `retry`; `health`
    warns once when requests start failing and once when they are answered again."""

    def __init__(self, client: storage.Client | None = None, retry: Retry | None = None,
                 health: StoreHealth | None = None) -> None:
        self.client = client or make_client()
        retry = retry or GCS_RETRY
        self.health = health or StoreHealth("Cloud Storage", retry.timeout)
        self.retry = _reporting(retry, self.health.failed)

    def _blob(self, uri: GcsUri) -> storage.Blob:
        return self.client.bucket(uri.bucket).blob(uri.prefix)

    def list_names(self, uri: GcsUri) -> list[str]:
        base = f"{uri.prefix}/" if uri.prefix else ""
        try:
            names = [b.name[len(base):] for b in self.client.list_blobs(uri.bucket, prefix=base, retry=self.retry)]
            self.health.answered()
            return names
        except api_exceptions.NotFound:
            raise UserError(
                f"bucket gs://{uri.bucket} does not exist; create it with `make create-bucket` or fix JOB_DIR"
            ) from None
        except api_exceptions.Forbidden as err:
            raise UserError(f"no permission to list {uri}: {err.message}") from None

    def upload_file(self, path: Path, uri: GcsUri, sums: dict[str, Any]) -> None:
        """One checksummed upload: the server checks the crc32c we computed; we check what it stored.

        The client library is not asked to hash the file again while sending it (`checksum=None`):
        the crc32c computed beforehand travels with the upload, and `_check_stored` compares size,
        and crc32c of the stored object with the local file. That halves the CPU an upload
        takes from training.
        """
        blob = self._blob(uri)
        blob.upload_from_filename(str(path), checksum=None, crc32c_checksum_value=sums["crc32c"], retry=self.retry)
        self.health.answered()
        _check_stored(blob, sums)

    def upload_bytes(self, data: bytes, uri: GcsUri) -> None:
        blob = self._blob(uri)
        blob.upload_from_string(data, content_type="application/json", checksum="crc32c", retry=self.retry)
        self.health.answered()
        _check_stored(blob, checksums([data]))

    def read_bytes(self, uri: GcsUri) -> bytes:
        try:
            data = self._blob(uri).download_as_bytes(retry=self.retry)
            self.health.answered()
            return data
        except api_exceptions.NotFound:
            raise NotFound(str(uri)) from None
        except DataCorruption as err:
            raise IntegrityError(f"{uri} failed the download checksum: {err}") from err

    def download_file(self, uri: GcsUri, path: Path) -> None:
        try:
            self._blob(uri).download_to_filename(str(path), checksum="crc32c", retry=self.retry)
            self.health.answered()
        except api_exceptions.NotFound:
            raise NotFound(str(uri)) from None
        except DataCorruption as err:
            raise IntegrityError(f"{uri} failed the download checksum: {err}") from err

    def delete(self, uri: GcsUri) -> None:
        with contextlib.suppress(api_exceptions.NotFound):
            self._blob(uri).delete(retry=self.retry)
        self.health.answered()  # a missing object is an answer too


def _reporting(retry: Retry, on_error: Any) -> Retry:
    """`retry` with `on_error` called on every failed attempt that it retries. A Retry takes `on_error` only in
    its constructor, so this rebuilds it with the same backoff, as its own `with_*` methods do."""
    return type(retry)(predicate=retry._predicate, initial=retry._initial, maximum=retry._maximum,
                       multiplier=retry._multiplier, timeout=retry.timeout, on_error=on_error)


def _check_stored(blob: storage.Blob, expected: dict[str, Any]) -> None:
    """Compare what the server says it stored with the local size and checksums."""
    stored = {"size": blob.size, "crc32c": blob.crc32c}
    for key, value in stored.items():
        if value is not None and value != expected[key]:
            raise IntegrityError(
                f"gs://{blob.bucket.name}/{blob.name}: stored {key} {value} != local {expected[key]}"
            )
