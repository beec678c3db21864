"""Local checkpoints: a completion marker written after the Trainer's save, and resume lookup.

The Trainer writes a checkpoint in several steps (weights, optimizer, scheduler, RNG
states, trainer state). A process killed in between leaves a directory that looks like
a checkpoint but is not one. We write a marker listing every file and its size once the
save is done; only a directory whose marker matches its files is used to resume.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainer.errors import UserError

COMPLETE_MARKER = "checkpoint_complete.json"
CHECKPOINT_PREFIX = "checkpoint-"  # the Trainer's name for a checkpoint directory, also used in the bucket
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def checkpoint_step(name: str) -> int | None:
    """The step of a `checkpoint-<step>` name, else None."""
    match = _CHECKPOINT_RE.match(name)
    return int(match.group(1)) if match else None


def checkpoint_dir(output_dir: str | os.PathLike[str], step: int) -> Path:
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def write_text_atomically(path: Path, text: str) -> None:
    """Write `path` under a temporary name and rename it: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def link_tree(src: Path, dest: Path) -> None:
    """Hard-link every file of `src` into `dest` (copy where links are impossible): a snapshot that
    costs no disk and that deleting or rotating `src` cannot pull away."""
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def file_sizes(directory: Path) -> dict[str, int]:
    """Relative path -> size of every file under `directory` (the marker excluded)."""
    return {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != COMPLETE_MARKER
    }


def mark_complete(directory: Path, step: int) -> None:
    """Write the marker atomically (temp file + rename)."""
    payload = {"step": step, "files": file_sizes(directory)}
    tmp = directory / f".{COMPLETE_MARKER}.tmp"
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, directory / COMPLETE_MARKER)


def is_complete(directory: Path) -> bool:
    """The marker exists and every file it lists is present with its recorded size."""
    try:
        listed: dict[str, int] = json.loads((directory / COMPLETE_MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all(
        (directory / name).is_file() and (directory / name).stat().st_size == size for name, size in listed.items()
    )


def checkpoint_steps(output_dir: str | os.PathLike[str]) -> list[int]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    steps = (checkpoint_step(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(step for step in steps if step is not None)


def latest_complete_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint in `output_dir`; half-written ones are skipped."""
    for step in reversed(checkpoint_steps(output_dir)):
        candidate = checkpoint_dir(output_dir, step)
        if is_complete(candidate):
            return candidate
    return None


def resolve_resume(resume: str, output_dir: str) -> str | None:
    """Map RESUME (auto, never or a path) to the checkpoint to pass to `Trainer.train`."""
    if resume == "never":
        return None
    if resume == "auto":
        found = latest_complete_checkpoint(output_dir)
        return str(found) if found else None
    path = Path(resume)
    if not is_complete(path):
        raise UserError(f"RESUME={resume} is not a complete checkpoint (no valid {COMPLETE_MARKER})")
    return str(path)


class CompleteMarkerCallback(TrainerCallback):
    """Mark each checkpoint complete once the Trainer has finished writing it."""

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if args.should_save:
            directory = checkpoint_dir(args.output_dir, state.global_step)
            if directory.is_dir():
                mark_complete(directory, state.global_step)
        return control
