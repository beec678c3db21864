"""`python -m trainer evaluate`: score each task model of a trained run on its test (or dev) split.

Each task's model is its standalone export, wrapped in a one-task `MultitaskModel` and scored by
`MultitaskTrainer.evaluate`, so metrics, masking and progress bars are those of training's evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

from trainer.config.settings import Settings
from trainer.data.arrow_split import UnlabelledSplit
from trainer.data.dataset import MultitaskDataset, TaskBatchCollator, tokenize_split
from trainer.data.read import quiet_datasets_bars, read_split, split_file
from trainer.errors import UserError
from trainer.files import check_writable_dir, write_text_atomically
from trainer.layout import RunDirs
from trainer.model.modeling import MultitaskModel
from trainer.outputs.inference import find_task, load_task_model, task_names
from trainer.tasks.declare import load_tasks_file
from trainer.tasks.spec import TaskData, TaskSpec
from trainer.training.arguments import precision_flags
from trainer.training.metrics import AGGREGATE_METRIC, TIMINGS, aggregate_score, metrics_by_task
from trainer.training.trainer import MultitaskTrainer

EVAL_SPLITS = ("dev", "test")


def metrics_path(output_dir: str, split: str) -> Path:
    return RunDirs(output_dir).split_metrics(split)


def evaluate(settings: Settings, split: str = "test", model_dir: str | None = None) -> dict[str, Any]:
    """Score every task of the run (or those in TASKS) on `split`; writes OUTPUT_DIR/metrics_<split>.json.

    Every split is read before anything is scored: one without labels stops the command with one line.
    """
    if split not in EVAL_SPLITS:
        raise UserError(f"--split={split!r} is not allowed; choose one of {', '.join(EVAL_SPLITS)}")
    check_writable_dir(settings.output_dir, "OUTPUT_DIR")  # where metrics_<split>.json goes
    tasks = [find_task(settings.output_dir, model_dir, name)[0] for name in chosen_tasks(settings, model_dir)]
    if split == "test" and settings.tasks_file:
        tasks = current_test_files(tasks, settings.tasks_file)
    rows = read_labelled_splits(tasks, split, settings)
    metrics: dict[str, float] = {}
    for task in tasks:  # one model in memory at a time
        _, model, tokenizer = load_task_model(settings.output_dir, model_dir, task.name, settings.max_seq_length)
        metrics.update(score_task(task, model, tokenizer, rows[task.name], split, settings))
    per_task = metrics_by_task(metrics, tasks, prefix=split)
    report = {
        "split": split,
        AGGREGATE_METRIC: aggregate_score(per_task, tasks),
        "main_metric": {t.name: t.metric for t in tasks},
        "examples": {name: len(data) for name, data in rows.items()},
        "tasks": per_task,
    }
    path = metrics_path(settings.output_dir, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(report, indent=2))
    return report


def current_test_files(tasks: list[TaskSpec], tasks_file: str) -> list[TaskSpec]:
    """The tasks with the test split the current TASKS_FILE declares, where it declares one: a `test_file`
    added (or moved) after training needs no retraining. Says so, once per task it changes."""
    declared = load_tasks_file(tasks_file)
    updated = []
    for task in tasks:
        current = declared.get(task.name)
        fields = ("test_file", "test_labels_file", "train_labels_file", "label_from", "split", "encoding", "header",
                  "column_names", "format")
        if current is not None and (current.test_file or (current.split and current.split[1])) \
                and any(not _same(f, getattr(current, f), getattr(task, f)) for f in fields):
            test = current.test_file or f"{current.train_file} (split)"
            print(f"note: evaluate: task {task.name}'s test split is TASKS_FILE {tasks_file}'s: {test} (the export "
                  f"recorded {task.test_file or 'none'})", file=sys.stderr, flush=True)
            task = dataclasses.replace(task, **{f: getattr(current, f) for f in (*fields, "train_file")})
        updated.append(task)
    return updated


def _same(field: str, current: object, recorded: object) -> bool:
    """Whether a TASKS_FILE field is unchanged; file paths compare by the file they name (a symlinked or
    relative path to the same file is the same)."""
    if field.endswith("_file") and isinstance(current, str) and isinstance(recorded, str):
        return os.path.realpath(current) == os.path.realpath(recorded)
    return current == recorded


def chosen_tasks(settings: Settings, model_dir: str | None) -> list[str]:
    """Every task the run has a model for, or those TASKS names."""
    available = task_names(settings.output_dir, model_dir)
    if settings.tasks is None:
        return available
    missing = [n for n in settings.tasks if n not in available]
    if missing:
        raise UserError(f"TASKS names {', '.join(missing)}, which this run has no model for; it has: "
                        f"{', '.join(available)}")
    return list(settings.tasks)


def read_labelled_splits(tasks: list[TaskSpec], split: str, settings: Settings) -> dict[str, TaskData]:
    """Each task's `split`, capped at MAX_EVAL_SAMPLES; refuses, naming them, if any of them has no labels."""
    rows: dict[str, TaskData] = {}
    unlabelled: list[UnlabelledSplit] = []
    for task in tasks:
        file = split_file(task, split) or task.train_file
        progress(f"reading task {task.name}'s {split} split" + (f" ({file})" if file else ""))
        try:
            rows[task.name] = read_split(task, split, settings.data_dir).limit(settings.max_eval_samples)
        except UnlabelledSplit as err:
            unlabelled.append(err)
    if unlabelled:
        message = str(unlabelled[0])
        if len(unlabelled) > 1:
            message += f"; nor do the {split} splits of {', '.join(e.task.name for e in unlabelled[1:])}"
        if rows:
            message += f"; --tasks={','.join(rows)} scores the labelled ones"
        raise UserError(message)
    return rows


def progress(message: str) -> None:
    """A line for a person at a terminal while a long step runs (reading 12k rows takes minutes). Like the
    progress bars, it is left out of a log or a pipe, where an error stays the one line on stderr."""
    if sys.stderr.isatty():
        print(f"evaluate: {message}", file=sys.stderr, flush=True)


def score_task(
    task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: TaskData, split: str,
    settings: Settings,
) -> dict[str, float]:
    """`<split>_<task>_<metric>` of one task model, from the training's evaluation loop."""
    with quiet_datasets_bars(when=not sys.stderr.isatty()):  # "Tokenizing <task>": in a log, lines of \r
        dataset = tokenize_split(task, rows, tokenizer, settings.max_seq_length)
    with tempfile.TemporaryDirectory(prefix="trainer-evaluate-") as scratch:  # the Trainer writes nothing we keep
        args = TrainingArguments(
            output_dir=scratch, per_device_eval_batch_size=settings.effective_eval_batch_size, report_to=[],
            seed=settings.seed, remove_unused_columns=False, dataloader_num_workers=0,
            **precision_flags(settings.precision),
        )
        trainer = MultitaskTrainer(
            model=MultitaskModel.from_task_model(task, model),
            args=args,
            eval_dataset={task.name: MultitaskDataset({task.name: dataset})},
            processing_class=tokenizer,
            data_collator=TaskBatchCollator(tokenizer, [task], pad_to_multiple_of=8 if not args.use_cpu else None),
            tasks=[task],
        )
        metrics = trainer.evaluate(metric_key_prefix=split)
    return {k: v for k, v in metrics.items() if k != f"{split}_{AGGREGATE_METRIC}"}


def describe_report(report: dict[str, Any], path: Path) -> str:
    """The table `evaluate` prints: each task's metrics (main first), value, examples; the average; the file."""
    lines = [f"{'task':<20} {'metric':<10} {'value':>8} {'examples':>9}"]
    for name, main in report["main_metric"].items():  # every metric of the task, its main one first (marked)
        metrics = report["tasks"][name]
        for metric in sorted((m for m in metrics if m not in TIMINGS), key=lambda m: m != main):
            lines.append(f"{name:<20} {metric:<10} {metrics[metric]:>8.4f} {report['examples'][name]:>9}"
                         + ("  (main)" if metric == main else ""))
    lines.append(f"{AGGREGATE_METRIC:<20} {'':<10} {report[AGGREGATE_METRIC]:>8.4f}")
    lines.append(f"{report['split']} metrics -> {path}")
    return "\n".join(lines)
