"""`classification`: one label per sentence or sentence pair (SST-2, RTE, MRPC, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from trainer.errors import UserError
from trainer.kinds.base import Field, label_index
from trainer.kinds.sentence import LABEL_COLUMN, TEXT_COLUMNS, SentenceKind

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

    from trainer.spec import TaskSpec


class Classification(SentenceKind):
    name = "classification"
    summary = "one label per sentence or sentence pair"
    fields = (TEXT_COLUMNS, LABEL_COLUMN,
              Field("labels", "the label values, in order (at least two)", required=True, list_of_str=True))
    metrics = {"accuracy": True, "f1": True, "macro_f1": True, "mcc": True}
    pipeline = "text-classification"

    def validate(self, task: TaskSpec, where: str) -> None:
        super().validate(task, where)
        if len(task.labels) < 2:
            raise UserError(f"{where}: a classification task needs 'labels' with at least two values")
        if len(set(task.labels)) != len(task.labels):
            raise UserError(f"{where}: 'labels' lists a value twice ({', '.join(task.labels)})")

    def default_metric(self, task: TaskSpec) -> str:
        return "macro_f1" if len(task.labels) > 2 else "accuracy"

    def metrics_for(self, task: TaskSpec) -> list[str]:
        return ["accuracy", "mcc", "f1" if len(task.labels) == 2 else "macro_f1"]

    def num_labels(self, task: TaskSpec) -> int:
        return len(task.labels)

    def label(self, task: TaskSpec, raw: Any, where: str) -> int:
        return label_index(task, raw, where)

    def normalise_hub(self, task: TaskSpec, row: dict[str, Any], where: str) -> dict[str, Any]:
        raw = row[task.label_column]
        if not isinstance(raw, int) or not 0 <= raw < task.num_labels:
            raise UserError(f"{where}: label {raw!r} is outside 0..{task.num_labels - 1} (unlabelled split?)")
        return {**self.normalise(task, {**row, task.label_column: task.labels[raw]}, where)}

    def config(self, encoder_config: PreTrainedConfig, task: TaskSpec) -> PreTrainedConfig:
        config = super().config(encoder_config, task)
        config.problem_type = "single_label_classification"
        config.id2label = dict(enumerate(task.labels))
        config.label2id = {label: i for i, label in enumerate(task.labels)}
        return config

    def compute_metrics(self, task: TaskSpec, predictions: Any, labels: np.ndarray) -> dict[str, float]:
        preds = np.asarray(predictions).reshape(len(labels), -1).argmax(axis=-1)
        labels = np.asarray(labels).reshape(-1)
        metrics = {"accuracy": float(accuracy_score(labels, preds)), "mcc": float(matthews_corrcoef(labels, preds))}
        if task.num_labels == 2:
            metrics["f1"] = float(f1_score(labels, preds, pos_label=1, zero_division=0))
        else:
            metrics["macro_f1"] = float(
                f1_score(labels, preds, average="macro", labels=list(range(task.num_labels)), zero_division=0)
            )
        return metrics

    def chance_level(self, task: TaskSpec) -> float:
        return 1.0 / task.num_labels if task.metric == "accuracy" else 0.0

    def format_prediction(self, task: TaskSpec, logits: Any) -> dict[str, Any]:
        probs = logits.softmax(-1)
        return {"label": task.labels[int(probs.argmax())], "probabilities": [round(float(p), 4) for p in probs]}


KIND = Classification()
