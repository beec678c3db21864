"""`regression`: one number per sentence or sentence pair (STS-B)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
from scipy.stats import pearsonr, spearmanr

from trainer.errors import UserError
from trainer.tasks.kinds import columns
from trainer.tasks.kinds.sentence import LABEL_COLUMN, TEXT_COLUMNS, SentenceKind

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

    from trainer.tasks.spec import TaskSpec


class Regression(SentenceKind):
    name = "regression"
    summary = "one number per sentence or sentence pair"
    fields = (TEXT_COLUMNS, LABEL_COLUMN)
    metrics = {"pearson": True, "spearman": True, "mse": False}
    label_feature = datasets.Value("float32")
    dummy_label = 0.0
    pipeline = "text-classification"

    def label(self, task: TaskSpec, raw: Any, where: str) -> float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise UserError(f"{where}: regression target {raw!r} of task {task.name!r} is not a finite number")
        return value

    def label_arrow(self, task: TaskSpec, values: columns.Column | None) -> columns.Column | None:
        return columns.numbers(values)

    def config(self, encoder_config: PreTrainedConfig, task: TaskSpec) -> PreTrainedConfig:
        config = super().config(encoder_config, task)
        config.problem_type = "regression"
        return config

    def compute_metrics(self, task: TaskSpec, predictions: Any, labels: np.ndarray) -> dict[str, float]:
        preds = np.asarray(predictions).reshape(-1)
        labels = np.asarray(labels).reshape(-1)
        constant = np.ptp(preds) == 0 or np.ptp(labels) == 0
        return {
            "pearson": 0.0 if constant else float(pearsonr(preds, labels)[0]),
            "spearman": 0.0 if constant else float(spearmanr(preds, labels)[0]),
            "mse": float(np.mean((preds - labels) ** 2)),
        }

    def label_summary(self, task: TaskSpec, columns: dict[str, list[Any]]) -> str:
        values = np.asarray(columns["label"], dtype=float)
        return f"min {values.min():.3g}, mean {values.mean():.3g}, max {values.max():.3g}"

    def format_prediction(self, task: TaskSpec, logits: Any) -> dict[str, Any]:
        return {"score": float(logits[0])}

    def prediction_cells(self, task: TaskSpec, logits: Any) -> tuple[str, ...]:
        return (f"{float(logits[0]):.6g}",)


KIND = Regression()
