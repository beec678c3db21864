"""Loading a trained multitask model, exporting standalone task models, and predicting."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from trainer.checkpoints import latest_complete_checkpoint
from trainer.errors import UserError
from trainer.modeling import MULTITASK_FILE, MultitaskModel
from trainer.spec import TaskSpec

FINAL_MODEL_DIR = "model"
EXPORT_DIR = "export"


TASK_FILE = "trainer_task.json"  # in each export/<task>: the task's declaration, so predict can use it


def _multitask_dir(directory: Path) -> Path | None:
    """A multitask model in `directory`: itself, its `model/` (an OUTPUT_DIR), or its newest checkpoint."""
    for candidate in (directory, directory / FINAL_MODEL_DIR):
        if (candidate / MULTITASK_FILE).is_file():
            return candidate
    latest = latest_complete_checkpoint(directory) if directory.is_dir() else None
    return latest if latest is not None and (latest / MULTITASK_FILE).is_file() else None


def _export_dir(directory: Path, task: str | None) -> Path | None:
    """An `export/<task>` directory: `directory` itself, or `directory/<task>` or `directory/export/<task>`."""
    candidates = [directory] + ([directory / task, directory / EXPORT_DIR / task] if task else [])
    return next((c for c in candidates if (c / TASK_FILE).is_file()), None)


def _what_is_there(directory: Path) -> str:
    if not directory.exists():
        return f"{directory} does not exist"
    if not directory.is_dir():
        return f"{directory} is a file"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    return f"{directory} holds {', '.join(names[:8]) + (' ...' if len(names) > 8 else '') if names else 'nothing'}"


def find_model_dir(output_dir: str, model_dir: str | None = None) -> Path:
    """The multitask model: in `model_dir` (a model, an OUTPUT_DIR or a checkpoint), else in OUTPUT_DIR."""
    where = Path(model_dir or output_dir)
    found = _multitask_dir(where)
    if found is None:
        hint = "" if model_dir else "; train first or pass --model_dir"
        raise UserError(f"no trained multitask model in {where} ({_what_is_there(where)}); --model_dir takes an "
                        f"OUTPUT_DIR, its model/ or a checkpoint{hint}")
    return found


def load_trained(directory: Path) -> tuple[MultitaskModel, PreTrainedTokenizerBase]:
    return MultitaskModel.from_checkpoint(directory), AutoTokenizer.from_pretrained(directory)


def load_task_model(output_dir: str, model_dir: str | None, task: str) -> tuple[Any, PreTrainedModel, Any]:
    """(task spec, its Transformers model, tokenizer) for predicting one task.

    `model_dir` may be an OUTPUT_DIR, a multitask model or checkpoint, or an `export/<task>` directory.
    """
    if model_dir and (exported := _export_dir(Path(model_dir), task)):
        spec = TaskSpec.from_dict(json.loads((exported / TASK_FILE).read_text(encoding="utf-8")))
        if spec.name != task:
            raise UserError(f"{exported} is the export of task {spec.name!r}, not {task!r}")
        model = spec.kind.model_class().from_pretrained(exported)
        return spec, model.eval(), AutoTokenizer.from_pretrained(exported)
    model, tokenizer = load_trained(find_model_dir(output_dir, model_dir))
    if task not in model.tasks:
        raise UserError(f"task {task!r} is not in this model; it has: {', '.join(model.tasks)}")
    return model.tasks[task], model.task_models[task].eval(), tokenizer


def save_task(model: MultitaskModel, tokenizer: PreTrainedTokenizerBase, name: str, directory: Path) -> None:
    """One task as a standalone Transformers directory, with its declaration for `predict`."""
    model.standalone_task_model(name).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / TASK_FILE).write_text(json.dumps(model.tasks[name].to_dict(), indent=2), encoding="utf-8")


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
            save_task(model, tokenizer, name, staging / name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [target / name for name in model.tasks]


@torch.no_grad()
def predict_inputs(
    task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, inputs: list[dict[str, Any]],
    max_length: int,
) -> list[dict[str, Any]]:
    """One output per input, echoing it: `{"task", "input", ...what the kind predicts}`."""
    results = task.kind.predict(task, model, tokenizer, inputs, max_length)
    return [{"task": task.name, "input": {k: v for k, v in item.items() if v is not None}, **result}
            for item, result in zip(inputs, results, strict=True)]
