"""`python -m trainer check`: read and validate every task as training would, report, write nothing."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.settings import Settings
from trainer.spec import SPLITS, TaskSpec
from trainer.tasks import describe_choice, resolve_tasks

_BATCH = 1000


def token_lengths(task: TaskSpec, columns: dict[str, list[Any]], tokenizer: Any) -> np.ndarray:
    """Untruncated token lengths of every example (for packed kinds: of every text), tokenised in memory."""
    lengths = []
    size = len(next(iter(columns.values())))
    for start in range(0, size, _BATCH):
        batch = {k: v[start:start + _BATCH] for k, v in columns.items()}
        if task.kind.packs:
            lengths += [len(ids) for ids in task.kind.token_stream(batch["text"], tokenizer)]
        else:
            lengths += task.kind.tokenize(batch, task, tokenizer, max_length=10**9)["length"]
    return np.asarray(lengths)


def check(settings: Settings) -> str:
    """The report `check` prints; raises `UserError` at the first problem, exactly as training would."""
    from trainer.train import load_tokenizer, read_all_splits

    tasks = resolve_tasks(settings.tasks, settings.tasks_file, settings.task_weights)
    rows = read_all_splits(tasks, settings)
    tokenizer, _ = load_tokenizer(settings.model_name, tasks)
    limit = settings.max_seq_length
    lines = [describe_choice(tasks, settings.tasks, settings.tasks_file),
             f"tokenizer of {settings.model_name}; MAX_SEQ_LENGTH={limit}"]
    for task in tasks:
        lines.append(f"{task.name} ({task.type}, main metric {task.metric}):")
        for split in SPLITS:
            columns = rows[task.name][split].columns
            lengths = token_lengths(task, columns, tokenizer)
            p50, p90, p99 = np.percentile(lengths, [50, 90, 99]).astype(int)
            if task.kind.packs:
                tokens = int(lengths.sum())
                shape = f"{tokens} tokens -> {-(-tokens // limit)} blocks of {limit}"
            else:
                shape = f"truncated at {limit}: {np.mean(lengths > limit):.1%}"
            lines.append(f"  {split:<5} {len(lengths):>7} rows; tokens p50 {p50}, p90 {p90}, p99 {p99}, "
                         f"max {lengths.max()}; {shape}")
            summary = task.kind.label_summary(task, columns)
            if summary:
                lines.append(f"        labels: {summary}")
    lines.append("ok: every task reads and validates; nothing was written")
    return "\n".join(lines)
