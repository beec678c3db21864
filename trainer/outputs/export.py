"""Exporting: one standalone Transformers directory per task, written to a staging folder and moved into place,
replacing only an empty folder or a previous export."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from trainer.errors import UserError
from trainer.files import current_umask, follow_umask
from trainer.layout import EXPORT_DIR, EXPORT_MARKER, TASK_FILE
from trainer.model.modeling import MultitaskModel
from trainer.outputs.inference import what_is_there
from trainer.outputs.peft_export import save_peft_task


def save_task(model: MultitaskModel, tokenizer: PreTrainedTokenizerBase, name: str, directory: Path,
              merged: bool = True) -> None:
    """One task as a standalone Transformers directory, with its declaration for `predict`; with `merged` false
    (EXPORT_MERGED, `export_form`), a peft adapter directory plus the head (`peft_export`).

    Without the "Writing model shards" bar: during training it would nest under the Trainer's bar.
    """
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        if not merged:
            base = model.base
            if base is None:
                raise UserError(f"cannot export {name} unmerged: the model has no record of its base")
            save_peft_task(model, tokenizer, name, directory, base.path or base.model_name)
        else:
            model.standalone_task_model(name).save_pretrained(directory)
            tokenizer.save_pretrained(directory)
            (directory / TASK_FILE).write_text(json.dumps(model.tasks[name].to_dict(), indent=2), encoding="utf-8")
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    follow_umask(directory)  # safetensors writes 0600


def _export_entries(directory: Path) -> list[str] | None:
    """What a previous export in `directory` holds, or None when something there is not ours.

    Ours: the marker and the task folders it names, each with its declaration; an export from before the
    marker: task folders with their declaration and nothing else.
    """
    try:
        listed = json.loads((directory / EXPORT_MARKER).read_text(encoding="utf-8"))["tasks"]
    except (OSError, ValueError, KeyError, TypeError):
        listed = []
    names = sorted(p.name for p in directory.iterdir())
    strangers = [n for n in names if n != EXPORT_MARKER and not (directory / n / TASK_FILE).is_file()]
    if strangers or (not listed and EXPORT_MARKER in names):
        return None
    return names


def run_outputs(output_dir: str | os.PathLike[str], *more: str | os.PathLike[str]) -> list[Path]:
    """What an export must leave alone: OUTPUT_DIR's other outputs (checkpoints, model/, logs, best/, ...)
    and `more` (LOG_DIR, the model exported)."""
    root = Path(output_dir)
    found = [p for p in root.iterdir() if p.name != EXPORT_DIR and not p.name.startswith(".export-")] \
        if root.is_dir() else []
    return [*found, *map(Path, more)]


def check_export_target(target: Path, what: str, output_dir: str | os.PathLike[str] | None = None,
                        keep: list[Path] = ()) -> None:
    """Refuse an export folder whose replacement would delete what this project did not write: the working
    folder, OUTPUT_DIR or a folder holding it, a folder that is, holds or lies inside the run's other outputs
    (`keep`, from `run_outputs`), and a non-empty folder that is not a previous export."""
    real = target.resolve()
    if output_dir is not None and Path(output_dir).resolve().is_relative_to(real):
        relation = "is" if Path(output_dir).resolve() == real else "holds"
        raise UserError(f"{what}={target} {relation} OUTPUT_DIR={output_dir}; the export replaces its folder "
                        "whole: choose a new folder, or leave --export_dir out for OUTPUT_DIR/export")
    for other in keep:
        other = other.resolve()
        if real == other or other.is_relative_to(real) or real.is_relative_to(other):
            relation = "is" if real == other else "holds" if other.is_relative_to(real) else "lies inside"
            raise UserError(f"{what}={target} {relation} {other}, which the export must leave alone; choose a "
                            "new folder, or leave --export_dir out for OUTPUT_DIR/export")
    if real == Path.cwd().resolve():  # replaced, it would leave the shell in a deleted folder
        raise UserError(f"{what}={target} is the working folder; choose a new folder for the export")
    if target.is_dir() and any(target.iterdir()) and _export_entries(target) is None:
        raise UserError(f"{what}={target} is not empty and is not a previous export ({what_is_there(target)}); "
                        "the export replaces its folder whole: choose a new or empty folder")


def export_tasks(model: MultitaskModel, tokenizer: PreTrainedTokenizerBase, export_dir: str | os.PathLike[str],
                 write: Callable[[str, Path], None] | None = None, what: str = "--export_dir",
                 output_dir: str | os.PathLike[str] | None = None, keep: list[Path] = (),
                 merged: bool = True) -> list[Path]:
    """Write one standalone directory per task, loadable with plain `AutoModelFor...`: the model's current
    weights, or whatever `write(task, directory)` puts there (the selected copy, for SELECT_BEST); `merged`
    false: peft adapter directories instead (`save_task`).

    Everything is written to a new staging folder beside the target, with the marker that says this project
    wrote it, and moved into place at the end, so a failed export never leaves a half-written directory
    behind. The folder it replaces must be empty or a previous export (`check_export_target`).
    """
    target = Path(export_dir)
    check_export_target(target, what, output_dir, keep)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700; the export is a folder like any other
    old = staging.with_name(staging.name + "-old")
    try:
        for name in model.tasks:
            if write is None:
                save_task(model, tokenizer, name, staging / name, merged)
            else:
                write(name, staging / name)
        (staging / EXPORT_MARKER).write_text(json.dumps({"tasks": list(model.tasks)}), encoding="utf-8")
        if target.exists():
            check_export_target(target, what, output_dir, keep)  # again: only a previous export is ever moved away
            os.replace(target, old)
        try:
            os.replace(staging, target)
        except OSError:
            if old.exists():
                os.replace(old, target)  # the previous export stays where it was
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return [target / name for name in model.tasks]
