"""Per-task metrics as GLUE defines them, computed with scikit-learn and SciPy."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from trainer.tasks import TaskSpec


def predictions_from_logits(task: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Class or choice index per example, or the predicted value for regression."""
    logits = np.asarray(logits)
    if task.type == "regression":
        return logits.reshape(-1)
    return logits.reshape(len(logits), -1).argmax(axis=-1)


def compute_task_metrics(task: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All metrics that apply to the task's type; `task.metric` names the main one."""
    preds = predictions_from_logits(task, logits)
    labels = np.asarray(labels).reshape(-1)
    if task.type == "regression":
        constant = np.ptp(preds) == 0 or np.ptp(labels) == 0
        return {
            "pearson": 0.0 if constant else float(pearsonr(preds, labels)[0]),
            "spearman": 0.0 if constant else float(spearmanr(preds, labels)[0]),
            "mse": float(np.mean((preds - labels) ** 2)),
        }
    metrics = {"accuracy": float(accuracy_score(labels, preds))}
    if task.type == "classification":
        metrics["mcc"] = float(matthews_corrcoef(labels, preds))
        if task.num_labels == 2:
            metrics["f1"] = float(f1_score(labels, preds, pos_label=1, zero_division=0))
        else:
            metrics["macro_f1"] = float(
                f1_score(labels, preds, average="macro", labels=list(range(task.num_labels)), zero_division=0)
            )
    return metrics


def chance_level(task: TaskSpec) -> float:
    """The main metric of a random guesser, for "well above chance" checks."""
    if task.type == "multiple_choice":
        return 1.0 / max(len(task.choice_columns), 1)
    if task.metric == "accuracy":
        return 1.0 / task.num_labels
    return 0.0  # pearson, spearman, mcc, f1 and macro-F1 of an uninformed model are ~0 or low


def aggregate_score(per_task: dict[str, dict[str, float]], tasks: list[TaskSpec]) -> float:
    """The mean of each task's main metric: the run's single number for model selection."""
    return float(np.mean([per_task[t.name][t.metric] for t in tasks]))
