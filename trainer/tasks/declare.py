"""Tasks declared in TASKS_FILE, validated field by field, and the run's choice of tasks (TASKS).

Every problem names the file and the entry. Paths in the file are relative to it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import UserError, first_line
from trainer.tasks.catalog import BUILTIN_TASKS, DEMO_TASKS
from trainer.tasks.kinds import KINDS
from trainer.tasks.kinds.base import Field
from trainer.tasks.spec import TaskSpec

_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
MAX_NAME_LENGTH = 64  # a name is part of cache and export paths: long ones fail there, far from the cause
_REQUIRED = ("name", "type", "train_file", "dev_file")
_FILE_FIELDS = ("header", "column_names", "encoding", "format")
_LINE_FIELDS = ("train_labels_file", "dev_labels_file", "test_labels_file", "label_from")
_DECLARABLE = ("test_file", "main_metric", "in_average", "override", "source", "split", *_FILE_FIELDS,
               *_LINE_FIELDS)
_SOURCE_KEYS = ("dataset", "config", "train", "dev", "test")


class _LiteralLoader(yaml.SafeLoader):
    """YAML without implicit booleans, so labels such as `yes`/`no`/`on`/`off` stay strings."""


_LiteralLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_tasks_file(path: str) -> dict[str, TaskSpec]:
    """Read task declarations from a YAML (or JSON) file. Data file paths are relative to it."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"TASKS_FILE {path} does not exist; point it to a YAML file with a 'tasks:' list")
    try:
        doc = yaml.load(file.read_text(encoding="utf-8"), Loader=_LiteralLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"TASKS_FILE {path} is not valid UTF-8 YAML/JSON: {first_line(err)}") from None
    entries = doc.get("tasks") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"TASKS_FILE {path} must contain a non-empty 'tasks:' list")
    tasks: dict[str, TaskSpec] = {}
    numbers: dict[str, int] = {}
    for i, entry in enumerate(entries, 1):
        task = _task_from_entry(entry, f"TASKS_FILE {path}, task #{i}", file.parent)
        if task.name in tasks:
            raise UserError(f"TASKS_FILE {path}, task #{i}: field 'name' {task.name!r} is task #{numbers[task.name]}'s "
                            "name too; task names must be unique")
        tasks[task.name], numbers[task.name] = task, i
    return tasks


def _task_from_entry(entry: Any, where: str, base: Path) -> TaskSpec:
    if not isinstance(entry, dict):
        raise UserError(f"{where} must be a mapping with the fields {', '.join(_REQUIRED)} and its kind's fields")
    for key in ("name", "type"):
        if key not in entry:
            raise UserError(f"{where} is missing the field {key!r}; every task needs name, type, train_file, dev_file "
                            "(or source)")
    name, kind_name = (_TYPED[key].parse(entry[key], where) for key in ("name", "type"))
    where = f"{where} ({name})"
    if not _NAME.match(name):
        raise UserError(f"{where}: name may only contain letters, digits, '_' and '-'")
    if name.startswith("-"):
        raise UserError(f"{where}: name must not start with '-' (it reads as a flag); start with a letter or digit")
    if len(name) > MAX_NAME_LENGTH:
        raise UserError(f"{where}: name is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed")
    kind = KINDS.get(kind_name)
    if kind is None:
        raise UserError(f"{where}: type {kind_name!r} is not allowed; choose one of {', '.join(KINDS)}")
    if "source" in entry and ("train_file" in entry or "dev_file" in entry):
        raise UserError(f"{where}: give either 'source' or 'train_file'/'dev_file', not both")
    entry = _line_defaults(entry, kind_name, where)
    files = () if "source" in entry else ("train_file",) if "split" in entry else ("train_file", "dev_file")
    required = ["name", "type", *(f.name for f in kind.fields if f.required), *files]
    missing = [k for k in required if k not in entry]
    if missing:
        raise UserError(f"{where} is missing the field(s) {', '.join(missing)}; required: "
                        + ", ".join(required))
    own = {f.name: f for f in kind.fields}
    allowed = {*_REQUIRED, *_DECLARABLE, *own}
    extra = sorted(set(entry) - allowed)
    if extra:
        others = sorted({k for k in extra for other in KINDS.values() for f in other.fields if f.name == k})
        hint = f" ({', '.join(others)} belong(s) to another kind)" if others else ""
        raise UserError(
            f"{where}: field(s) {', '.join(extra)} are not allowed for a {kind_name} task{hint}; allowed: "
            + ", ".join(sorted(allowed))
        )
    file_fields = [k for k in ("encoding", "format", *_LINE_FIELDS, "split") if k in entry]
    if "source" in entry and file_fields:
        raise UserError(f"{where}: {', '.join(file_fields)} describe(s) files; a task with a 'source' takes none "
                        "(only header/column_names, for a folder of csv files)")
    options = {k: field.parse(entry[k], where) for k, field in own.items() if k in entry}
    typed = {k: field.parse(entry[k], where) for k, field in _TYPED.items() if k in entry}
    if "source" in entry and not typed.get("header", True) and not typed.get("column_names"):
        raise UserError(f"{where}: header: false needs column_names, the names of the source's csv columns")
    _check_override(name, typed.get("override", False), where)
    common: dict[str, Any] = {
        "main_metric": typed.get("main_metric", ""),
        **(_source(entry["source"], where, base) if "source" in entry else
           {"train_file": str(base / typed["train_file"]),
            "dev_file": str(base / typed["dev_file"]) if "dev_file" in typed else ""}),
        "test_file": str(base / typed["test_file"]) if typed.get("test_file") else "",
        **{k: typed[k] for k in ("header", "column_names", "encoding", "format", "in_average", "override")
           if k in typed},
        **{k: str(base / typed[k]) for k in _LINE_FIELDS[:3] if typed.get(k)},
        **_label_from(entry, options, where),
        **_split(entry, typed, where),
    }
    spec = TaskSpec(name=name, type=kind_name, options=options, **common)
    validate_task(spec, where)
    for file in (spec.train_file, spec.dev_file, spec.test_file):
        if file:
            spec.file_format(file)
    return spec


def _line_defaults(entry: dict[str, Any], kind_name: str, where: str) -> dict[str, Any]:
    """A task read one item per line (a labels file, or `label_from`) names its columns `text` and `label`
    unless it says otherwise; only classification and regression tasks read lines."""
    lines = [k for k in _LINE_FIELDS if k in entry]
    if not lines:
        return entry
    if kind_name not in ("classification", "regression"):
        raise UserError(f"{where}: {', '.join(lines)} read(s) one text per line, for classification and "
                        f"regression tasks; a {kind_name} task reads its files' columns")
    for key in _LINE_FIELDS[:3]:
        text = key.replace("_labels", "")
        if key in entry and text not in entry and not (text == "dev_file" and "split" in entry):
            raise UserError(f"{where}: {key} is the labels of {text}, which is missing; give both")
    if "label_from" in entry and any(k in entry for k in _LINE_FIELDS[:3]):
        raise UserError(f"{where}: take the labels either from labels files or from 'label_from', not both")
    return {"text_columns": ["text"], "label_column": "label", **entry}


def _label_from(entry: dict[str, Any], options: dict[str, Any], where: str) -> dict[str, Any]:
    """`label_from: {regex: ...}`: a regular expression each whole line must match, whose named groups are the
    task's columns (`text`, `label` unless `text_columns`/`label_column` say otherwise)."""
    if "label_from" not in entry:
        return {}
    value = entry["label_from"]
    if not isinstance(value, dict) or set(map(str, value)) != {"regex"} or not isinstance(value["regex"], str):
        raise UserError(f"{where}: label_from must be {{regex: '...'}}, a regular expression with named groups, "
                        r"e.g. {regex: '(?P<label>\w+):\S+ (?P<text>.*)'}")
    try:
        groups = set(re.compile(value["regex"]).groupindex)
    except re.error as err:
        raise UserError(f"{where}: label_from regex '{value['regex']}' is not a valid regular expression "
                        f"({err})") from None
    needed = [*options.get("text_columns", ("text",)), options.get("label_column", "label")]
    missing = [g for g in needed if g not in groups]
    if missing:
        raise UserError(f"{where}: label_from regex '{value['regex']}' has no named group(s) "
                        + ", ".join(f"(?P<{g}>...)" for g in missing) + "; it needs one per text column and label")
    return {"label_from": value["regex"]}


def _split(entry: dict[str, Any], typed: dict[str, Any], where: str) -> dict[str, Any]:
    """`split: {dev: 0.1, test: 0.1, seed: 42}`: dev and test drawn from train_file, as (dev, test, seed)."""
    if "split" not in entry:
        return {}
    value = entry["split"]
    usage = ("split takes {dev: fraction, test: fraction, seed: integer} (fractions above 0 whose sum is below 1; "
             "test optional, seed default 42)")
    if not isinstance(value, dict) or not set(map(str, value)) <= {"dev", "test", "seed"} or "dev" not in value:
        raise UserError(f"{where}: {usage}")
    dev, test, seed = value["dev"], value.get("test", 0), value.get("seed", 42)
    numbers = all(isinstance(f, int | float) and not isinstance(f, bool) for f in (dev, test))
    if not numbers or not isinstance(seed, int) or isinstance(seed, bool) or dev <= 0 or test < 0 or dev + test >= 1 \
            or ("test" in value and test <= 0):
        raise UserError(f"{where}: split {value} is not allowed; {usage}")
    if "dev_file" in entry or (test and "test_file" in entry):
        raise UserError(f"{where}: split draws dev{' and test' if test else ''} from train_file; leave out "
                        f"{'dev_file' if 'dev_file' in entry else 'test_file'}, or split")
    return {"split": (float(dev), float(test), seed), "dev_file": ""}


def _check_override(name: str, override: bool, where: str) -> None:
    """A declared task may take a built-in task's name only with `override: true` (and only then say it)."""
    builtin = name in BUILTIN_TASKS or name in DEMO_TASKS
    if builtin and not override:
        raise UserError(f"{where}: field 'name' {name!r} is a built-in task's name; rename the task, or set "
                        "'override: true' to replace the built-in task")
    if override and not builtin:
        raise UserError(f"{where}: field 'override' is true but there is no built-in task {name!r} to replace; "
                        f"built-in tasks: {', '.join([*BUILTIN_TASKS, *DEMO_TASKS])}")


def _source(source: Any, where: str, base: Path) -> dict[str, Any]:
    """`source: {dataset, config, train, dev, test}` as the spec's hub fields, with no files. A dataset that
    exists relative to the TASKS_FILE, or starts with '.' or '/', is a path from there; anything else (a hub
    id) goes to `datasets` as given."""
    if not isinstance(source, dict) or "dataset" not in source:
        raise UserError(f"{where}: 'source' must be a mapping with at least 'dataset' (a directory or a hub "
                        f"dataset id); its keys: {', '.join(_SOURCE_KEYS)}")
    extra = sorted(set(map(str, source)) - set(_SOURCE_KEYS))
    if extra:
        raise UserError(f"{where}: source key(s) {', '.join(extra)} are not allowed; allowed: "
                        + ", ".join(_SOURCE_KEYS))
    dataset = str(source["dataset"])
    local = base / dataset
    config = source.get("config")
    return {
        "hub_path": str(local) if local.exists() or dataset.startswith((".", "/")) else dataset,
        "hub_name": None if config is None else str(config),
        "hub_splits": (str(source.get("train", "train")), str(source.get("dev", "validation")),
                       str(source.get("test") or "")),
        "train_file": "", "dev_file": "",
    }


def validate_task(task: TaskSpec, where: str) -> None:
    """The kind's own checks, then the main metric against the kind's metrics."""
    task.kind.validate(task, where)
    allowed = task.kind.metrics_for(task)
    if task.main_metric and task.main_metric not in allowed:
        raise UserError(
            f"{where}: main_metric {task.main_metric!r} is not a metric of this {task.type} task; choose one of "
            + ", ".join(allowed)
        )
    if not task.higher_is_better:  # eval_average and model selection take higher as better
        better = [m for m in allowed if task.kind.metrics[m]]
        raise UserError(f"{where}: main_metric {task.main_metric!r} is lower-is-better; model selection needs a "
                        f"higher-is-better one: {', '.join(better)}")
    try:
        "".encode(task.encoding)
    except LookupError:
        raise UserError(f"{where}: encoding {task.encoding!r} is unknown; use e.g. utf-8, latin-1, cp1252") from None


def resolve_tasks(
    names: tuple[str, ...] | None, tasks_file: str | None, task_weights: dict[str, float] | None = None
) -> list[TaskSpec]:
    """Look up every name in TASKS among the built-in tasks and those of TASKS_FILE.

    Without TASKS: every task TASKS_FILE declares, or the offline demo tasks when there is no file.
    """
    available = {**BUILTIN_TASKS, **DEMO_TASKS}
    declared = load_tasks_file(tasks_file) if tasks_file else {}
    available.update(declared)
    if names is None:
        names = tuple(declared or DEMO_TASKS)
    if len(set(names)) != len(names):
        raise UserError(f"TASKS lists a task twice: {','.join(names)}")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UserError(
            f"unknown task(s) {', '.join(unknown)} in TASKS; available: {', '.join(sorted(available))}"
            + ("" if tasks_file else " (declare your own in TASKS_FILE)")
        )
    for name in names:
        validate_task(available[name], f"task {name!r}")
    unweighted = sorted(set(task_weights or {}) - set(names))
    if unweighted:
        raise UserError(f"TASK_WEIGHTS names {', '.join(unweighted)}, which is not in TASKS ({', '.join(names)})")
    if task_weights and all(task_weights.get(n, 1.0) == 0 for n in names):
        raise UserError(f"TASK_WEIGHTS gives every task weight 0 ({', '.join(names)}): nothing would be trained; "
                        "give at least one task a weight > 0")
    return [available[n] for n in names]


def describe_choice(tasks: list[TaskSpec], names: tuple[str, ...] | None, tasks_file: str | None) -> str:
    """The first log line of a run: which tasks, and why those."""
    listed = ", ".join(f"{t.name} ({t.type})" for t in tasks)
    if names is not None:
        return f"training {len(tasks)} task(s) from TASKS: {listed}"
    if tasks_file:
        return f"training every task declared in TASKS_FILE {tasks_file} (TASKS is not set): {listed}"
    return f"training the offline demo tasks (neither TASKS nor TASKS_FILE is set): {listed}"


COMMON_HELP = {
    "name": "letters, digits, '_' and '-'",
    "type": "the task kind: " + ", ".join(KINDS),
    "train_file": "path, relative to the TASKS_FILE",
    "dev_file": "path, relative to the TASKS_FILE",
    "source": "instead of files, any datasets.load_dataset source: {dataset: a directory (relative to the "
              "TASKS_FILE) or hub id, config, train, dev, test: split names (default train, validation, none)}",
    "test_file": "optional path, relative to the TASKS_FILE: the split `evaluate --split=test` scores (labels "
                 "optional for predict-file)",
    "main_metric": "the metric for eval_average and model selection (default: the kind's first)",
    "in_average": "true/false: count the task in eval_average (default: true, false for language modelling)",
    "override": "true/false: this task replaces the built-in task of the same name (default false: a built-in "
                "task's name is refused)",
    "header": "csv/tsv: the first line is a header (default true)",
    "column_names": "csv/tsv without a header: the column names",
    "encoding": "the files' text encoding (default utf-8)",
    "format": "the files' format when the suffix doesn't say it (csv, tsv, jsonl, txt, conll)",
    "train_labels_file": "classification/regression: a file of labels parallel to train_file (which then holds "
                         "one text per line); dev_labels_file, test_labels_file likewise",
    "dev_labels_file": "the labels of dev_file, one per line",
    "test_labels_file": "the labels of test_file, one per line",
    "label_from": "{regex: '...'}: each line of the files is one row, cut by the regex's named groups (text, "
                  "label), e.g. TREC's {regex: '(?P<label>\\w+):\\S+ (?P<text>.*)'}",
    "split": "{dev: 0.1, test: 0.1, seed: 42}: draw dev (and test) from train_file, stratified by label",
}


# The common fields' types, checked as the kinds' fields are (`header: ture` is refused, naming the field).
_TYPED = {name: Field(name, COMMON_HELP[name], default=default, list_of_str=isinstance(default, tuple),
                      unique=isinstance(default, tuple), value_type=bool if name == "in_average" else None)
          for name, default in (("name", ""), ("type", ""), ("train_file", ""), ("dev_file", ""), ("test_file", ""),
                                ("main_metric", ""), ("in_average", None), ("override", False), ("header", True),
                                ("column_names", ()), ("encoding", "utf-8"), ("format", ""),
                                *((k, "") for k in _LINE_FIELDS[:3]))}


def describe_tasks() -> str:
    """The text of `python -m trainer tasks`: built-in tasks, then each kind's fields."""
    lines = ["Built-in tasks (TASKS=name; DATA_DIR=dir reads dir/<name>/, else the Hugging Face hub):"]
    for task in BUILTIN_TASKS.values():
        lines.append(f"  {task.name:<16} {task.type:<22} main metric {task.metric:<9} hub {task.hub_path}"
                     + (f" ({task.hub_name})" if task.hub_name else ""))
    lines.append("Offline demo tasks: " + ", ".join(DEMO_TASKS))
    lines.append("")
    lines.append("Fields every task in TASKS_FILE takes:")
    lines += [f"  {name:<16} {help_}" for name, help_ in COMMON_HELP.items()]
    for kind in KINDS.values():
        lines.append("")
        lines.append(f"type: {kind.name} - {kind.summary}")
        lines.append(f"  files: {', '.join('.' + f for f in kind.file_formats)}; metrics: "
                     + ", ".join(f"{m} ({'higher' if up else 'lower'} is better)" for m, up in kind.metrics.items()))
        for f in kind.fields:
            default = "required" if f.required else f"default {f.default!r}"
            lines.append(f"  {f.name:<16} {f.help} ({default})")
    return "\n".join(lines)
