"""Loading a trained multitask model, exporting standalone task models, and predicting."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from trainer.checkpoints import latest_complete_checkpoint
from trainer.errors import UserError
from trainer.modeling import MULTITASK_FILE, MultitaskModel

FINAL_MODEL_DIR = "model"
EXPORT_DIR = "export"


def find_model_dir(output_dir: str, model_dir: str | None = None) -> Path:
    """`model_dir` if given, else OUTPUT_DIR/model, else the newest complete checkpoint."""
    candidates = [Path(model_dir)] if model_dir else [Path(output_dir) / FINAL_MODEL_DIR]
    if not model_dir and (latest := latest_complete_checkpoint(output_dir)):
        candidates.append(latest)
    for candidate in candidates:
        if (candidate / MULTITASK_FILE).is_file():
            return candidate
    where = model_dir or f"{output_dir}/{FINAL_MODEL_DIR} or a checkpoint in {output_dir}"
    raise UserError(f"no trained multitask model in {where}; train first or pass --model_dir")


def load_trained(directory: Path) -> tuple[MultitaskModel, PreTrainedTokenizerBase]:
    return MultitaskModel.from_checkpoint(directory), AutoTokenizer.from_pretrained(directory)


def export_tasks(model: MultitaskModel, tokenizer: PreTrainedTokenizerBase, export_dir: str) -> list[Path]:
    """Write one standalone directory per task, loadable with plain `AutoModelFor...`.

    Everything is written to a temporary sibling first and moved into place at the end,
    so a failed export never leaves a half-written directory behind.
    """
    target = Path(export_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        for name in model.tasks:
            task_dir = staging / name
            model.standalone_task_model(name).save_pretrained(task_dir)
            tokenizer.save_pretrained(task_dir)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [target / name for name in model.tasks]


@torch.no_grad()
def predict(
    model: MultitaskModel,
    tokenizer: PreTrainedTokenizerBase,
    task_name: str,
    texts: list[str],
    text_pairs: list[str] | None = None,
    choices: list[list[str]] | None = None,
    max_length: int = 128,
) -> list[dict[str, Any]]:
    """Predict one task for a list of inputs; returns one dict per input, as the task's kind shapes it."""
    if task_name not in model.tasks:
        raise UserError(f"task {task_name!r} is not in this model; it has: {', '.join(model.tasks)}")
    task = model.tasks[task_name]
    inputs = [
        {"text": text, "text_pair": text_pairs[i] if text_pairs else None, "choices": choices[i] if choices else None}
        for i, text in enumerate(texts)
    ]
    results = task.kind.predict(task, model.task_models[task_name].eval(), tokenizer, inputs, max_length)
    return [{"task": task_name, **result} for result in results]
