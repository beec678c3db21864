"""`python -m trainer check`: read and validate every task as training would, report, write nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.config.settings import Settings
from trainer.data.arrow_split import UnlabelledSplit
from trainer.data.read import read_all_splits, read_split
from trainer.model.adapters import ADAPTERS, LoraOptions
from trainer.model.loading import encoder_skeleton, load_tokenizer
from trainer.model.positions import check_max_seq_length
from trainer.tasks.declare import describe_choice, resolve_tasks
from trainer.tasks.spec import SPLITS, TaskData, TaskSpec


def check(settings: Settings) -> str:
    """The report `check` prints; raises `UserError` at the first problem, exactly as training would."""
    tasks = resolve_tasks(settings.tasks, settings.tasks_file, settings.task_weights)
    tasks, rows = read_all_splits(tasks, settings)
    tokenizer, config = load_tokenizer(settings.model_name, tasks)
    check_max_seq_length(settings.max_seq_length, config, tokenizer, f"MODEL_NAME={settings.model_name}")
    limit = settings.max_seq_length
    lines = [describe_choice(tasks, settings.tasks, settings.tasks_file),
             f"tokenizer of {settings.model_name}; MAX_SEQ_LENGTH={limit}"]
    if settings.adapter != "none":
        lines.append(describe_adapter(settings, tasks, encoder_skeleton(config, tokenizer)))
    tests = {t.name: declared_test(t, settings) for t in tasks}
    for task in tasks:
        lines.append(f"{task.name} ({task.type}, main metric {task.metric}):")
        for split in (*SPLITS, "test"):
            if split == "test":
                if not isinstance(tests[task.name], TaskData):
                    lines.append(f"  test  {tests[task.name]}")
                    continue
                rows[task.name]["test"] = tests[task.name]
            task.kind.check_lengths(task, rows[task.name][split], tokenizer, limit)  # as training refuses it
            columns = rows[task.name][split].columns
            lengths = task.kind.token_lengths(task, columns, tokenizer)
            p50, p90, p99 = np.percentile(lengths, [50, 90, 99]).astype(int)
            shape = task.kind.length_note(task, lengths, limit)
            lines.append(f"  {split:<5} {len(lengths):>7} rows; tokens p50 {p50}, p90 {p90}, p99 {p99}, "
                         f"max {lengths.max()}; {shape}")
            summary = task.kind.label_summary(task, columns)
            if summary:
                lines.append(f"        labels: {summary}")
    lines.append("ok: every task reads and validates; nothing was written")
    return "\n".join(lines)


def describe_adapter(settings: Settings, tasks: list[TaskSpec], encoder: nn.Module) -> str:
    """ADAPTER attached as the run would, to the base's skeleton: the line the run logs, or the one-line refusal of a
    LORA_TARGET_MODULES the model has no layer for."""
    adapter = ADAPTERS[settings.adapter](LoraOptions.from_settings(settings), [t.name for t in tasks])
    adapter.check(encoder)
    with torch.device("meta"):
        adapter.attach(encoder)
    return adapter.describe(encoder)


def declared_test(task: TaskSpec, settings: Settings) -> TaskData | str:
    """The task's test split, read and validated as `evaluate` reads it, or a note why there is none to read.
    A declared test file that is missing or bad stops `check` as it would stop `evaluate`."""
    local = not task.declared_source and not (task.hub_path and not settings.data_dir)
    if task.demo or (local and not (task.test_file or (task.split and task.split[1]))):
        return "none declared (test_file or split: {test: ...})"
    if not local and not task.declared_source:
        return "on the hub; not read by check"
    if task.declared_source and not task.hub_splits[2]:
        return "none declared (source test: ...)"
    if task.hub_path and settings.data_dir and task.test_file \
            and not Path(settings.data_dir, task.name, task.test_file).is_file():
        return f"not in DATA_DIR ({task.test_file}); training does not need it"
    try:
        return read_split(task, "test", settings.data_dir).limit(settings.max_eval_samples)
    except UnlabelledSplit:
        return "no labels: predict-file only"
