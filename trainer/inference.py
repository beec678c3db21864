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
from trainer.data import TaskBatchCollator, tokenize_batch
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
    """Predict one task for a list of inputs; returns one dict per input."""
    if task_name not in model.tasks:
        raise UserError(f"task {task_name!r} is not in this model; it has: {', '.join(model.tasks)}")
    task = model.tasks[task_name]
    if task.type == "multiple_choice" and not choices:
        raise UserError(f"task {task_name!r} is multiple choice: pass --choices")
    rows = {
        "text_a": texts,
        "text_b": text_pairs or [""] * len(texts),
        "choices": choices or [[] for _ in texts],
        "label": [0.0 if task.type == "regression" else 0] * len(texts),
    }
    encoded = tokenize_batch(rows, task, tokenizer, max_length)
    features = [{**{k: v[i] for k, v in encoded.items()}, "task": task_name} for i in range(len(texts))]
    batch = TaskBatchCollator(tokenizer)(features)
    batch.pop("labels")
    logits = model(**batch).logits.float()
    results = []
    for i, row in enumerate(logits):
        if task.type == "regression":
            results.append({"task": task_name, "score": float(row[0])})
            continue
        probs = row.softmax(-1)
        best = int(probs.argmax())
        label = task.labels[best] if task.type == "classification" else (choices[i][best] if choices else best)
        results.append({"task": task_name, "label": label, "probabilities": [round(float(p), 4) for p in probs]})
    return results
