"""Object storage by URI scheme: what checkpoints, logs and the final model need from a bucket.

A backend is one module plus one line in `BACKENDS`: its `parse_uri(text)` returns a URI with `child(*parts)`,
`name` and `str()`, and its `open_store(client=None, retry=None, timeout=None)` returns a `Store` (`timeout`: seconds
after which a request stops being retried). `trainer/gcs.py` is the
gs:// backend. The commit protocol on top (`trainer/remote_checkpoints.py`) only talks to a `Store`.
Backends are imported when a URI of theirs is used, so local-only commands never import a cloud SDK.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from trainer.errors import UserError

BACKENDS = {"gs://": "trainer.storage.gcs"}


class NotFound(Exception):
    """The object does not exist."""


class Store(Protocol):
    """Object I/O. Uploads are verified (the store must hold exactly `sums`); reads raise `NotFound` for a
    missing object and `trainer.storage.checksums.IntegrityError` for a corrupted transfer."""

    def list_names(self, uri: Any) -> list[str]:
        """Names of the objects under `uri`, relative to it ('a/b' for `uri`/a/b)."""

    def upload_file(self, path: Path, uri: Any, sums: dict[str, Any]) -> None: ...

    def upload_bytes(self, data: bytes, uri: Any) -> None: ...

    def read_bytes(self, uri: Any) -> bytes: ...

    def download_file(self, uri: Any, path: Path) -> None: ...

    def delete(self, uri: Any) -> None:
        """Delete the object; a missing one is not an error."""


def is_uri(text: str) -> bool:
    return any(str(text).strip().startswith(scheme) for scheme in BACKENDS)


def _backend(text: str) -> Any:
    for scheme, module in BACKENDS.items():
        if str(text).strip().startswith(scheme):
            return importlib.import_module(module)
    schemes = " or ".join(BACKENDS)
    raise UserError(f"{str(text).strip()!r} is not a bucket URI; it must start with {schemes}, e.g. "
                    f"{next(iter(BACKENDS))}my-bucket/run1")


def parse_uri(text: str) -> Any:
    """A bucket URI of any backend, checked with one clear line when malformed."""
    return _backend(text).parse_uri(text)


def open_store(uri: Any, **options: Any) -> Store:
    """The store that holds `uri` (options such as `client` and `retry` go to the backend)."""
    return _backend(str(uri)).open_store(**options)
