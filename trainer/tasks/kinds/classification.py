"""`classification`: one label per sentence or sentence pair (SST-2, RTE, MRPC, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from trainer.errors import UserError
from trainer.tasks.kinds import columns
from trainer.tasks.kinds.base import Field, class_label_names, label_index
from trainer.tasks.kinds.sentence import LABEL_COLUMN, TEXT_COLUMNS, SentenceKind

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedConfig

    from trainer.tasks.spec import TaskSpec


class Classification(SentenceKind):
    name = "classification"
    summary = "one label per sentence or sentence pair"
    fields = (TEXT_COLUMNS, LABEL_COLUMN,
              Field("labels", "the label values as the files hold them, in order (at least two); a source's "
                    "ClassLabel gives them", list_of_str=True, unique=True, default=()),
              Field("label_names", "names for integer labels 0..n-1 (as a datasets ClassLabel); labels may then "
                    "be left out", list_of_str=True, unique=True, default=()))
    metrics = {"accuracy": True, "f1": True, "macro_f1": True, "mcc": True}
    pipeline = "text-classification"
    prediction_columns = ("prediction", "probability")

    def validate(self, task: TaskSpec, where: str) -> None:
        super().validate(task, where)
        pending = task.declared_source and not self.values(task)  # the source's ClassLabel names them
        if len(self.values(task)) < 2 and not pending:
            raise UserError(f"{where}: a classification task needs 'labels' (or 'label_names'), at least two")
        if task.labels and task.label_names and len(task.labels) != len(task.label_names):
            raise UserError(f"{where}: 'label_names' needs one name per label ({len(task.labels)})")

    @staticmethod
    def values(task: TaskSpec) -> tuple[str, ...]:
        """The label values as the files hold them: `labels`, or 0..n-1 for `label_names`."""
        return task.labels or tuple(str(i) for i in range(len(task.label_names)))

    @staticmethod
    def names(task: TaskSpec) -> tuple[str, ...]:
        """What the model calls its labels (id2label): `label_names`, else `labels`."""
        return task.label_names or task.labels

    def default_metric(self, task: TaskSpec) -> str:
        return "macro_f1" if len(self.values(task)) > 2 else "accuracy"

    def metrics_for(self, task: TaskSpec) -> list[str]:
        if not self.values(task):  # labels still to come from a source: any until then
            return list(self.metrics)
        return ["accuracy", "mcc", "f1" if len(self.values(task)) == 2 else "macro_f1"]

    def num_labels(self, task: TaskSpec) -> int:
        return len(self.values(task))

    def label(self, task: TaskSpec, raw: Any, where: str) -> int:
        return label_index(task, raw, where, values=self.values(task))

    def label_arrow(self, task: TaskSpec, values: columns.Column | None) -> columns.Column | None:
        return columns.label_indices(values, self.values(task))

    def source_options(self, task: TaskSpec, features: datasets.Features, where: str) -> dict[str, Any]:
        feature = features.get(task.label_column)
        names = class_label_names(task, feature, where)
        if names is None and not self.values(task):
            found = f"holds {feature}" if feature is not None else f"is missing (columns: {', '.join(features)})"
            raise UserError(f"{where}: label column {task.label_column!r} {found}, not a datasets ClassLabel; "
                            "declare 'labels' (the values in order) or 'label_names' (names for 0..n-1)")
        return {} if names is None else {"labels": names}

    def normalise_hub(self, task: TaskSpec, row: dict[str, Any], where: str) -> dict[str, Any]:
        raw = row[task.label_column]
        if isinstance(raw, str):  # a declared source with string labels: as in files
            return self.normalise(task, row, where)
        if not isinstance(raw, int) or not 0 <= raw < task.num_labels:
            raise UserError(f"{where}: label {raw!r} is outside 0..{task.num_labels - 1} (unlabelled split?)")
        return self.normalise(task, {**row, task.label_column: self.values(task)[raw]}, where)

    def config(self, encoder_config: PreTrainedConfig, task: TaskSpec) -> PreTrainedConfig:
        config = super().config(encoder_config, task)
        config.problem_type = "single_label_classification"
        config.id2label = dict(enumerate(self.names(task)))
        config.label2id = {label: i for i, label in enumerate(self.names(task))}
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
        names = self.names(task)
        return {"label": names[int(probs.argmax())], "scores": {n: round(float(p), 4) for n, p in zip(names, probs,
                                                                                                     strict=True)}}

    def prediction_cells(self, task: TaskSpec, logits: Any) -> tuple[str, ...]:
        probs = logits.softmax(-1)
        best = int(probs.argmax())
        return self.names(task)[best], f"{float(probs[best]):.4f}"

    def label_summary(self, task: TaskSpec, columns: dict[str, list[Any]]) -> str:
        counts = np.bincount(columns["label"], minlength=task.num_labels)
        return ", ".join(f"{name}: {int(n)}" for name, n in zip(self.names(task), counts, strict=True))


KIND = Classification()
