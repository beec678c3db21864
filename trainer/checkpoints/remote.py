"""Committed checkpoints in a bucket, on any `trainer.storage.base.Store`.

A checkpoint in the bucket is `<dir>/checkpoint-<step>/` holding the checkpoint's files, then
`manifest.json` (names, sizes, checksums), then the `COMMITTED` marker, written last. A checkpoint
without its marker is never listed, downloaded or resumed from. One writer per checkpoints dir.
Downloads are verified against the manifest before they are moved into place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from trainer.checkpoints.local import marker_files
from trainer.layout import CHECKPOINT_PREFIX, checkpoint_name, checkpoint_step
from trainer.storage.base import NotFound, Store
from trainer.storage.checksums import IntegrityError, checksums, file_checksums

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MARKER = "COMMITTED"
MANIFEST_FORMAT = 1


# ------------------------------------------------------------------------------------------- uploads


def upload_tree(store: Store, local_dir: str | os.PathLike[str], dest: Any,
                known: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Upload every file under `local_dir` to `dest/<relative path>`, each checksum-verified.

    `known` maps relative paths to checksums already computed (a local checkpoint's marker): those files are
    not read twice. The server compares what it receives with them, so a file changed since is still caught.
    Returns one manifest entry per file: path (relative, '/'-separated), size, crc32c.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        sums = (known or {}).get(rel)
        if sums is None or "crc32c" not in sums or sums.get("size") != path.stat().st_size:
            sums = file_checksums(path)
        sums = {"size": sums["size"], "crc32c": sums["crc32c"]}
        store.upload_file(path, dest.child(rel), sums)
        entries.append({"path": rel, **sums})
    return entries


def upload_file(store: Store, local_file: str | os.PathLike[str], dest: Any) -> dict[str, Any]:
    """Upload one file to the object `dest`, checksum-verified; returns its size and checksums."""
    sums = file_checksums(local_file)
    store.upload_file(Path(local_file), dest, sums)
    return sums


def upload_checkpoint(store: Store, local_dir: str | os.PathLike[str], checkpoints: Any, step: int) -> Any:
    """Upload a local checkpoint to `checkpoints/checkpoint-<step>/` and commit it.

    Order: remove an old marker (re-upload of the same step), upload the files, write
    `manifest.json`, then the `COMMITTED` marker last. Returns the checkpoint's URI.
    """
    dest = checkpoints.child(checkpoint_name(step))
    store.delete(dest.child(MARKER))
    started = time.monotonic()
    known = marker_files(Path(local_dir)) or {}
    files = upload_tree(store, local_dir, dest, {Path(rel).as_posix(): sums for rel, sums in known.items()})
    if not files:
        raise IntegrityError(f"{local_dir} has no files; refusing to commit an empty checkpoint")
    manifest_bytes = json.dumps({"format": MANIFEST_FORMAT, "step": step, "files": files}, indent=1).encode()
    store.upload_bytes(manifest_bytes, dest.child(MANIFEST))
    commit = {"step": step, "files": len(files), "manifest_crc32c": checksums([manifest_bytes])["crc32c"]}
    store.upload_bytes(json.dumps(commit).encode(), dest.child(MARKER))
    total = sum(f["size"] for f in files)
    logger.info(
        "committed %s (%d files, %.1f MB, %.1f s)", dest, len(files), total / 1e6, time.monotonic() - started
    )
    return dest


# ------------------------------------------------------------------------------- listing and rotation


def _scan_checkpoints(store: Store, checkpoints: Any) -> dict[int, bool]:
    """Every `checkpoint-<step>` under `checkpoints`, mapped to whether it has its marker."""
    found: dict[int, bool] = {}
    for name in store.list_names(checkpoints):
        top, _, rest = name.partition("/")
        step = checkpoint_step(top)
        if step is not None and rest:
            found[step] = found.get(step, False) or rest == MARKER
    return found


def list_committed_checkpoints(store: Store, checkpoints: Any) -> list[tuple[int, Any]]:
    """Committed checkpoints under `checkpoints`, oldest first; ones without a marker are skipped."""
    found = _scan_checkpoints(store, checkpoints)
    return [(s, checkpoints.child(checkpoint_name(s))) for s in sorted(found) if found[s]]


def delete_checkpoint(store: Store, ckpt: Any) -> None:
    """Delete a remote checkpoint, its marker first so it is never seen half-deleted as committed."""
    store.delete(ckpt.child(MARKER))
    for name in store.list_names(ckpt):
        store.delete(ckpt.child(name))


def rotate_remote_checkpoints(
    store: Store, checkpoints: Any, keep: int | None, protect: Iterable[int] = (), newest: int | None = None
) -> list[int]:
    """Keep the newest `keep` committed checkpoints (SAVE_TOTAL_LIMIT; None keeps all) and delete the rest.

    `newest` is the step this run has just committed (default: the highest committed step): it is always kept,
    and the count runs down from it, so higher steps left by an earlier run can never push it out (they are
    left alone). The steps in `protect` (e.g. the best one) are kept too. Uncommitted leftovers older than
    `newest` are failed uploads and are deleted. Returns the deleted steps.
    """
    if keep is None:
        return []
    found = _scan_checkpoints(store, checkpoints)
    committed = sorted(s for s, ok in found.items() if ok)
    if newest is None:
        if not committed:
            return []
        newest = committed[-1]
    mine = [s for s in committed if s < newest]
    kept = {newest, *protect, *(mine[-(keep - 1):] if keep > 1 else [])}
    doomed = [s for s in sorted(found) if s not in kept and s < newest]
    for step in doomed:
        delete_checkpoint(store, checkpoints.child(checkpoint_name(step)))
        logger.info("deleted old checkpoint %s", checkpoints.child(checkpoint_name(step)))
    return doomed


# ------------------------------------------------------------------------------------------ download


def _safe_relative(rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or any(p in ("", ".", "..") for p in rel.split("/")):
        raise IntegrityError(f"manifest lists an unsafe path {rel!r}")
    return path


def read_manifest(store: Store, ckpt: Any) -> dict[str, Any]:
    """The manifest of a committed checkpoint, checked against the crc32c its marker records.

    Raises `IntegrityError` when the checkpoint is not committed or the manifest is unusable.
    """
    try:
        commit = json.loads(store.read_bytes(ckpt.child(MARKER)))
    except NotFound:
        raise IntegrityError(f"{ckpt} has no {MARKER} marker; it was never fully uploaded") from None
    except (ValueError, IntegrityError) as err:
        raise IntegrityError(f"{ckpt}/{MARKER} is unreadable: {err}") from err
    try:
        raw = store.read_bytes(ckpt.child(MANIFEST))
        manifest = json.loads(raw)
    except (NotFound, ValueError, IntegrityError) as err:
        raise IntegrityError(f"{ckpt}/{MANIFEST} is missing or unreadable: {err}") from err
    if isinstance(commit, dict) and commit.get("manifest_crc32c") not in (None, checksums([raw])["crc32c"]):
        raise IntegrityError(f"{ckpt}/{MANIFEST} is not the manifest that was committed")
    if not isinstance(manifest, dict) or not manifest.get("files"):
        raise IntegrityError(f"{ckpt}/{MANIFEST} lists no files")
    return manifest


def download_checkpoint(store: Store, ckpt: Any, local_parent: str | os.PathLike[str]) -> Path:
    """Download a committed checkpoint to `local_parent/<name>`, verified against its manifest.

    Files land in a temporary sibling directory first, each checked for size and crc32c,
    and are renamed into place only when all match. Raises `IntegrityError` on any mismatch.
    """
    manifest = read_manifest(store, ckpt)
    parent = Path(local_parent)
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / ckpt.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{ckpt.name}.", suffix=".partial", dir=parent))
    try:
        for entry in manifest["files"]:
            rel = _safe_relative(entry["path"])
            dest = tmp.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            source = f"{ckpt}/{rel}"
            try:
                store.download_file(ckpt.child(str(rel)), dest)
            except NotFound:
                raise IntegrityError(f"{source} is listed in the manifest but missing") from None
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


def remove_partial_downloads(local_parent: str | os.PathLike[str]) -> list[Path]:
    """Delete what an interrupted `download_checkpoint` left in `local_parent` (its `.partial` folders and a
    replaced checkpoint's `.old-<pid>` folder). Returns what was deleted."""
    parent = Path(local_parent)
    if not parent.is_dir():
        return []
    leftovers = [p for p in parent.iterdir() if p.is_dir() and p.name.startswith(f".{CHECKPOINT_PREFIX}")
                 and (p.name.endswith(".partial") or ".old-" in p.name)]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed %s, left by an interrupted download", path)
    return leftovers


def _replace_dir(src: Path, target: Path) -> None:
    """Rename `src` to `target`, replacing an existing `target` directory."""
    if not target.exists():
        os.replace(src, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(src, target)
    shutil.rmtree(old, ignore_errors=True)
