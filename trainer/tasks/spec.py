"""A declared task (`TaskSpec`) and the normalised rows of one of its splits (`TaskData`).

A spec has the fields every task has (name, kind, files, metric, ...) plus `options`: the fields
its kind declares (`text_columns`, `labels`, ...). Those read as attributes too: `task.labels`.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from trainer.errors import UserError
from trainer.tasks.kinds import KINDS, TaskKind

SPLITS = ("train", "dev")  # the splits training reads
ALL_SPLITS = ("train", "dev", "test")  # the order of `hub_splits`


@dataclass(frozen=True)
class TaskSpec:
    """What a task is and where its data lives."""

    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    main_metric: str = ""
    in_average: bool | None = None  # None: the kind decides (language modelling stays out)
    # Local files: paths, or names relative to DATA_DIR/<name>/ for built-in tasks.
    train_file: str = "train.tsv"
    dev_file: str = "dev.tsv"
    test_file: str = ""  # optional: no test split without one (GLUE's and CommonsenseQA's have no labels)
    header: bool = True
    column_names: tuple[str, ...] = ()
    encoding: str = "utf-8"
    format: str = ""  # the files' format when their suffix doesn't say (csv, tsv, jsonl, txt, conll)
    # One item per line instead of a table: each split's labels in a parallel file (TweetEval's *_labels.txt),
    # or each line cut into named columns by the `label_from` regex (TREC's `LABEL:fine text`).
    train_labels_file: str = ""
    dev_labels_file: str = ""
    test_labels_file: str = ""
    label_from: str = ""
    # (dev fraction, test fraction, seed): the dev and test splits are drawn from train_file (`split:`).
    split: tuple[Any, ...] = ()
    # A `datasets` source (built-in tasks, or `source:` in TASKS_FILE): dataset path, config, the split
    # names for ALL_SPLITS ("" where there is none), and the kind's options for hub rows where the hub's
    # columns differ from the local files' (built-in tasks only).
    hub_path: str = ""
    hub_name: str | None = None
    hub_splits: tuple[str, ...] = ("train", "validation", "test")  # in ALL_SPLITS order
    hub_options: dict[str, Any] = field(default_factory=dict, hash=False)
    # Generated offline by trainer.tasks.demo.
    demo: bool = False
    override: bool = False  # TASKS_FILE: this task replaces the built-in task of its name

    def __post_init__(self) -> None:
        kind = KINDS.get(self.type)
        if kind is None:
            raise UserError(f"task {self.name!r}: type {self.type!r} is not allowed; choose one of {', '.join(KINDS)}")
        known = {f.name: f for f in kind.fields}
        extra = sorted(set(self.options) - set(known))
        if extra:
            raise UserError(f"task {self.name!r}: {self.type} takes no field(s) {', '.join(extra)}")
        where = f"task {self.name!r}"
        full = {f.name: f.parse(self.options[f.name], where) if f.name in self.options else f.default
                for f in kind.fields}
        object.__setattr__(self, "options", full)

    def __getattr__(self, name: str) -> Any:  # only called for names that are not dataclass fields
        options = self.__dict__.get("options", {})
        if name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__} of type {self.__dict__.get('type')!r} has no {name!r}")

    @property
    def kind(self) -> TaskKind:
        return KINDS[self.type]

    @property
    def num_labels(self) -> int:
        return self.kind.num_labels(self)

    @property
    def metric(self) -> str:
        """The metric that goes into the aggregate score and model selection."""
        return self.main_metric or self.kind.default_metric(self)

    @property
    def higher_is_better(self) -> bool:
        return self.kind.metrics[self.metric]

    @property
    def declared_source(self) -> bool:
        """Declared with `source:` in TASKS_FILE (no files): read with `datasets` only, never from DATA_DIR;
        the source's features may complete it (ClassLabel names as `labels`)."""
        return bool(self.hub_path) and not self.train_file

    @property
    def counts_in_average(self) -> bool:
        return (not self.kind.auxiliary) if self.in_average is None else self.in_average

    @property
    def reads_lines(self) -> bool:
        """Its files hold one item per line (with a parallel labels file, or cut by `label_from`)."""
        return bool(self.label_from or self.train_labels_file or self.dev_labels_file or self.test_labels_file)

    def labels_file_of(self, path: str) -> str:
        """The labels file parallel to the text file `path` ("" when there is none)."""
        pairs = ((self.train_file, self.train_labels_file), (self.dev_file, self.dev_labels_file),
                 (self.test_file, self.test_labels_file))
        return next((labels for text, labels in pairs if text and text == path), "")

    def file_format(self, path: str) -> str:
        if self.reads_lines:
            return "lines"
        suffix = self.format or Path(path).suffix.lstrip(".").lower()
        formats = self.kind.file_formats
        if suffix not in formats:
            raise UserError(
                f"task {self.name!r}: file {path} has an unknown format; a {self.type} task reads "
                + ", ".join(f".{f}" for f in formats) + " (or set 'format:')"
            )
        return suffix

    def with_hub_options(self) -> TaskSpec:
        """The spec as hub rows are read: the kind's options with `hub_options` on top."""
        return dataclasses.replace(self, options={**self.options, **self.hub_options}, hub_options={})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(data.pop("options"))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        """Inverse of `to_dict`: the common fields by name, everything else is the kind's."""
        common = {f.name for f in dataclasses.fields(cls)} - {"options"}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in common}
        own = {f.name for f in KINDS[data["type"]].fields} if data.get("type") in KINDS else None
        options = {k: v for k, v in data.items() if k not in common
                   # models saved before task kinds carry every kind's fields, empty, and hub_* columns
                   and (own is None or k in own or (v not in ((), [], "", None) and not k.startswith("hub_")))}
        return cls(**kwargs, options=options)


COMMON_FIELDS = {f.name for f in dataclasses.fields(TaskSpec)} - {"options"}


class TaskData:
    """Normalised rows of one split, column-wise: the task kind's columns (`text_a`, `label`, `tokens`, ...).

    Either Python lists (rows built one by one: demo data, hub rows, predict-file batches) or a
    `datasets.Dataset` (a local file, read by `trainer.data.arrow_split` into a memory-mapped Arrow file, so the
    rows are not held in Python). Columns read as attributes, as lists.
    """

    def __init__(self, columns: dict[str, list[Any]] | None = None, dataset: datasets.Dataset | None = None,
                 **named: list[Any]):
        self.lists = {**(columns or {}), **named}
        self.dataset = dataset

    @property
    def columns(self) -> dict[str, list[Any]]:
        """Every column as a Python list (an Arrow-backed split is read into memory: for small uses)."""
        return self.dataset.to_dict() if self.dataset is not None else self.lists

    def __getattr__(self, name: str) -> list[Any]:
        dataset = self.__dict__.get("dataset")
        if dataset is not None and name in dataset.column_names:
            return dataset[name][:]
        columns = self.__dict__.get("lists", {})
        if name in columns:
            return columns[name]
        raise AttributeError(name)

    def __len__(self) -> int:
        if self.dataset is not None:
            return len(self.dataset)
        return len(next(iter(self.lists.values()), []))

    def append(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            self.lists.setdefault(key, []).append(value)

    def subset(self, indices: list[int]) -> TaskData:
        if self.dataset is not None:
            return TaskData(dataset=self.dataset.select(indices))
        return TaskData({k: [v[i] for i in indices] for k, v in self.lists.items()})

    def limit(self, limit: int | None, seed: int | None = None) -> TaskData:
        """At most `limit` rows: a seeded random subset when `seed` is given, else the first ones."""
        if limit is None or limit >= len(self):
            return self
        if seed is None:
            return self.subset(list(range(limit)))
        return self.subset(sorted(random.Random(seed).sample(range(len(self)), limit)))

    def as_dataset(self, features: datasets.Features) -> datasets.Dataset:
        """The rows as a `datasets.Dataset` with the kind's features (lists are converted, Arrow is as is)."""
        if self.dataset is not None:
            return self.dataset
        return datasets.Dataset.from_dict(self.lists, features=features)
