"""The run's metrics: each task's come from its kind; this module combines them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.files import write_text_atomically
from trainer.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from trainer.outputs.selection import BestSelection

AGGREGATE_METRIC = "average"  # eval_average: the mean of the main metrics of the tasks in the average


def aggregate_score(per_task: dict[str, dict[str, float]], tasks: list[TaskSpec]) -> float:
    """The mean main metric of the tasks in the average: the run's single number for model selection.

    Language-modelling tasks stay out unless they say `in_average: true`; if no task is in the
    average (an LM-only run), all tasks count.
    """
    counted = [t for t in tasks if t.counts_in_average] or tasks
    return float(np.mean([per_task[t.name][t.metric] for t in counted]))


def metrics_by_task(metrics: dict[str, float], tasks: list[TaskSpec], prefix: str = "eval") -> dict[str, dict]:
    """`{"eval_rte_accuracy": x}` -> `{"rte": {"accuracy": x}}`."""
    by_task: dict[str, dict[str, float]] = {t.name: {} for t in tasks}
    longest_first = sorted(by_task, key=len, reverse=True)  # eval_rte_x_f1 belongs to rte_x, not rte
    for key, value in metrics.items():
        name = next((n for n in longest_first if key.startswith(f"{prefix}_{n}_")), None)
        if name is not None:
            by_task[name][key.removeprefix(f"{prefix}_{name}_")] = value
    return by_task


def write_metrics(path: Path, metrics: dict[str, float], tasks: list[TaskSpec], step: int,
                  selection: BestSelection, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The final dev metrics (`tasks`, `average`), the selected ones (`selected`: step and metrics per task) and
    the run's `settings` (what the model cards show)."""
    per_task = metrics_by_task(metrics, tasks)
    report = {
        "global_step": step,
        AGGREGATE_METRIC: metrics[f"eval_{AGGREGATE_METRIC}"],
        "main_metric": {t.name: t.metric for t in tasks},
        "tasks": per_task,
        **selection.report(per_task, step),
        "settings": settings,
    }
    write_text_atomically(path, json.dumps(report, indent=2))
    return report
