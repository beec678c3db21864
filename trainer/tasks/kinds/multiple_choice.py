"""`multiple_choice`: a question and N candidate answers, one of them right (CommonsenseQA)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from transformers import AutoModelForMultipleChoice

from trainer.errors import UserError
from trainer.tasks.encode import encode_texts
from trainer.tasks.kinds import columns
from trainer.tasks.kinds.base import Field, TaskKind, batch_logits, has_column, label_index, lookup

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from trainer.tasks.spec import TaskSpec


class MultipleChoice(TaskKind):
    name = "multiple_choice"
    summary = "a question and N candidate answers; the label picks one"
    fields = (
        Field("text_columns", "one column: the question", required=True, list_of_str=True),
        Field("choice_columns", "the candidate answers' columns (at least two)", list_of_str=True, default=()),
        Field("choices_column", "or: one column holding the list of candidates", default=""),
        Field("label_column", "the column holding the answer", required=True),
        Field("labels", "answer names in choice order (e.g. A..E); empty: the answer is a choice index",
              list_of_str=True, unique=True, default=()),
    )
    metrics = {"accuracy": True}
    takes_choices = True
    pipeline = ""  # Transformers has no multiple-choice pipeline
    prediction_columns = ("prediction", "probability")

    def validate(self, task: TaskSpec, where: str) -> None:
        if len(task.text_columns) != 1:
            raise UserError(f"{where}: 'text_columns' takes one column (the question) for multiple_choice")
        if bool(task.choice_columns) == bool(task.choices_column):
            raise UserError(
                f"{where}: a multiple_choice task needs 'choice_columns' (at least two) or 'choices_column'"
            )
        if task.choice_columns and len(task.choice_columns) < 2:
            raise UserError(f"{where}: a multiple_choice task needs 'choice_columns' with at least two columns")

    def features(self, task: TaskSpec) -> datasets.Features:
        return datasets.Features({"text_a": datasets.Value("string"),
                                  "choices": datasets.Sequence(datasets.Value("string")),
                                  "label": datasets.Value("int64")})

    def has_label(self, task: TaskSpec, row: dict[str, Any]) -> bool:
        return has_column(row, task.label_column)

    def hub_has_label(self, task: TaskSpec, row: dict[str, Any]) -> bool:
        return row.get(task.label_column) not in (None, "", -1)

    def normalise(self, task: TaskSpec, row: dict[str, Any], where: str, labelled: bool = True) -> dict[str, Any]:
        if task.choices_column:
            choices = [str(c) for c in lookup(row, task.choices_column, where)]
        else:
            choices = [str(lookup(row, c, where)) for c in task.choice_columns]
        if len(choices) < 2:
            raise UserError(f"{where}: a multiple-choice row needs at least two choices, found {len(choices)}")
        label = self.answer(task, row, choices, where) if labelled else 0  # 0: a placeholder, the row is only predicted
        return {"text_a": str(lookup(row, task.text_columns[0], where)), "choices": choices, "label": label}

    def normalise_arrow(self, task: TaskSpec, table: pa.Table) -> pa.Table | None:
        question = columns.text(columns.find(table, task.text_columns[0]))
        if task.choices_column:
            choices = columns.string_list(columns.find(table, task.choices_column))
        else:
            texts = [columns.text(columns.find(table, c)) for c in task.choice_columns]
            choices = None if any(t is None for t in texts) else columns.string_lists(texts)
        if question is None or choices is None:
            return None
        counts = pc.list_value_length(choices)
        if table.num_rows and pc.min(counts).as_py() < 2:
            return None
        raw = columns.find(table, task.label_column)
        if task.labels:
            label = columns.label_indices(raw, task.labels)
            label = label if label is not None and columns.below(label, counts) else None
        else:
            label = columns.choice_indices(raw, counts)
        return None if label is None else pa.table({"text_a": question, "choices": choices, "label": label})

    def answer(self, task: TaskSpec, row: dict[str, Any], choices: list[str], where: str) -> int:
        """The index of the row's right answer among its choices."""
        raw = lookup(row, task.label_column, where)
        if task.labels:
            label = label_index(task, raw, where)
            if label >= len(choices):
                raise UserError(f"{where}: answer {raw!r} of task {task.name!r} points past the row's "
                                f"{len(choices)} choices")
            return label
        text = str(raw).strip()
        if not text.isdigit() or int(text) >= len(choices):
            raise UserError(
                f"{where}: label {text!r} of task {task.name!r} must be a choice index 0..{len(choices) - 1}"
            )
        return int(text)

    def check_split(self, task: TaskSpec, columns: dict[str, list[Any]], where: str) -> None:
        choices = columns["choices"]  # lists, or an Arrow column (a split read by trainer.data.arrow_split)
        if isinstance(choices, list):
            choices = pa.array(choices, pa.list_(pa.string()))
        counts = sorted(pc.unique(pc.list_value_length(choices)).to_pylist())
        if len(counts) > 1:
            raise UserError(f"{where}: rows have {' or '.join(map(str, counts))} choices; every row of a "
                            "multiple_choice task needs the same number")

    def tokenize(
        self, batch: dict[str, list[Any]], task: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list[Any]]:
        firsts = [q for q, choices in zip(batch["text_a"], batch["choices"], strict=True) for _ in choices]
        seconds = [c for choices in batch["choices"] for c in choices]
        flat = encode_texts(tokenizer, firsts, seconds, max_length)
        out: dict[str, list[Any]] = {}
        start = 0
        for choices in batch["choices"]:
            for key, values in flat.items():
                out.setdefault(key, []).append(values[start : start + len(choices)])
            start += len(choices)
        out["length"] = [max(len(ids) for ids in group) for group in out["input_ids"]]
        out["labels"] = batch["label"]
        return out

    no_packing = "its head reshapes the batch into questions x choices"

    def collate(
        self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None
    ) -> dict[str, Any]:
        """Flatten to (batch * choices) sequences, pad, and reshape to (batch, choices, length)."""
        keys = [k for k in features[0] if k in tokenizer.model_input_names]
        num_choices = len(features[0]["input_ids"])
        flat = [{k: f[k][c] for k in keys} for f in features for c in range(num_choices)]
        padded = tokenizer.pad(flat, padding=True, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
        batch = {k: v.view(len(features), num_choices, -1) for k, v in padded.items()}
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    def model_class(self) -> type:
        return AutoModelForMultipleChoice

    def compute_metrics(self, task: TaskSpec, predictions: Any, labels: np.ndarray) -> dict[str, float]:
        preds = np.asarray(predictions).reshape(len(labels), -1).argmax(axis=-1)
        return {"accuracy": float(np.mean(preds == np.asarray(labels).reshape(-1)))}

    def chance_level(self, task: TaskSpec) -> float:
        return 1.0 / max(len(task.choice_columns) or len(task.labels), 1)

    def predict(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        inputs: list[dict[str, Any]], max_length: int,
    ) -> list[dict[str, Any]]:
        if any(len(i.get("choices") or []) < 2 for i in inputs):
            raise UserError(f"task {task.name!r} is multiple choice: pass --choices with at least two candidates")
        rows = {"text_a": [i["text"] for i in inputs], "choices": [i["choices"] for i in inputs],
                "label": [0] * len(inputs)}
        encoded = self.tokenize(rows, task, tokenizer, max_length)
        results = []
        for i, item in enumerate(inputs):  # one example at a time: the number of choices may differ
            feature = {k: v[i] for k, v in encoded.items()}
            probs = batch_logits(model, self.collate([feature], tokenizer, None))[0].softmax(-1)
            best = int(probs.argmax())
            results.append({"label": item["choices"][best],
                            "scores": {c: round(float(p), 4) for c, p in zip(item["choices"], probs, strict=True)}})
        return results

    def predict_rows(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        columns: dict[str, list[Any]], max_length: int,
    ) -> list[tuple[str, ...]]:
        """The chosen answer as the files name it (`labels`, else the choice index) and its probability."""
        probs = batch_logits(model, self.encode(task, columns, tokenizer, max_length)).softmax(-1)
        rows = []
        for row in probs:
            best = int(row.argmax())
            rows.append((task.labels[best] if task.labels else str(best), f"{float(row[best]):.4f}"))
        return rows


KIND = MultipleChoice()
