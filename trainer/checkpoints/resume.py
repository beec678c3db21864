"""Resuming: every decision RESUME's kind makes (`trainer.config.settings.Resume`: never, auto, a local or a bucket
checkpoint): what is asked of the bucket before the claim, which checkpoint a run continues from, and where each of
its processes finds it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from transformers import (
    TrainingArguments,
)

from trainer.checkpoints import remote
from trainer.checkpoints.local import (
    damage,
    latest_complete_checkpoint,
    latest_verified_checkpoint,
    verified_checkpoint,
    warn_fresh_start,
)
from trainer.checkpoints.remote import remove_partial_downloads
from trainer.config.settings import Resume, Settings
from trainer.errors import UserError
from trainer.layout import CHECKPOINT_PREFIX, BucketDirs, checkpoint_name, checkpoint_step
from trainer.storage import base as storage
from trainer.storage.checksums import IntegrityError

logger = logging.getLogger(__name__)


def check_resume(settings: Settings) -> None:
    """What can be asked of RESUME before the run claims OUTPUT_DIR or JOB_DIR: a named bucket checkpoint is there
    and committed (`check_named_checkpoint`), so that one that is not stops the run with one line and leaves no
    claim behind. A local one was checked when the settings were parsed; auto and never name nothing."""
    resume = settings.effective_resume
    if resume.kind == "bucket":
        check_named_checkpoint(storage.open_store(resume.uri), resume)


def checkpoint_on_disk(resume: Resume, output_dir: str | os.PathLike[str]) -> Path | None:
    """Where the checkpoint RESUME names lies on this machine, unverified: RESUME=auto's newest complete one in
    `output_dir`, a local one's own directory, a bucket one's download into `output_dir`; None for never (or auto
    with none). What the run's other processes take once the main one has verified or downloaded it, and whose
    recorded run a claim reads."""
    if resume.kind == "auto":
        return latest_complete_checkpoint(output_dir)
    if resume.kind == "local":
        return resume.path
    if resume.kind == "bucket":
        return Path(output_dir) / resume.uri.name
    return None


def resume_checkpoint(settings: Settings, args: TrainingArguments, dirs: BucketDirs | None) -> str | None:
    """The checkpoint to resume from: RESUME=auto takes the newest intact one, local or in the bucket.

    Each machine's main process verifies it (checksums), sets damaged ones aside, downloads from the bucket;
    the other processes then take the checkpoint it left in place.
    """
    resume = settings.effective_resume
    with args.main_process_first(local=True, desc="finding the checkpoint to resume from"):
        if args.local_process_index != 0:  # the main process has verified, set aside or downloaded it
            found = checkpoint_on_disk(resume, settings.output_dir)
            return str(found) if found else None
        remove_partial_downloads(settings.output_dir)
        if resume.kind == "bucket":  # one given checkpoint in a bucket
            return str(download_named_checkpoint(storage.open_store(resume.uri), resume, settings.output_dir))
        if resume.kind != "auto" or dirs is None:
            return resolve_resume(resume, settings.output_dir)
        local, set_aside = verified_checkpoint(settings.output_dir)
        local_step = checkpoint_step(local.name) if local else -1
        found = resume_from_bucket(storage.open_store(dirs.checkpoints), dirs.checkpoints, settings.output_dir,
                                   newer_than=local_step)
        if found:
            logger.info("downloaded %s from %s", found.name, dirs.checkpoints)
            return str(found)
        if local is None and set_aside:
            warn_fresh_start(f"{settings.output_dir} or {dirs.checkpoints}", set_aside)
        return str(local) if local else None


def resume_from_bucket(
    store: storage.Store,
    checkpoints: Any,
    local_output_dir: str | os.PathLike[str],
    newer_than: int = -1,
) -> Path | None:
    """Download the newest committed checkpoint into `local_output_dir/checkpoint-<step>`, verified.

    Returns its path, or None when the bucket holds no committed checkpoint after step
    `newer_than` (the newest one already on local disk). A checkpoint that
    fails verification is reported and the next older committed one is tried. When every one fails and
    there is no local checkpoint to fall back to, that is a `UserError` naming each of them.
    """
    committed = remote.list_committed_checkpoints(store, checkpoints)
    failures = []
    for step, uri in reversed(committed):
        if step <= newer_than:
            break
        try:
            return remote.download_checkpoint(store, uri, local_output_dir)
        except IntegrityError as err:
            logger.warning("%s in %s is unusable, trying an older one: %s", uri.name, checkpoints, err)
            failures.append(f"{uri.name}: {err}")
    if failures and newer_than < 0:
        raise UserError(f"no committed checkpoint in {checkpoints} passed verification ({'; '.join(failures)}); "
                        "delete them, or use RESUME=never (or a new JOB_DIR) to start over")
    if failures:
        logger.warning("resuming from the local %s instead", checkpoint_name(newer_than))
    return None


def download_named_checkpoint(store: storage.Store, resume: Resume, local_output_dir: str | os.PathLike[str]) -> Path:
    """RESUME=gs://.../checkpoint-<step>: download and verify that one checkpoint. One that is not there, or not
    committed, or fails verification is a `UserError` naming it and the committed checkpoints beside it."""
    uri = check_named_checkpoint(store, resume)
    try:
        return remote.download_checkpoint(store, uri, local_output_dir)
    except IntegrityError as err:
        raise UserError(f"RESUME={resume.text} failed verification: {err}; pick another checkpoint, or RESUME=auto") \
            from None


def check_named_checkpoint(store: storage.Store, resume: Resume) -> Any:
    """RESUME=gs://.../checkpoint-<step> is there and committed (asked before the run claims anything), or a
    `UserError` naming the committed checkpoints beside it."""
    uri = resume.uri
    parent = storage.parse_uri(str(uri).rstrip("/").rpartition("/")[0]) if uri.name else uri
    beside = [checkpoint_name(s) for s, _ in remote.list_committed_checkpoints(store, parent)]  # a bucket must exist
    under = [checkpoint_name(s) for s, _ in remote.list_committed_checkpoints(store, uri)]
    if checkpoint_step(uri.name) is None:
        found = f"committed checkpoints under it: {', '.join(under)}" if under else "it holds no committed checkpoint"
        raise UserError(f"RESUME={resume.text} is not a {CHECKPOINT_PREFIX}<step> directory; {found}")
    if uri.name not in beside:
        state = "was never committed (no COMMITTED marker)" if store.list_names(uri) else "does not exist"
        found = f"committed checkpoints in {parent}: {', '.join(beside)}" if beside else \
            f"{parent} holds no committed checkpoint"
        raise UserError(f"RESUME={resume.text} {state}; {found}")
    return uri


def resolve_resume(resume: Resume, output_dir: str) -> str | None:
    """Map RESUME (auto, never or a local path) to the checkpoint to pass to `Trainer.train`, verified."""
    if resume.kind == "never":
        return None
    if resume.kind == "auto":
        found = latest_verified_checkpoint(output_dir)
        return str(found) if found else None
    path = resume.path
    problem = damage(path)
    if problem is not None:
        raise UserError(f"RESUME={resume.text} is not a usable checkpoint: {problem}; use RESUME=auto for the newest "
                        "intact one, or RESUME=never to start over")
    return str(path)
