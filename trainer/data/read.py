"""Reading a task's split: the demo generator, DATA_DIR, a TASKS_FILE path, a declared `datasets` source or the hub.

Reading is the same for every kind: a file (or hub split) gives rows, and the task's kind turns each row into its
normalised columns (`trainer.tasks.kinds`). Local files are read by `trainer.data.arrow_split` (normalised rows,
in Arrow) and `trainer.data.file_rows` (raw rows). Every problem names the file and line.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.config.settings import Settings
from trainer.data.arrow_split import UnlabelledSplit, read_local_split
from trainer.errors import UserError, first_line
from trainer.tasks import demo
from trainer.tasks.declare import validate_task
from trainer.tasks.spec import ALL_SPLITS, SPLITS, TaskData, TaskSpec

# ---- the Hugging Face hub and declared datasets sources --------------------------------


def load_hub_split(task: TaskSpec, split: str) -> Any:
    """One split of a task's `datasets` source (the hub, or a declared `source:`), as a `datasets.Dataset`."""
    import datasets

    index = ALL_SPLITS.index(split)
    hub_split = task.hub_splits[index] if index < len(task.hub_splits) else ""
    if not hub_split:
        raise UserError(f"task {task.name!r} has no {split} split on the hub ({task.hub_path})")
    try:
        return datasets.load_dataset(task.hub_path, task.hub_name, split=hub_split, **_csv_options(task))
    except Exception as err:  # network, auth, missing dataset or split: all mean "can't get it"
        reason = first_line(err)
        if task.declared_source:
            config = f" (config {task.hub_name!r})" if task.hub_name else ""
            raise UserError(
                f"task {task.name!r}: could not load split {hub_split!r} of the dataset {task.hub_path!r}{config} "
                f"({reason}); source 'dataset' takes a directory relative to the TASKS_FILE or a hub dataset id"
            ) from None
        raise UserError(
            f"task {task.name!r}: could not load {task.hub_path} from the Hugging Face hub ({reason}); "
            "set DATA_DIR to read local files instead"
        ) from None


def _csv_options(task: TaskSpec) -> dict[str, Any]:
    """A declared source of csv files with `column_names`: the csv builder's `names` (its `column_names` and
    `header=None` are lost on the folder's own config in datasets 5.2); its default header "infer" then reads
    the first line as data (`header: false`), and `header: 0` skips a header line the names replace."""
    if not task.declared_source or not task.column_names:
        return {}
    return {"names": list(task.column_names), **({"header": 0} if task.header else {})}


def with_source_features(task: TaskSpec, features: Any) -> TaskSpec:
    """A declared source's task completed by its split's features (a ClassLabel's names as `labels`), validated."""
    where = f"task {task.name!r} (dataset {task.hub_path})"
    task = dataclasses.replace(task, options={**task.options, **task.kind.source_options(task, features, where)})
    validate_task(task, where)
    return task


def resolve_source(task: TaskSpec) -> TaskSpec:
    """The spec as the model needs it: a declared source's train split completes it; other tasks as they are."""
    if not task.declared_source:
        return task
    return with_source_features(task, load_hub_split(task, "train").features)


def read_hub_split(task: TaskSpec, split: str) -> TaskData:
    """Load a split from the task's `datasets` source and normalise it."""
    rows = load_hub_split(task, split)
    if task.declared_source:
        task = with_source_features(task, rows.features)
    hub_split = task.hub_splits[ALL_SPLITS.index(split)]
    if len(rows) and not task.kind.hub_has_label(task.with_hub_options(), rows[0]):
        raise UnlabelledSplit(task, split, f"{task.hub_path} {hub_split}")
    return normalise_hub_rows(task, rows)


def normalise_hub_rows(task: TaskSpec, rows: Any) -> TaskData:
    """Convert hub rows (GLUE: integer labels in our label order) to `TaskData`."""
    hub_task = task.with_hub_options()
    data = TaskData()
    for i, row in enumerate(rows):
        normalised = task.kind.normalise_hub(hub_task, row, f"{task.hub_path}[{i}]")
        if normalised is not None:  # None: a row the kind skips (blank lines of raw text)
            data.append(normalised)
    task.kind.check_split(task, data.columns, task.hub_path)
    return data


def split_file(task: TaskSpec, split: str) -> str:
    """The task's local file of `split` ("" when it declares none)."""
    return {"train": task.train_file, "dev": task.dev_file, "test": task.test_file}[split]


def read_split(task: TaskSpec, split: str, data_dir: str | None) -> TaskData:
    """Labelled rows of one split (train, dev or test), from the demo generator, DATA_DIR, a TASKS_FILE path, a
    declared source or the hub. A split without labels raises `UnlabelledSplit`."""
    if task.demo:
        if split not in SPLITS:
            raise UserError(f"task {task.name!r} is an offline demo task: it has only the splits {', '.join(SPLITS)}")
        columns = demo.demo_columns(task.name, split)
        return TaskData({k: columns[k] for k in task.kind.features(task)})
    if task.declared_source or (task.hub_path and not data_dir):
        return read_hub_split(task, split)
    if task.split and task.train_file and (split == "dev" or (split == "test" and task.split[1])
                                           or split == "train"):
        return carve_split(task, read_local_split(task, task.train_file, "train"), split)
    file = split_file(task, split)
    if not file:
        hint = "the hub has one: leave DATA_DIR unset" if task.hub_path else "declare 'test_file:' for it in TASKS_FILE"
        raise UserError(f"task {task.name!r} has no local {split} split; {hint}")
    if task.hub_path:  # built-in, from DATA_DIR
        return read_local_split(task, str(Path(data_dir) / task.name / file), split)
    return read_local_split(task, file, split)


def carve_split(task: TaskSpec, rows: TaskData, split: str) -> TaskData:
    """One of train/dev/test drawn from the rows of train_file by `split: {dev, test, seed}`: the same rows
    for the same file and seed every time, stratified by label for classification (`datasets`'
    `train_test_split`, which stratifies on a ClassLabel column)."""

    dataset = rows.dataset if rows.dataset is not None else rows.as_dataset(task.kind.features(task))
    with quiet_datasets_bars():  # a cast and a selection of a few rows: no bars
        return TaskData(dataset=_carve(task, dataset, split).flatten_indices().cast(dataset.features))


@contextlib.contextmanager
def quiet_datasets_bars(when: bool = True) -> Iterator[None]:
    """No `datasets` progress bars inside, `when` so (and as they were after)."""
    import datasets

    quiet = when and not datasets.utils.are_progress_bars_disabled()
    if quiet:
        datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if quiet:
            datasets.utils.enable_progress_bars()


def _carve(task: TaskSpec, dataset: Any, split: str) -> Any:
    import datasets

    dev, test, seed = task.split
    stratify = "label" if task.type == "classification" else None
    if stratify:
        dataset = dataset.cast_column("label", datasets.ClassLabel(num_classes=task.num_labels))
    try:
        held, tests = round(len(dataset) * (dev + test)), round(len(dataset) * test)  # rows, not fractions: exact
        parts = dataset.train_test_split(test_size=held, seed=seed, stratify_by_column=stratify)
        if split == "train":
            return parts["train"]
        if not test:
            return parts["test"]
        rest = parts["test"].train_test_split(test_size=tests, seed=seed, stratify_by_column=stratify)
    except ValueError as err:
        raise UserError(f"task {task.name!r}: split {{dev: {dev}, test: {test}}} of {task.train_file} "
                        f"({len(dataset)} rows) is not possible: {err}; use more rows or larger fractions") from None
    return rest["train" if split == "dev" else "test"]


def read_all_splits(
    tasks: list[TaskSpec], settings: Settings
) -> tuple[list[TaskSpec], dict[str, dict[str, TaskData]]]:
    """Read and validate every split before anything is written to disk, then apply the caps.

    Returns the tasks as their data completes them (a declared source's ClassLabel names become its
    `labels`, which the model's heads need) and their rows.
    """
    tasks = [resolve_source(t) for t in tasks]
    rows = {t.name: {split: read_split(t, split, settings.data_dir) for split in SPLITS} for t in tasks}
    for splits in rows.values():
        splits["train"] = splits["train"].limit(settings.max_train_samples, seed=settings.seed)
        splits["dev"] = splits["dev"].limit(settings.max_eval_samples)
    return tasks, rows
