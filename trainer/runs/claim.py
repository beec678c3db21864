"""Claim OUTPUT_DIR (and JOB_DIR's checkpoints) for one run, before anything is written.

1. Read the run identities already there (`trainer/run_identity.py`): OUTPUT_DIR's, the bucket's, and with
   RESUME=<checkpoint> the one beside that checkpoint. Nothing is written while a run may still be refused.
   - A new run (RESUME=never) refuses another run's directory: one line with both run ids, what differs and
     the choices. Locally, a directory whose run has the very same settings is started over (what RESUME=never
     always did, e.g. `make run-local` twice); in the bucket it is refused too, so that a JOB_DIR never mixes
     two runs' checkpoints (RESUME=auto continues it; Vertex AI's default).
   - RESUME=auto (or a checkpoint) continues only a run whose settings match, under its run id; a mismatch is
     refused with the fields that differ, before any weights are loaded.
2. Take the local lock (`trainer/run_lock.py`), then the bucket lease (`trainer/run_lease.py`), look again
   (another run may have got in between) and record the identity in both places.
Only the process that writes OUTPUT_DIR claims (under torchrun, rank 0); everything is released on the way out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.checkpoints.local import checkpoint_steps
from trainer.checkpoints.resume import checkpoint_on_disk
from trainer.config.settings import Resume, Settings
from trainer.errors import UserError
from trainer.layout import LEASE_FILE, LOCK_FILE, RUN_FILE, BucketDirs
from trainer.runs.identity import (
    LEGACY_RUN,
    RunIdentity,
    defining_settings,
    differences,
    new_identity,
    read_checkpoint,
    read_local,
    write_local,
)
from trainer.runs.lease import Lease, owner
from trainer.runs.lock import OutputLock
from trainer.storage import base as storage
from trainer.tasks.spec import TaskData, TaskSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Place:
    """Where a run identity was found: how to name it, and what a new run should use instead."""

    where: str  # "resume" (beside RESUME's checkpoint), "bucket" or "output"
    label: str
    choice: str
    identity: RunIdentity | None


def _read_bucket(store: storage.Store, uri: Any) -> RunIdentity | None:
    try:
        return RunIdentity.from_json(store.read_bytes(uri), str(uri))
    except storage.NotFound:
        return None
    except ValueError as err:
        raise UserError(f"{err}; delete it, or use a new JOB_DIR") from None


def _local(output_dir: str) -> RunIdentity | None:
    try:
        return read_local(output_dir)
    except ValueError as err:
        raise UserError(f"{err}; delete it, or use a new OUTPUT_DIR") from None


def find_places(settings: Settings, dirs: BucketDirs | None, store: storage.Store | None) -> list[Place]:
    """The identities this run meets, the one that decides its run id first: the checkpoint RESUME names,
    the bucket's, OUTPUT_DIR's."""
    places = []
    resume = settings.effective_resume
    if resume.kind == "bucket":
        parent = storage.parse_uri(resume.text.rstrip("/").rsplit("/", 1)[0])
        found = _read_bucket(storage.open_store(parent), parent.child(RUN_FILE))
        places.append(Place("resume", "the checkpoint's directory", "", found))
    elif resume.kind == "local":
        places.append(Place("resume", "the checkpoint's directory", "", _local(str(resume.path.parent))))
    if dirs is not None:
        names = store.list_names(dirs.checkpoints)  # a missing bucket stops here, with one line
        _refuse_inside_another_run(store, dirs.checkpoints)
        found = _read_bucket(store, dirs.run_file) if RUN_FILE in names else None
        places.append(Place("bucket", f"the bucket's {dirs.checkpoints}", "a new JOB_DIR", found))
    out = settings.output_dir
    places.append(Place("output", f"OUTPUT_DIR={out}", f"a new OUTPUT_DIR (or delete {out})", _local(out)))
    return places + _checkpoint_place(settings, places)


def _checkpoint_place(settings: Settings, places: list[Place]) -> list[Place]:
    """What the checkpoint to resume records of its run (`read_checkpoint`), where no `run.json` beside it
    says: a checkpoint copied alone, or one of a folder from before run identities."""
    resume = settings.effective_resume
    if resume.kind == "auto":
        recorded = any(p.identity for p in places if p.where == "output")
    elif resume.kind == "local":
        recorded = places[0].identity is not None
    else:  # never; a bucket checkpoint is downloaded only after the claim
        return []
    if recorded:
        return []
    checkpoint = checkpoint_on_disk(resume, settings.output_dir)
    found = read_checkpoint(checkpoint) if checkpoint is not None else None
    return [Place("checkpoint", f"checkpoint {checkpoint}", "a new OUTPUT_DIR" if resume.kind == "auto" else "",
                  found)]


def _refuse_inside_another_run(store: storage.Store, checkpoints: Any) -> None:
    """JOB_DIR's checkpoints must not lie inside another run's (a folder above them holding a run.json): that
    run's listing, rotation and resume would meet this one's files."""
    text = str(checkpoints).rstrip("/")
    for depth in range(1, len(checkpoints.prefix.strip("/").split("/"))):
        above = storage.parse_uri(text.rsplit("/", depth)[0])
        theirs = _read_bucket(store, above.child(RUN_FILE))
        if theirs is not None:
            raise UserError(f"JOB_DIR's checkpoints {checkpoints} lie inside {above}, which holds run {theirs.run_id}"
                            f" (created {theirs.created}); choose a JOB_DIR outside {above}")


def decide(mine: RunIdentity, places: list[Place], resume: Resume) -> RunIdentity:
    """The identity this run records: its own (a new run) or the one it continues; `UserError` when refused."""
    held = [p for p in places if p.identity is not None]
    for place in held:
        theirs = place.identity
        ours = {k: mine.defines.get(k) for k in theirs.defines} if place.where == "checkpoint" else mine.defines
        diff = "; ".join(differences(theirs.defines, ours))
        if resume.kind == "never" and diff:
            raise UserError(f"{place.label} holds run {theirs.run_id} (created {theirs.created}); this new run "
                            f"{mine.run_id} has other settings: {diff}. Use {place.choice}, or RESUME=auto with "
                            f"run {theirs.run_id}'s settings to continue it")
        if resume.kind == "never" and place.where == "bucket":
            raise UserError(f"{place.label} holds run {theirs.run_id} (created {theirs.created}) with the same "
                            f"settings: RESUME=auto continues it; a new run ({mine.run_id}) needs {place.choice}")
        if resume.kind != "never" and diff:
            raise UserError(f"RESUME={resume.text}: {place.label} holds run {theirs.run_id}, whose settings differ "
                            f"from this run's: {diff}. Continue it with its settings, or "
                            + (f"start a new run in {place.choice}" if place.choice else
                               "resume from a checkpoint of a run with these settings"))
    held = [p for p in held if p.identity.run_id != LEGACY_RUN]
    if resume.kind == "never" or not held:
        return mine
    return mine.with_run(held[0].identity)


def _record(identity: RunIdentity, places: list[Place], output_dir: str, store: storage.Store | None,
            dirs: BucketDirs | None) -> None:
    for place in places:
        if place.where == "output" and place.identity != identity:
            write_local(output_dir, identity)
        elif place.where == "bucket" and place.identity != identity:
            store.upload_bytes(identity.to_json().encode(), dirs.run_file)


STOPPING_RELEASE_TIMEOUT = 1.0  # seconds a run that stops on SIGTERM or an error waits to release its lease


@contextlib.contextmanager
def claim_run(settings: Settings, tasks: list[TaskSpec], rows: dict[str, dict[str, TaskData]],
              dirs: BucketDirs | None, writer: bool = True, store: Any = None,
              base: dict[str, Any] | None = None) -> Iterator[RunIdentity | None]:
    """Hold OUTPUT_DIR (and the bucket's checkpoints dir, when `dirs` are given) for this run while the block runs.

    `store`: the run's own store of the checkpoints (its uploads'), so an outage is reported once for both.
    `base`: the loaded base's record (`BaseRecord.identity()`), which an adapter run resumes only on."""
    if not writer:
        yield None
        return
    resume = settings.effective_resume
    mine = new_identity(defining_settings(settings, tasks, rows, base))
    if store is None and dirs is not None:
        store = storage.open_store(dirs.checkpoints)
    identity = decide(mine, find_places(settings, dirs, store), resume)
    had_checkpoints = checkpoint_steps(settings.output_dir)
    created = not Path(settings.output_dir).exists()
    lock = OutputLock(settings.output_dir)
    lock.acquire({"run_id": identity.run_id, "pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    lease = None
    recorded = False  # the bucket's run.json is this run's own, new claim
    try:
        if dirs is not None:
            # heartbeats give up after one interval (and warn), where the checkpoint uploads retry for minutes
            beats = storage.open_store(dirs.checkpoints, timeout=settings.lease_seconds,
                                       health=getattr(store, "health", None))
            candidate = Lease(store, dirs.lease, owner(identity.run_id), settings.lease_seconds,
                              heartbeat_store=beats)
            candidate.acquire()
            lease = candidate
        places = find_places(settings, dirs, store)  # again: nobody else writes here now
        identity = decide(mine, places, resume)
        _record(identity, places, settings.output_dir, store, dirs)
        recorded = any(p.where == "bucket" and p.identity is None for p in places)
        for place in places:
            if place.identity is not None and identity.run_id != place.identity.run_id:
                logger.info("%s held run %s with the same settings; RESUME=never starts it over",
                            place.label, place.identity.run_id)
        if identity.run_id == mine.run_id:
            if resume.kind != "never" and had_checkpoints:
                logger.warning("%s has checkpoints but no %s (written before run identities): only the tasks and "
                               "TASK_WEIGHTING they record are checked", settings.output_dir, RUN_FILE)
            logger.info("run %s: a new run in %s", identity.run_id, settings.output_dir)
        else:
            logger.info("run %s: continuing it (created %s)", identity.run_id, identity.created)
        yield identity
    except BaseException as err:
        lock.release()  # before its file may go: the lock file is never deleted while held
        _forget(settings.output_dir, created)
        if recorded and isinstance(err, UserError):  # refused; not an outage, where the bucket can't answer
            _forget_bucket(store, dirs)
        if lease is not None:  # SIGTERM's grace is spent on the checkpoint; a restart takes an ended run's lease
            lease.release(timeout=STOPPING_RELEASE_TIMEOUT)
            lease = None
        raise
    finally:
        if lease is not None:
            lease.release()
        lock.release()


def _forget(output_dir: str, created: bool) -> None:
    """A run that stops before it wrote anything but its claim (a refused resume, say) leaves no OUTPUT_DIR."""
    folder = Path(output_dir)
    if created and folder.is_dir() and {p.name for p in folder.iterdir()} <= {RUN_FILE, LOCK_FILE}:
        shutil.rmtree(folder, ignore_errors=True)


def _forget_bucket(store: storage.Store, dirs: BucketDirs) -> None:
    """The same in the bucket: a run that claimed a new JOB_DIR and stopped before its first upload (a RESUME
    that is not there, say) takes its run.json back, so that it does not refuse the next run."""
    try:
        if set(store.list_names(dirs.checkpoints)) <= {RUN_FILE, LEASE_FILE}:
            store.delete(dirs.run_file)
    except Exception as err:  # the run's own error is the one to report
        logger.warning("could not take back %s: %s", dirs.run_file, err)
