"""What a task kind is: the one place that knows how a type of task reads, tokenises, trains and scores.

A kind is one module with one `TaskKind` subclass plus one line in `trainer.tasks.kinds.KINDS`. Everything
else (the sampler, the Trainer hooks, checkpoints, GCS, export) only talks to this interface.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import pyarrow as pa
import torch

from trainer.config.env import parse_bool, parse_int
from trainer.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from trainer.tasks.spec import TaskSpec

IGNORE_INDEX = -100  # labels (and reduced predictions) at this value are not scored


@dataclass(frozen=True)
class Field:
    """One TASKS_FILE field (of a kind, or every task's): its value's type follows from `default`, `list_of_str`
    and `value_type`, and `parse` refuses anything else with one line naming the field."""

    name: str
    help: str
    default: Any = None
    required: bool = False
    list_of_str: bool = False  # normalised to a tuple of strings
    unique: bool = False  # a list whose items must differ (labels)
    value_type: type | None = None  # when `default` doesn't say it (a None default)

    @property
    def value_kind(self) -> type:
        """bool, str, int, or tuple (of strings with `list_of_str`, else of integers)."""
        if self.value_type is not None:
            return self.value_type
        if self.list_of_str or isinstance(self.default, tuple):
            return tuple
        if isinstance(self.default, (bool, int)):
            return type(self.default)
        return str  # column names and other text: `label_column: 1` means the column named "1"

    def parse(self, value: Any, where: str = "") -> Any:
        """The value as the task holds it; a value of another type is an error naming `where` and the field."""
        prefix = f"{where}: " if where else ""
        if value is None and self.default is None and not self.required:
            return None  # unset, as a saved task (`to_dict`) or an empty YAML value writes it: the field's default
        kind = self.value_kind
        if kind is bool:
            try:
                return parse_bool(self.name, value)
            except UserError as err:
                raise UserError(f"{prefix}{err}") from None
        if kind is int:
            try:
                return parse_int(self.name, value)
            except UserError as err:
                raise UserError(f"{prefix}{err}") from None
        if kind is str:
            if not _scalar(value):
                raise UserError(f"{prefix}field '{self.name}' takes one value (a text), not {_describe(value)}")
            return str(value)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not all(_scalar(v) for v in items):
            raise UserError(f"{prefix}field '{self.name}' takes a list of "
                            f"{'texts' if self.list_of_str else 'integers'}, not {_describe(value)}")
        if self.list_of_str:
            parsed: tuple[Any, ...] = tuple(str(v) for v in items)
        else:
            try:
                parsed = tuple(parse_int(self.name, v) for v in items)
            except UserError as err:
                raise UserError(f"{prefix}{err}") from None
        if self.unique and len(set(parsed)) != len(parsed):
            twice = sorted({v for v in parsed if parsed.count(v) > 1})
            raise UserError(f"{prefix}'{self.name}' lists a value twice ({', '.join(map(str, twice))}); each "
                            "must be different")
        return parsed


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    what = ("mapping" if isinstance(value, dict) else "list" if isinstance(value, (list, tuple))
            else type(value).__name__)
    return f"a {what} ({value!r:.40})"


class TaskKind:
    """The interface every kind implements; the defaults suit the sentence-level kinds."""

    name: str = ""
    summary: str = ""
    fields: tuple[Field, ...] = ()
    metrics: dict[str, bool] = {}  # metric name -> higher is better
    auxiliary: bool = False  # an objective beside the real tasks: kept out of eval_average by default
    file_formats: tuple[str, ...] = ("csv", "tsv", "jsonl")
    pipeline: str = ""  # the `transformers.pipeline` task its export works with
    prediction_columns: tuple[str, ...] = ("prediction",)  # what predict-file writes after `index`
    no_packing: str = ""  # why PACKING=1 can't pack this kind's batches (empty: it can, see trainer.data.packing)
    takes_choices: bool = False  # `predict --choices`: candidate answers per input (multiple choice)
    takes_context: bool = False  # `predict --context`: the passage a question is asked about (question answering)
    map_batch_rows: int = 1000  # rows per `datasets.map` batch when tokenising (datasets' default)

    def takes_text_pair(self, task: TaskSpec) -> bool:
        """Whether `predict --text_pair` means anything for this task (sentence-pair tasks only)."""
        return False

    # -- declaration --------------------------------------------------------------------

    def validate(self, task: TaskSpec, where: str) -> None:
        """Refuse field combinations the kind can't train; `where` names the declaration."""

    def default_metric(self, task: TaskSpec) -> str:
        return next(iter(self.metrics))

    def metrics_for(self, task: TaskSpec) -> list[str]:
        """The metrics this task reports (a kind may report fewer for some tasks)."""
        return list(self.metrics)

    def num_labels(self, task: TaskSpec) -> int:
        return 1

    # -- data ---------------------------------------------------------------------------

    def features(self, task: TaskSpec) -> datasets.Features:
        """The normalised columns every reader produces for this kind."""
        raise NotImplementedError

    def read_file(self, task: TaskSpec, path: str, fmt: str, encoding: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Rows of a file in a format only this kind reads (`txt`, `conll`): `(where, row)` pairs."""
        raise NotImplementedError

    def has_label(self, task: TaskSpec, row: dict[str, Any]) -> bool:
        """Whether a raw row of a local file carries its label (test files may not: GLUE, CommonsenseQA)."""
        return True

    def hub_has_label(self, task: TaskSpec, row: dict[str, Any]) -> bool:
        """Whether a hub row carries its label (GLUE marks a withheld label -1, CommonsenseQA leaves it empty)."""
        return self.has_label(task, row)

    def normalise(self, task: TaskSpec, row: dict[str, Any], where: str, labelled: bool = True) -> dict[str, Any]:
        """One row of a local file -> the kind's normalised columns. Errors name `where`.

        `labelled=False` (rows only predicted): the label is not read; a placeholder stands in for it.
        """
        raise NotImplementedError

    def normalise_arrow(self, task: TaskSpec, table: pa.Table) -> pa.Table | None:
        """`normalise` for a whole batch of a csv/tsv/jsonl file's labelled rows, column-wise (with
        `trainer.tasks.kinds.columns`): the normalised columns, or None where any row needs `normalise` (a bad row
        or a value Arrow can't convert the same way); the reader then goes row by row and names that row.
        The default: always row by row."""
        return None

    def normalise_hub(self, task: TaskSpec, row: dict[str, Any], where: str) -> dict[str, Any] | None:
        """One row of a hub dataset -> the normalised columns (built-in tasks); None skips the row."""
        return self.normalise(task, row, where)

    def source_options(self, task: TaskSpec, features: datasets.Features, where: str) -> dict[str, Any]:
        """Options a declared source's features supply (a ClassLabel's names as `labels`); a declared value
        must agree with them. Errors name `where`."""
        return {}

    def check_split(self, task: TaskSpec, columns: dict[str, list[Any]], where: str) -> None:
        """Refuse what no single row shows (a kind may need rows to agree); errors name `where`."""

    def check_lengths(self, task: TaskSpec, rows: Any, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        """Refuse rows that MAX_SEQ_LENGTH can't hold at all (truncating is not refusing), once the tokenizer is
        loaded and before anything is written; `rows` is a split's `TaskData`. The default: every row can be
        truncated to fit."""

    def tokenize(
        self, batch: dict[str, list[Any]], task: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list[Any]]:
        """Tokenise a batch of normalised rows, without padding; adds `length` and (unless `collate` derives
        them) `labels`."""
        raise NotImplementedError

    def tokenize_rows(
        self, batch: dict[str, list[Any]], indices: list[int], task: TaskSpec, tokenizer: PreTrainedTokenizerBase,
        max_length: int,
    ) -> dict[str, list[Any]]:
        """`tokenize` as a split's `datasets.map` calls it, with the rows' positions in the split: a kind may return
        any number of features per row (question answering: one per window of a long context), and a feature can
        name its row by that position, so `split_metrics` can put a row's features back together. The default:
        `tokenize`, one feature per row."""
        return self.tokenize(batch, task, tokenizer, max_length)

    def collate(
        self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None
    ) -> dict[str, Any]:
        """Pad one batch to its longest sequence and make tensors (the default: one sequence per example)."""
        batch = pad_inputs(features, tokenizer, pad_to_multiple_of)
        labels = [f["labels"] for f in features]
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
        return batch

    def encode(
        self, task: TaskSpec, columns: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, Any]:
        """Normalised rows -> one collated batch, as training sees it (for `predict`)."""
        encoded = self.tokenize(columns, task, tokenizer, max_length)
        size = len(encoded["input_ids"])
        return self.collate([{k: v[i] for k, v in encoded.items()} for i in range(size)], tokenizer, None)

    def prepare_inputs(
        self, batch: dict[str, Any], tokenizer: PreTrainedTokenizerBase, generator: torch.Generator
    ) -> dict[str, Any]:
        """A last step on a collated batch that needs fresh randomness (masking); `generator` is seeded by
        the Trainer from (seed, step, rank), so a resumed run sees the same batches."""
        return batch

    # -- model --------------------------------------------------------------------------

    def model_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A collated batch's `labels` as the stock task model takes them (the default: as they are). The batch keeps
        one `labels` entry, which the Trainer gathers for `split_metrics`; a model that names its targets otherwise
        (question answering: `start_positions`, `end_positions`) gets them here."""
        return inputs

    def model_class(self) -> type:
        """The `AutoModelFor...` class of the task's model."""
        raise NotImplementedError

    def check_model(self, task: TaskSpec, config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        """Refuse a base model or tokenizer the kind can't work with, before anything is written."""
        auto = self.model_class()
        if type(config) not in auto._model_mapping:
            raise UserError(
                f"task {task.name!r} ({self.name}) can't run on a {config.model_type} model: Transformers has no "
                f"{auto.__name__} for it"
            )

    def config(self, encoder_config: PreTrainedConfig, task: TaskSpec) -> PreTrainedConfig:
        """The encoder's config plus what this task's model needs (labels, problem type)."""
        config = encoder_config.__class__.from_dict(encoder_config.to_dict())
        config.finetuning_task = task.name
        return config

    # -- metrics ------------------------------------------------------------------------

    def reduce_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Shrink a batch's logits before the Trainer gathers them (token-level kinds keep no vocab logits)."""
        return logits[0] if isinstance(logits, tuple) else logits

    def eval_predictions(self, task: TaskSpec, model: PreTrainedModel, inputs: dict[str, Any],
                         tokenizer: PreTrainedTokenizerBase) -> torch.Tensor | None:
        """What evaluation keeps of a dev batch where one forward's logits are not the prediction (seq2seq
        generates): a (batch, ...) tensor, which the Trainer pads with -100 across batches and ranks like logits.
        None (the default): the forward's logits, shrunk by `reduce_logits`."""
        return None

    def decode_predictions(self, task: TaskSpec, predictions: Any, labels: np.ndarray,
                           tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any]:
        """The gathered predictions and labels as `compute_metrics` scores them (seq2seq: token ids -> texts);
        the default: as they are."""
        return predictions, labels

    def compute_metrics(self, task: TaskSpec, predictions: Any, labels: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def split_metrics(self, task: TaskSpec, predictions: Any, labels: np.ndarray, features: datasets.Dataset
                      ) -> dict[str, float]:
        """The metrics of a whole dev split: `predictions` and `labels` are one row per feature, in the order of
        `features` (the tokenised split). A kind whose rows became several features (`tokenize_rows`) reads them
        there to score each row once. The default: `compute_metrics`, one feature per row."""
        return self.compute_metrics(task, predictions, labels)

    def token_lengths(self, task: TaskSpec, columns: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase
                      ) -> np.ndarray:
        """Untruncated token lengths of a split's examples, tokenised in memory (for `check`)."""
        size = len(next(iter(columns.values())))
        lengths: list[int] = []
        for start in range(0, size, 1000):
            batch = {k: v[start:start + 1000] for k, v in columns.items()}
            lengths += self.tokenize(batch, task, tokenizer, max_length=10**9)["length"]
        return np.asarray(lengths)

    def length_note(self, task: TaskSpec, lengths: np.ndarray, max_length: int) -> str:
        """What MAX_SEQ_LENGTH does to those lengths (for `check`)."""
        return f"truncated at {max_length}: {np.mean(lengths > max_length):.1%}"

    def label_summary(self, task: TaskSpec, columns: dict[str, list[Any]]) -> str:
        """One line about a split's labels for `python -m trainer check` (the default: counts per label)."""
        names = task.labels if "labels" in task.options and task.labels else None
        counts: dict[Any, int] = {}
        for label in columns.get("label", []):
            counts[label] = counts.get(label, 0) + 1
        return ", ".join(f"{names[k] if names else k}: {v}" for k, v in sorted(counts.items()))

    def chance_level(self, task: TaskSpec) -> float:
        """The main metric of an uninformed model, for "well above chance" checks."""
        return 0.0

    # -- inference ----------------------------------------------------------------------

    def predict(
        self,
        task: TaskSpec,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        inputs: list[dict[str, Any]],
        max_length: int,
    ) -> list[dict[str, Any]]:
        """One JSON-able result per input (`{"text": ..., "text_pair": ..., "choices": ...}`)."""
        raise NotImplementedError

    def predict_rows(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        columns: dict[str, list[Any]], max_length: int,
    ) -> list[tuple[str, ...]]:
        """For predict-file: the `prediction_columns` of each normalised row of one batch."""
        raise NotImplementedError


# ---- helpers the kinds share -------------------------------------------------------------------


def lookup(row: dict[str, Any], column: str, where: str) -> Any:
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


def has_column(row: dict[str, Any], column: str) -> bool:
    """Whether `lookup` finds the column in the row."""
    try:
        lookup(row, column, "")
    except UserError:
        return False
    return True


def label_index(task: TaskSpec, raw: Any, where: str, what: str = "label",
                values: tuple[str, ...] | None = None) -> int:
    """The index of a label in `values` (default `task.labels`), or a one-line error naming the allowed ones.

    Integer labels 0..n-1 are accepted too, as `datasets`' ClassLabel stores them.
    """
    values = task.labels if values is None else values
    text = str(raw).strip()
    if text in values:
        return values.index(text)
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(values):
        return raw
    raise UserError(f"{where}: {what} {text!r} of task {task.name!r} is not in its label list ({', '.join(values)})")


def class_label_names(task: TaskSpec, feature: Any, where: str, sequence: bool = False) -> tuple[str, ...] | None:
    """The names of a `datasets.ClassLabel` feature (of a list of them with `sequence`: token tags), None for
    any other feature; declared `labels` must be the same names in the same order."""
    if sequence:
        feature = getattr(feature, "feature", None)  # List(ClassLabel) -> ClassLabel
    if not isinstance(feature, datasets.ClassLabel):
        return None
    names = tuple(feature.names)
    if task.labels and task.labels != names:
        raise UserError(f"{where}: 'labels' ({', '.join(task.labels)}) differ from the source's ClassLabel names "
                        f"({', '.join(names)}); leave 'labels' out to take those")
    return names


def pad_inputs(
    features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None
) -> dict[str, torch.Tensor]:
    """The model inputs of a batch (input_ids, attention_mask, ...) padded to its longest sequence."""
    keys = [k for k in features[0] if k in tokenizer.model_input_names]
    return dict(tokenizer.pad([{k: f[k] for k in keys} for f in features], padding=True,
                              pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt"))


def batch_logits(model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
    """Run a stock task model on a collated batch without labels; float32 logits."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits.float()


def pad_sequences(rows: list[list[int]], value: int, length: int, side: str = "right") -> torch.Tensor:
    """Pad lists of ids to `length` on the tokenizer's padding side."""
    if side == "left":
        return torch.tensor([[value] * (length - len(r)) + list(r) for r in rows], dtype=torch.long)
    return torch.tensor([list(r) + [value] * (length - len(r)) for r in rows], dtype=torch.long)
