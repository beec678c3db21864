"""The run's metrics: each task's come from its kind; this module combines them."""

from __future__ import annotations

import numpy as np

from trainer.spec import TaskSpec


def compute_task_metrics(task: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All metrics of the task's kind; `task.metric` names the main one."""
    return task.kind.compute_metrics(task, predictions, labels)


def chance_level(task: TaskSpec) -> float:
    """The main metric of a random guesser, for "well above chance" checks."""
    return task.kind.chance_level(task)


def aggregate_score(per_task: dict[str, dict[str, float]], tasks: list[TaskSpec]) -> float:
    """The mean main metric of the tasks in the average: the run's single number for model selection.

    Language-modelling tasks stay out unless they say `in_average: true`; if no task is in the
    average (an LM-only run), all tasks count.
    """
    counted = [t for t in tasks if t.counts_in_average] or tasks
    return float(np.mean([per_task[t.name][t.metric] for t in counted]))
