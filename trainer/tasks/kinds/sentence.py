"""What classification and regression share: one sentence or a pair in, one prediction per example out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import datasets
import pyarrow as pa
from transformers import AutoModelForSequenceClassification

from trainer.errors import UserError
from trainer.tasks.encode import encode_texts
from trainer.tasks.kinds import columns
from trainer.tasks.kinds.base import Field, TaskKind, batch_logits, has_column, lookup

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from trainer.tasks.spec import TaskSpec

TEXT_COLUMNS = Field("text_columns", "one column (a sentence) or two (a sentence pair)", required=True,
                     list_of_str=True)
LABEL_COLUMN = Field("label_column", "the column holding the label", required=True)


class SentenceKind(TaskKind):
    """A sequence-level head (`AutoModelForSequenceClassification`) over one text or a pair."""

    label_feature = datasets.Value("int64")
    dummy_label: Any = 0  # the label given to rows that are only predicted

    def validate(self, task: TaskSpec, where: str) -> None:
        if not 1 <= len(task.text_columns) <= 2:
            raise UserError(f"{where}: 'text_columns' takes one or two columns")

    def features(self, task: TaskSpec) -> datasets.Features:
        return datasets.Features(
            {"text_a": datasets.Value("string"), "text_b": datasets.Value("string"), "label": self.label_feature}
        )

    def label(self, task: TaskSpec, raw: Any, where: str) -> Any:
        raise NotImplementedError

    def has_label(self, task: TaskSpec, row: dict[str, Any]) -> bool:
        return has_column(row, task.label_column)

    def hub_has_label(self, task: TaskSpec, row: dict[str, Any]) -> bool:
        return row.get(task.label_column) not in (None, "", -1)

    def normalise(self, task: TaskSpec, row: dict[str, Any], where: str, labelled: bool = True) -> dict[str, Any]:
        texts = [str(lookup(row, c, where)) for c in task.text_columns]
        label = self.label(task, lookup(row, task.label_column, where), where) if labelled else self.dummy_label
        return {"text_a": texts[0], "text_b": texts[1] if len(texts) > 1 else "", "label": label}

    def label_arrow(self, task: TaskSpec, values: columns.Column | None) -> columns.Column | None:
        """`label` for a whole column; None if any row needs `label` (to name it)."""
        return None

    def normalise_arrow(self, task: TaskSpec, table: pa.Table) -> pa.Table | None:
        texts = [columns.text(columns.find(table, c)) for c in task.text_columns]
        label = self.label_arrow(task, columns.find(table, task.label_column))
        if label is None or any(t is None for t in texts):
            return None
        second = texts[1] if len(texts) > 1 else pa.nulls(table.num_rows, pa.string()).fill_null("")
        return pa.table({"text_a": texts[0], "text_b": second, "label": label})

    def is_pair(self, task: TaskSpec, batch: dict[str, list[Any]]) -> bool:
        return len(task.text_columns) == 2

    def tokenize(
        self, batch: dict[str, list[Any]], task: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list[Any]]:
        pairs = batch["text_b"] if self.is_pair(task, batch) else None
        out = encode_texts(tokenizer, batch["text_a"], pairs, max_length)
        out["length"] = [len(ids) for ids in out["input_ids"]]
        out["labels"] = batch["label"]
        return out

    def model_class(self) -> type:
        return AutoModelForSequenceClassification

    def rows_for_prediction(self, task: TaskSpec, inputs: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return {"text_a": [i["text"] for i in inputs], "text_b": [i.get("text_pair") or "" for i in inputs],
                "label": [self.dummy_label] * len(inputs)}

    def takes_text_pair(self, task: TaskSpec) -> bool:
        return len(task.text_columns) == 2

    def predict(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        inputs: list[dict[str, Any]], max_length: int,
    ) -> list[dict[str, Any]]:
        if len(task.text_columns) == 2 and not all(i.get("text_pair") for i in inputs):
            raise UserError(f"task {task.name!r} takes sentence pairs: give --text_pair (or JSON lines with "
                            "\"text\" and \"text_pair\" on stdin)")
        logits = batch_logits(model, self.encode(task, self.rows_for_prediction(task, inputs), tokenizer, max_length))
        return [self.format_prediction(task, row) for row in logits]

    def format_prediction(self, task: TaskSpec, logits: Any) -> dict[str, Any]:
        raise NotImplementedError

    def predict_rows(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        columns: dict[str, list[Any]], max_length: int,
    ) -> list[tuple[str, ...]]:
        logits = batch_logits(model, self.encode(task, columns, tokenizer, max_length))
        return [self.prediction_cells(task, row) for row in logits]

    def prediction_cells(self, task: TaskSpec, logits: Any) -> tuple[str, ...]:
        """One example's logits -> its `prediction_columns`."""
        raise NotImplementedError

    def config(self, encoder_config: PreTrainedConfig, task: TaskSpec) -> PreTrainedConfig:
        config = super().config(encoder_config, task)
        config.num_labels = task.num_labels
        return config
