"""Tokenisation with `datasets.map`, the multitask dataset, and per-batch dynamic padding."""

from __future__ import annotations

import hashlib
import os
from bisect import bisect_right
from typing import Any

import datasets
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from trainer.data.arrow_split import cache_dir
from trainer.data.packing import Packer
from trainer.tasks.spec import TaskData, TaskSpec

TOKENIZER_VERSION = "5"  # bump when tokenize_batch changes, to invalidate cached files


def _tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{state}|{tokenizer.model_input_names}".encode()).hexdigest()[:16]


PARALLEL_ROWS = 50_000  # splits at least this long are tokenised by one process per CPU core


def tokenize_processes(rows: int) -> int | None:
    """`num_proc` for `datasets.map`: one per core for a long split, None (this process) otherwise."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, 8) if rows >= PARALLEL_ROWS and cores > 1 else None


def tokenize_split(
    task: TaskSpec, rows: TaskData, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> datasets.Dataset:
    """Tokenise a split's normalised rows with the task's kind, cached on disk under a key of the rows'
    fingerprint (a local file's: its content), the tokenizer, MAX_SEQ_LENGTH and the task's options."""
    raw = rows.as_dataset(task.kind.features(task))
    key = hashlib.sha256(
        f"{raw._fingerprint}|{_tokenizer_digest(tokenizer)}|{max_length}|{task.type}|{sorted(task.options.items())}|"
        f"{TOKENIZER_VERSION}".encode()
    ).hexdigest()[:20]
    os.makedirs(cache_dir(), exist_ok=True)
    return raw.map(
        task.kind.tokenize_rows,
        batched=True,
        with_indices=True,
        batch_size=task.kind.map_batch_rows,
        fn_kwargs={"task": task, "tokenizer": tokenizer, "max_length": max_length},
        remove_columns=raw.column_names,
        cache_file_name=str(cache_dir() / f"{task.name}-{key}.arrow"),
        load_from_cache_file=True,
        num_proc=tokenize_processes(len(raw)),
        desc=f"Tokenizing {task.name}",
    )


class MultitaskDataset(Dataset):
    """The tokenised train splits of all tasks, end to end; item `i` belongs to one task.

    Indices run over task 0's examples, then task 1's, and so on. Each item carries its
    task's name, which the collator and the model use to pick the head.
    """

    def __init__(self, splits: dict[str, datasets.Dataset]):
        self.task_names = list(splits)
        self.splits = splits
        self.offsets = [0]
        for name in self.task_names:
            self.offsets.append(self.offsets[-1] + len(splits[name]))

    def __len__(self) -> int:
        return self.offsets[-1]

    def task_sizes(self) -> list[int]:
        return [len(self.splits[n]) for n in self.task_names]

    def lengths(self) -> list[list[int]]:
        """Token lengths per task, for length-grouped batching."""
        return [list(self.splits[n]["length"]) for n in self.task_names]

    def locate(self, index: int) -> tuple[str, int]:
        task = bisect_right(self.offsets, index) - 1
        return self.task_names[task], index - self.offsets[task]

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, local = self.locate(index)
        return {"task": name, **self.splits[name][local]}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Fetch a batch with one Arrow read per task (a step of SAMPLING=all_tasks spans every task)."""
        located = [self.locate(i) for i in indices]
        by_task: dict[str, list[int]] = {}
        for name, local in located:
            by_task.setdefault(name, []).append(local)
        items = []
        for name, locals_ in by_task.items():
            columns = self.splits[name][locals_]
            items += [{"task": name, **{k: v[j] for k, v in columns.items()}} for j in range(len(locals_))]
        return items


class TaskBatchCollator:
    """Pad a batch of one task to its longest sequence (never to MAX_SEQ_LENGTH), as its kind does it.

    The batch keeps its task name under `task`, which the model uses to pick the head. Features of
    several tasks (a SAMPLING=all_tasks step) become `{"batches": {task: batch, ...}}`.

    With a `packer` (PACKING=1), a batch of a kind that can pack is packed instead (`trainer.data.packing`).
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, tasks: list[TaskSpec], pad_to_multiple_of: int | None = None,
        packer: Packer | None = None,
    ):
        self.tokenizer = tokenizer
        self.tasks = {t.name: t for t in tasks}
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packer = packer

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        by_task: dict[str, list[dict[str, Any]]] = {}
        for feature in features:
            by_task.setdefault(feature["task"], []).append({k: v for k, v in feature.items() if k != "task"})
        batches = {name: self._collate(name, rows) for name, rows in by_task.items()}
        return next(iter(batches.values())) if len(batches) == 1 else {"batches": batches}

    def _collate(self, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        kind = self.tasks[name].kind
        if self.packer and not kind.no_packing:
            batch = self.packer(rows, kind.collate(rows, self.tokenizer, None))  # labels as one row per sequence
        else:
            batch = kind.collate(rows, self.tokenizer, self.pad_to_multiple_of)
        batch["task"] = name
        return batch
