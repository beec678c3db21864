"""The run's metrics: each task's come from its kind; this module combines them."""

from __future__ import annotations

import numpy as np

from trainer.spec import TaskSpec


def aggregate_score(per_task: dict[str, dict[str, float]], tasks: list[TaskSpec]) -> float:
    """The mean main metric of the tasks in the average: the run's single number for model selection.

    Language-modelling tasks stay out unless they say `in_average: true`; if no task is in the
    average (an LM-only run), all tasks count.
    """
    counted = [t for t in tasks if t.counts_in_average] or tasks
    return float(np.mean([per_task[t.name][t.metric] for t in counted]))
