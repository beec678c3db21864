"""Loading a trained multitask model, exporting standalone task models, and predicting."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from trainer.checkpoints.local import latest_complete_checkpoint
from trainer.data.file_rows import iter_file_rows
from trainer.errors import UserError
from trainer.files import check_writable_file
from trainer.layout import TASK_FILE, RunDirs
from trainer.model.modeling import MULTITASK_FILE, MultitaskModel
from trainer.model.positions import check_max_seq_length
from trainer.outputs.peft_export import is_peft_export, load_peft_task
from trainer.tasks.spec import TaskData, TaskSpec

PREDICT_BATCH = 64  # rows per batch of predict-file


def _multitask_dir(directory: Path) -> Path | None:
    """A multitask model in `directory`: itself, its `model/` (an OUTPUT_DIR), or its newest checkpoint."""
    for candidate in (directory, RunDirs(directory).model):
        if (candidate / MULTITASK_FILE).is_file():
            return candidate
    latest = latest_complete_checkpoint(directory) if directory.is_dir() else None
    return latest if latest is not None and (latest / MULTITASK_FILE).is_file() else None


def _export_dir(directory: Path, task: str | None) -> Path | None:
    """An `export/<task>` directory: `directory` itself, or `directory/<task>` or `directory/export/<task>`."""
    candidates = [directory] + ([directory / task, RunDirs(directory).export_task(task)] if task else [])
    return next((c for c in candidates if (c / TASK_FILE).is_file()), None)


def what_is_there(directory: Path) -> str:
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
        raise UserError(f"no trained multitask model in {where} ({what_is_there(where)}); --model_dir takes an "
                        f"OUTPUT_DIR, its model/ or a checkpoint{hint}")
    return found


def find_export(output_dir: str, model_dir: str | None, task: str) -> Path:
    """A task's `export/<task>` directory: `model_dir` (that directory, an export/ or an OUTPUT_DIR), else
    OUTPUT_DIR/export/<task>."""
    where = Path(model_dir or RunDirs(output_dir).export)
    exported = _export_dir(where, task)
    if exported is None:
        raise UserError(f"no export of task {task!r} in {where} ({what_is_there(where)}); train first, run "
                        "python -m trainer export, or pass --model_dir=<an export/<task> directory>")
    spec = json.loads((exported / TASK_FILE).read_text(encoding="utf-8"))
    if spec["name"] != task:
        raise UserError(f"{exported} is the export of task {spec['name']!r}, not {task!r}")
    return exported


def load_trained(directory: Path) -> tuple[MultitaskModel, PreTrainedTokenizerBase]:
    return MultitaskModel.from_checkpoint(directory), AutoTokenizer.from_pretrained(directory)


def find_task(output_dir: str, model_dir: str | None, task: str) -> tuple[TaskSpec, Path]:
    """A task's spec and where its model is: an `export/<task>` directory, else a multitask model directory.

    `model_dir` may be an OUTPUT_DIR, a multitask model or checkpoint, or an `export/<task>` directory. Without
    it, OUTPUT_DIR/export/<task> (the task's selected model) when there is one, else OUTPUT_DIR's multitask model.
    """
    if exported := _export_dir(Path(model_dir or RunDirs(output_dir).export), task):
        spec = TaskSpec.from_dict(json.loads((exported / TASK_FILE).read_text(encoding="utf-8")))
        if spec.name != task:
            raise UserError(f"{exported} is the export of task {spec.name!r}, not {task!r}")
        return spec, exported
    directory = find_model_dir(output_dir, model_dir)
    specs = {t["name"]: t for t in json.loads((directory / MULTITASK_FILE).read_text(encoding="utf-8"))["tasks"]}
    if task not in specs:
        raise UserError(f"task {task!r} is not in this model; it has: {', '.join(specs)}")
    return TaskSpec.from_dict(specs[task]), directory


def load_task_model(output_dir: str, model_dir: str | None, task: str, max_seq_length: int | None = None
                    ) -> tuple[TaskSpec, PreTrainedModel, Any]:
    """(task spec, its Transformers model, tokenizer) for predicting one task, found by `find_task`; refuses a
    `max_seq_length` above what the model takes."""
    spec, directory = find_task(output_dir, model_dir, task)
    if (directory / TASK_FILE).is_file() and is_peft_export(directory):
        model = load_peft_task(spec.kind.model_class(), directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    elif (directory / TASK_FILE).is_file():
        model = spec.kind.model_class().from_pretrained(directory).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
    else:
        multitask, tokenizer = load_trained(directory)
        multitask.adapter.activate(task)  # with an adapter per task, the shared encoder runs through the task's own
        model = multitask.task_models[task].eval()
    if max_seq_length is not None:
        check_max_seq_length(max_seq_length, model.config, tokenizer, f"the model in {directory}")
    return spec, model, tokenizer


def task_names(output_dir: str, model_dir: str | None = None) -> list[str]:
    """The tasks a run has models for: its export/<task> directories (or the one `model_dir` is), else the tasks
    of its multitask model."""
    root = Path(model_dir or output_dir)
    if (root / TASK_FILE).is_file():
        return [json.loads((root / TASK_FILE).read_text(encoding="utf-8"))["name"]]
    for folder in (RunDirs(root).export, root):
        names = sorted(p.parent.name for p in folder.glob(f"*/{TASK_FILE}"))
        if names:
            return names
    payload = json.loads((find_model_dir(output_dir, model_dir) / MULTITASK_FILE).read_text(encoding="utf-8"))
    return [t["name"] for t in payload["tasks"]]


@torch.no_grad()
def predict_inputs(
    task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, inputs: list[dict[str, Any]],
    max_length: int,
) -> list[dict[str, Any]]:
    """One output per input, echoing it: `{"task", "input", ...what the kind predicts}`."""
    if not task.kind.takes_choices and any(item.get("choices") is not None for item in inputs):
        raise UserError(f"--choices is for multiple-choice tasks; task {task.name!r} is {task.type}: leave "
                        "--choices (and \"choices\" in stdin lines) out")
    if not task.kind.takes_context and any(item.get("context") is not None for item in inputs):
        raise UserError(f"--context is for question answering tasks; task {task.name!r} is {task.type}: leave "
                        "--context (and \"context\" in stdin lines) out")
    if not task.kind.takes_text_pair(task) and any(item.get("text_pair") is not None for item in inputs):
        raise UserError(f"--text_pair is for sentence-pair tasks; task {task.name!r} takes one text: leave "
                        "--text_pair (and \"text_pair\" in stdin lines) out")
    results = task.kind.predict(task, model, tokenizer, inputs, max_length)
    return [{"task": task.name, "input": {k: v for k, v in item.items() if v is not None}, **result}
            for item, result in zip(inputs, results, strict=True)]


@torch.no_grad()
def predict_file(
    task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, input_path: str, output_path: str,
    max_length: int,
) -> int:
    """Predict every row of `input_path` (in the task's own format; labels optional) into a TSV: `index` (the row's
    `index`/`idx` column, else its 0-based number) and the kind's `prediction_columns`. Returns the row count.

    Rows stream through in batches, so memory stays flat; the TSV is written to `<output>.partial` and renamed at
    the end, so a failure leaves nothing behind.
    """
    if not Path(input_path).is_file():  # before the progress bar starts
        raise UserError(f"task {task.name!r}: data file {input_path} not found")
    target = Path(output_path)
    if not target.parent.is_dir():
        raise UserError(f"--output {output_path}: the folder {target.parent} does not exist")
    check_writable_file(target, "--output")
    partial = target.with_name(target.name + ".partial")
    for written in (target, partial):
        if written.exists() and os.path.samefile(input_path, written):
            how = "the same file" if written == target else f"its temporary {written.name} is that file"
            raise UserError(f"--output={output_path} would overwrite --input={input_path} ({how}); give another "
                            "--output")
    count = 0
    try:
        with open(partial, "w", encoding="utf-8", newline="") as handle, \
                tqdm(desc=f"predicting {task.name}", unit=" rows", file=sys.stderr) as bar:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["index", *task.kind.prediction_columns])
            for indices, columns in _unlabelled_batches(task, input_path):
                predictions = task.kind.predict_rows(task, model, tokenizer, columns, max_length)
                writer.writerows([index, *cells] for index, cells in zip(indices, predictions, strict=True))
                count += len(indices)
                bar.update(len(indices))
        if not count:
            raise UserError(f"task {task.name!r}: {input_path} has no rows to predict")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return count


def _unlabelled_batches(task: TaskSpec, path: str) -> Iterator[tuple[list[str], dict[str, list[Any]]]]:
    """`(indices, normalised columns)` of PREDICT_BATCH rows at a time, read lazily; labels are not read."""
    indices: list[str] = []
    batch = TaskData()
    for number, (where, row) in enumerate(iter_file_rows(task, path, labelled=False)):
        indices.append(str(row.get("index", row.get("idx", number))))
        batch.append(task.kind.normalise(task, row, where, labelled=False))
        if len(indices) == PREDICT_BATCH:
            task.kind.check_split(task, batch.columns, path)
            yield indices, batch.columns
            indices, batch = [], TaskData()
    if indices:
        task.kind.check_split(task, batch.columns, path)
        yield indices, batch.columns
