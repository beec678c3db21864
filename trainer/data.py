"""Tokenisation with `datasets.map`, the multitask dataset, and per-batch dynamic padding."""

from __future__ import annotations

import hashlib
import os
from bisect import bisect_right
from typing import Any

import datasets
import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from trainer.tasks import TaskData, TaskSpec

TOKENIZER_VERSION = "1"  # bump when tokenize_batch changes, to invalidate cached files


def cache_dir() -> str:
    return os.path.join(datasets.config.HF_DATASETS_CACHE, "multitask_trainer")


def _tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{state}|{tokenizer.model_input_names}".encode()).hexdigest()[:16]


def tokenize_batch(
    batch: dict[str, list[Any]], task: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> dict[str, list[Any]]:
    """Tokenise a batch of normalised rows. No padding: the collator pads per batch."""
    if task.type == "multiple_choice":
        firsts = [q for q, choices in zip(batch["text_a"], batch["choices"], strict=True) for _ in choices]
        seconds = [c for choices in batch["choices"] for c in choices]
        flat = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
        out: dict[str, list[Any]] = {}
        start = 0
        for choices in batch["choices"]:
            for key, values in flat.items():
                out.setdefault(key, []).append(values[start : start + len(choices)])
            start += len(choices)
        out["length"] = [max(len(ids) for ids in group) for group in out["input_ids"]]
    else:
        pairs = task.type == "regression" or any(batch["text_b"])
        out = dict(
            tokenizer(batch["text_a"], batch["text_b"] if pairs else None, truncation=True, max_length=max_length)
        )
        out["length"] = [len(ids) for ids in out["input_ids"]]
    out["labels"] = batch["label"]
    return out


def tokenize_split(
    task: TaskSpec, rows: TaskData, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> datasets.Dataset:
    """Build a `datasets.Dataset` from normalised rows and tokenise it (cached on disk)."""
    features = {
        "text_a": datasets.Value("string"),
        "text_b": datasets.Value("string"),
        "label": datasets.Value("float32" if task.type == "regression" else "int64"),
    }
    if task.type == "multiple_choice":
        features["choices"] = datasets.Sequence(datasets.Value("string"))
    raw = datasets.Dataset.from_dict(rows.columns(task), features=datasets.Features(features))
    key = hashlib.sha256(
        f"{raw._fingerprint}|{_tokenizer_digest(tokenizer)}|{max_length}|{task.type}|{TOKENIZER_VERSION}".encode()
    ).hexdigest()[:20]
    os.makedirs(cache_dir(), exist_ok=True)
    return raw.map(
        tokenize_batch,
        batched=True,
        fn_kwargs={"task": task, "tokenizer": tokenizer, "max_length": max_length},
        remove_columns=raw.column_names,
        cache_file_name=os.path.join(cache_dir(), f"{task.name}-{key}.arrow"),
        load_from_cache_file=True,
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
        """Fetch a whole batch with one Arrow read (all indices come from one task)."""
        located = [self.locate(i) for i in indices]
        names = {name for name, _ in located}
        if len(names) != 1:
            return [self[i] for i in indices]
        (name,) = names
        columns = self.splits[name][[local for _, local in located]]
        return [{"task": name, **{k: v[j] for k, v in columns.items()}} for j in range(len(indices))]


class TaskBatchCollator:
    """Pad a batch of one task to its longest sequence (never to MAX_SEQ_LENGTH).

    Multiple-choice items are flattened to (batch * choices) sequences, padded, and
    reshaped to (batch, choices, length). The batch keeps its task name under `task`.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None):
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        tasks = {f.get("task") for f in features}
        if len(tasks) != 1:
            raise ValueError(f"a batch must come from one task, got {sorted(map(str, tasks))}")
        (task,) = tasks
        keys = [k for k in features[0] if k in self.tokenizer.model_input_names]
        labels = [f["labels"] for f in features]
        multiple_choice = isinstance(features[0]["input_ids"][0], list)
        if multiple_choice:
            num_choices = len(features[0]["input_ids"])
            flat = [{k: f[k][c] for k in keys} for f in features for c in range(num_choices)]
        else:
            flat = [{k: f[k] for k in keys} for f in features]
        batch = dict(
            self.tokenizer.pad(flat, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")
        )
        if multiple_choice:
            batch = {k: v.view(len(features), num_choices, -1) for k, v in batch.items()}
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
        batch["task"] = task
        return batch
