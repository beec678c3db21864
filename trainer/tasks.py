"""Task definitions: built-in tasks, tasks declared in TASKS_FILE, and reading their data.

Every task's rows are normalised to the same columns before tokenisation:
`text_a`, `text_b` (may be empty), `choices` (multiple choice only) and `label`
(class index, choice index, or a float for regression).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer import demo
from trainer.errors import UserError

TaskType = Literal["classification", "regression", "multiple_choice"]
TASK_TYPES = ("classification", "regression", "multiple_choice")
SPLITS = ("train", "dev")
FILE_FORMATS = ("csv", "tsv", "jsonl")


@dataclass(frozen=True)
class TaskSpec:
    """What a task is and where its data lives.

    `text_columns` holds one or two columns (a sentence or a sentence pair); for multiple
    choice it holds the question and `choice_columns` the candidate answers. Column names
    in JSONL files may be dotted paths into nested objects (`question.stem`).
    """

    name: str
    type: TaskType
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] = ()
    choice_columns: tuple[str, ...] = ()
    main_metric: str = ""
    # Local files: paths, or names relative to DATA_DIR/<name>/ for built-in tasks.
    train_file: str = "train.tsv"
    dev_file: str = "dev.tsv"
    header: bool = True
    column_names: tuple[str, ...] = ()
    # Hugging Face hub source (built-in tasks only): dataset path, config, split names.
    hub_path: str = ""
    hub_name: str | None = None
    hub_splits: tuple[str, str] = ("train", "validation")
    hub_text_columns: tuple[str, ...] = ()
    hub_choices_column: str = ""
    hub_label_column: str = "label"
    # Generated offline by trainer.demo.
    demo: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.type == "classification" else 1

    @property
    def metric(self) -> str:
        """The metric that goes into the aggregate score and model selection."""
        if self.main_metric:
            return self.main_metric
        if self.type == "regression":
            return "pearson"
        if self.type == "classification" and len(self.labels) > 2:
            return "macro_f1"
        return "accuracy"

    def file_format(self, path: str) -> str:
        suffix = Path(path).suffix.lstrip(".").lower()
        if suffix not in FILE_FORMATS:
            raise UserError(f"task {self.name!r}: file {path} has an unknown format; use .csv, .tsv or .jsonl")
        return suffix

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
        return cls(**kwargs)


_GLUE = "nyu-mll/glue"
BUILTIN_TASKS: dict[str, TaskSpec] = {
    "stsb": TaskSpec(
        name="stsb", type="regression", text_columns=("sentence1", "sentence2"), label_column="score",
        hub_path=_GLUE, hub_name="stsb", hub_text_columns=("sentence1", "sentence2"),
    ),
    "rte": TaskSpec(
        name="rte", type="classification", text_columns=("sentence1", "sentence2"), label_column="label",
        labels=("entailment", "not_entailment"),
        hub_path=_GLUE, hub_name="rte", hub_text_columns=("sentence1", "sentence2"),
    ),
    "sst2": TaskSpec(
        name="sst2", type="classification", text_columns=("sentence",), label_column="label", labels=("0", "1"),
        hub_path=_GLUE, hub_name="sst2", hub_text_columns=("sentence",),
    ),
    "mrpc": TaskSpec(
        name="mrpc", type="classification", text_columns=("#1 String", "#2 String"), label_column="Quality",
        labels=("0", "1"), main_metric="f1",
        hub_path=_GLUE, hub_name="mrpc", hub_text_columns=("sentence1", "sentence2"),
    ),
    "cola": TaskSpec(
        name="cola", type="classification", text_columns=("sentence",), label_column="label", labels=("0", "1"),
        main_metric="mcc", header=False, column_names=("source", "label", "original_label", "sentence"),
        hub_path=_GLUE, hub_name="cola", hub_text_columns=("sentence",),
    ),
    "commonsense_qa": TaskSpec(
        name="commonsense_qa", type="multiple_choice", text_columns=("question.stem",),
        choice_columns=tuple(f"question.choices.{i}.text" for i in range(5)),
        label_column="answerKey", labels=("A", "B", "C", "D", "E"),
        train_file="train_rand_split.jsonl", dev_file="dev_rand_split.jsonl",
        hub_path="tau/commonsense_qa", hub_text_columns=("question",), hub_choices_column="choices.text",
        hub_label_column="answerKey",
    ),
}

DEMO_TASKS: dict[str, TaskSpec] = {
    "demo_sentiment": TaskSpec(
        name="demo_sentiment", type="classification", text_columns=("text",), label_column="label",
        labels=("negative", "positive"), demo=True,
    ),
    "demo_similarity": TaskSpec(
        name="demo_similarity", type="regression", text_columns=("a", "b"), label_column="score", demo=True,
    ),
    "demo_category": TaskSpec(
        name="demo_category", type="multiple_choice", text_columns=("question",), label_column="answer",
        choice_columns=tuple(f"choice{i}" for i in range(demo.NUM_CHOICES)), demo=True,
    ),
}


@dataclass
class TaskData:
    """Normalised rows of one split, column-wise, ready for `datasets.Dataset.from_dict`."""

    text_a: list[str] = field(default_factory=list)
    text_b: list[str] = field(default_factory=list)
    choices: list[list[str]] = field(default_factory=list)
    label: list[Any] = field(default_factory=list)

    def columns(self, task: TaskSpec) -> dict[str, list[Any]]:
        cols: dict[str, list[Any]] = {"text_a": self.text_a, "text_b": self.text_b, "label": self.label}
        if task.type == "multiple_choice":
            cols["choices"] = self.choices
        return cols

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, indices: list[int]) -> TaskData:
        pick = lambda column: [column[i] for i in indices] if column else []  # noqa: E731
        return TaskData(pick(self.text_a), pick(self.text_b), pick(self.choices), pick(self.label))

    def limit(self, limit: int | None, seed: int | None = None) -> TaskData:
        """At most `limit` rows: a seeded random subset when `seed` is given, else the first ones."""
        if limit is None or limit >= len(self):
            return self
        if seed is None:
            return self.subset(list(range(limit)))
        return self.subset(sorted(random.Random(seed).sample(range(len(self)), limit)))


# ---- declaring tasks -------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class _LiteralLoader(yaml.SafeLoader):
    """YAML without implicit booleans, so labels such as `yes`/`no`/`on`/`off` stay strings."""


_LiteralLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_REQUIRED = ("name", "type", "text_columns", "label_column", "train_file", "dev_file")


def load_tasks_file(path: str) -> dict[str, TaskSpec]:
    """Read task declarations from a YAML (or JSON) file. Data file paths are relative to it."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"TASKS_FILE {path} does not exist; point it to a YAML file with a 'tasks:' list")
    try:
        doc = yaml.load(file.read_text(encoding="utf-8"), Loader=_LiteralLoader)  # noqa: S506
    except yaml.YAMLError as err:
        raise UserError(f"TASKS_FILE {path} is not valid YAML/JSON: {str(err).splitlines()[0]}") from None
    entries = doc.get("tasks") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"TASKS_FILE {path} must contain a non-empty 'tasks:' list")
    tasks = {}
    for i, entry in enumerate(entries):
        task = _task_from_entry(entry, f"TASKS_FILE {path}, task #{i + 1}", file.parent)
        tasks[task.name] = task
    return tasks


def _task_from_entry(entry: Any, where: str, base: Path) -> TaskSpec:
    if not isinstance(entry, dict):
        raise UserError(f"{where} must be a mapping with the fields {', '.join(_REQUIRED)}")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise UserError(f"{where} is missing the field(s) {', '.join(missing)}; required: {', '.join(_REQUIRED)}")
    name, kind = str(entry["name"]), str(entry["type"])
    where = f"{where} ({name})"
    if not _NAME.match(name):
        raise UserError(f"{where}: name may only contain letters, digits, '_' and '-'")
    if kind not in TASK_TYPES:
        raise UserError(f"{where}: type {kind!r} is not allowed; choose one of {', '.join(TASK_TYPES)}")
    text_columns = _as_tuple(entry["text_columns"])
    labels = tuple(str(x) for x in _as_tuple(entry.get("labels", ())))
    choice_columns = _as_tuple(entry.get("choice_columns", ()))
    if kind == "classification" and len(labels) < 2:
        raise UserError(f"{where}: a classification task needs 'labels' with at least two values")
    if kind == "regression" and labels:
        raise UserError(f"{where}: a regression task takes no 'labels' (its label column holds numbers)")
    if kind == "multiple_choice" and len(choice_columns) < 2:
        raise UserError(f"{where}: a multiple_choice task needs 'choice_columns' with at least two columns")
    if not 1 <= len(text_columns) <= (1 if kind == "multiple_choice" else 2):
        raise UserError(f"{where}: 'text_columns' takes one or two columns (one, the question, for multiple_choice)")
    known = {f.name for f in dataclasses.fields(TaskSpec)}
    extra = sorted(set(entry) - known)
    if extra:
        raise UserError(f"{where}: unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(known))}")
    spec = TaskSpec(
        name=name,
        type=kind,  # type: ignore[arg-type]
        text_columns=text_columns,
        label_column=str(entry["label_column"]),
        labels=labels,
        choice_columns=choice_columns,
        main_metric=str(entry.get("main_metric", "")),
        train_file=str(base / str(entry["train_file"])),
        dev_file=str(base / str(entry["dev_file"])),
        header=str(entry.get("header", "true")).lower() in ("true", "yes", "1"),
        column_names=_as_tuple(entry.get("column_names", ())),
    )
    spec.file_format(spec.train_file)
    spec.file_format(spec.dev_file)
    return spec


def _as_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def resolve_tasks(names: tuple[str, ...], tasks_file: str | None) -> list[TaskSpec]:
    """Look up every name in TASKS among the built-in tasks and those of TASKS_FILE."""
    available = {**BUILTIN_TASKS, **DEMO_TASKS}
    if tasks_file:
        available.update(load_tasks_file(tasks_file))
    if len(set(names)) != len(names):
        raise UserError(f"TASKS lists a task twice: {','.join(names)}")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UserError(
            f"unknown task(s) {', '.join(unknown)} in TASKS; available: {', '.join(sorted(available))}"
            + ("" if tasks_file else " (declare your own in TASKS_FILE)")
        )
    return [available[n] for n in names]


# ---- reading local files ---------------------------------------------------------------


def read_local_split(task: TaskSpec, path: str) -> TaskData:
    """Read and validate one split file; every problem names the file and line."""
    if not Path(path).is_file():
        raise UserError(f"task {task.name!r}: data file {path} not found")
    data = TaskData()
    for where, row in _iter_rows(task, path):
        _append_row(task, data, row, where)
    if not len(data):
        raise UserError(f"task {task.name!r}: split file {path} has no rows; each split needs at least one")
    return data


def _iter_rows(task: TaskSpec, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    fmt = task.file_format(path)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        if fmt == "jsonl":
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{lineno}: each JSONL line must be an object")
                yield f"{path}:{lineno}", row
            return
        # GLUE TSVs contain stray quote characters: read them with QUOTE_NONE.
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else csv.reader(handle)
        header = list(task.column_names)
        for lineno, cells in enumerate(reader, 1):
            if not cells:
                continue
            if task.header and lineno == 1:
                header = header or [c.strip() for c in cells]
                continue
            if not header:
                raise UserError(f"task {task.name!r}: {path} has no header; set 'column_names' for it")
            if len(cells) != len(header):
                raise UserError(
                    f"{path}:{lineno}: expected {len(header)} columns ({', '.join(header)}), found {len(cells)}"
                )
            yield f"{path}:{lineno}", dict(zip(header, cells, strict=True))


def _lookup(row: dict[str, Any], column: str, where: str) -> Any:
    """Get a column, following dotted paths (with list indices) into nested JSON."""
    if column in row:
        return row[column]
    value: Any = row
    for part in column.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise UserError(f"{where}: column {column!r} is missing; the row has {', '.join(map(str, row))}")
    return value


def _append_row(task: TaskSpec, data: TaskData, row: dict[str, Any], where: str) -> None:
    texts = [str(_lookup(row, c, where)) for c in task.text_columns]
    data.text_a.append(texts[0])
    data.text_b.append(texts[1] if len(texts) > 1 else "")
    raw = _lookup(row, task.label_column, where)
    if task.type == "multiple_choice":
        data.choices.append([str(_lookup(row, c, where)) for c in task.choice_columns])
    data.label.append(parse_label(task, raw, where))


def parse_label(task: TaskSpec, raw: Any, where: str) -> int | float:
    """A class or choice index, or a float for regression."""
    if task.type == "regression":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = float("nan")
        if value != value or value in (float("inf"), float("-inf")):
            raise UserError(f"{where}: regression target {raw!r} of task {task.name!r} is not a finite number")
        return value
    text = str(raw).strip()
    if task.labels:
        if text not in task.labels:
            raise UserError(
                f"{where}: label {text!r} of task {task.name!r} is not in its label list ({', '.join(task.labels)})"
            )
        return task.labels.index(text)
    # multiple choice without a label list: the label is the choice index
    if not text.isdigit() or int(text) >= len(task.choice_columns):
        raise UserError(
            f"{where}: label {text!r} of task {task.name!r} must be a choice index 0..{len(task.choice_columns) - 1}"
        )
    return int(text)


# ---- the Hugging Face hub --------------------------------------------------------------


def read_hub_split(task: TaskSpec, split: str) -> TaskData:
    """Load a built-in task's split from the Hugging Face hub and normalise it."""
    import datasets

    hub_split = task.hub_splits[SPLITS.index(split)]
    try:
        rows = datasets.load_dataset(task.hub_path, task.hub_name, split=hub_split)
    except Exception as err:  # network, auth, missing dataset: all mean "can't get it"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"task {task.name!r}: could not load {task.hub_path} from the Hugging Face hub ({reason}); "
            "set DATA_DIR to read local files instead"
        ) from None
    return normalise_hub_rows(task, rows)


def normalise_hub_rows(task: TaskSpec, rows: Any) -> TaskData:
    """Convert hub rows (GLUE: integer labels in our label order) to `TaskData`."""
    data = TaskData()
    for i, row in enumerate(rows):
        where = f"{task.hub_path}[{i}]"
        texts = [str(row[c]) for c in task.hub_text_columns]
        data.text_a.append(texts[0])
        data.text_b.append(texts[1] if len(texts) > 1 else "")
        raw = row[task.hub_label_column]
        if task.type == "multiple_choice":
            data.choices.append([str(c) for c in _lookup(row, task.hub_choices_column, where)])
            data.label.append(parse_label(task, raw, where))
        elif task.type == "classification":
            if not isinstance(raw, int) or not 0 <= raw < task.num_labels:
                raise UserError(f"{where}: label {raw!r} is outside 0..{task.num_labels - 1} (unlabelled split?)")
            data.label.append(raw)
        else:
            data.label.append(parse_label(task, raw, where))
    return data


def read_split(task: TaskSpec, split: str, data_dir: str | None) -> TaskData:
    """Rows of one split, from the demo generator, DATA_DIR, a TASKS_FILE path or the hub."""
    if task.demo:
        return TaskData(**demo.demo_columns(task.name, split))
    file = task.train_file if split == "train" else task.dev_file
    if task.hub_path:  # built-in
        if not data_dir:
            return read_hub_split(task, split)
        return read_local_split(task, str(Path(data_dir) / task.name / file))
    return read_local_split(task, file)
