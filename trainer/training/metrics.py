"""The run's metrics and their vocabulary: each task's metrics come from its kind; this module names the aggregate
and the Trainer's timings, combines the tasks' metrics, and gives `metrics.json` its shape (`RunMetrics`), which
the run writes once at its end and the console, the model cards and the report read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.errors import UserError
from trainer.files import write_text_atomically
from trainer.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from trainer.outputs.selection import BestSelection

AGGREGATE_METRIC = "average"  # eval_average: the mean of the main metrics of the tasks in the average
# what the Trainer adds to every evaluation (eval_<task>_runtime, ...): how long it took, not how good the model is
RUNTIME = "runtime"  # eval_<task>_runtime: the seconds an evaluation of the task took
TIMINGS = (RUNTIME, "samples_per_second", "steps_per_second", "model_preparation_time")


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


def without_timings(metrics: dict[str, float]) -> dict[str, float]:
    """One task's metrics without the Trainer's `TIMINGS`."""
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


# ---- metrics.json ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SelectedStep:
    """The step a task's export comes from (SELECT_BEST) and its dev metrics there (without the timings when
    the step was selected during training, with them when it is the final step by default)."""

    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class BestAverage:
    """The evaluation with the best `eval_average` so far: its step and value."""

    step: int
    value: float


@dataclass(frozen=True)
class RunMetrics:
    """What `metrics.json` holds: the final dev metrics of every task, what SELECT_BEST chose, and the settings.

    The fields are the file's keys, in its order; the `average` ones are named after `AGGREGATE_METRIC`.
    Metric values stay as the file has them (a NaN included): readers format them, nothing here converts.
    """

    global_step: int  # the final step
    average: float  # eval_average of the final weights
    main_metric: dict[str, str]  # task -> its main metric, in the run's task order
    tasks: dict[str, dict[str, float]]  # task -> the final weights' dev metrics (the Trainer's timings included)
    select_best: str  # SELECT_BEST: per_task, average or last
    selected: dict[str, SelectedStep]  # task -> the step its export comes from
    selected_average: float  # the aggregate of the selected steps' metrics
    best_average: BestAverage | None = None  # None with SELECT_BEST=last (nothing is tracked)
    settings: dict[str, Any] | None = None  # the run's settings as `as_record` writes them

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `metrics.json`, keys in the file's order."""
        return {
            "global_step": self.global_step,
            AGGREGATE_METRIC: self.average,
            "main_metric": self.main_metric,
            "tasks": self.tasks,
            "select_best": self.select_best,
            "selected": {name: {"step": s.step, "metrics": s.metrics} for name, s in self.selected.items()},
            f"selected_{AGGREGATE_METRIC}": self.selected_average,
            f"best_{AGGREGATE_METRIC}": (None if self.best_average is None else
                                         {"step": self.best_average.step, "value": self.best_average.value}),
            "settings": self.settings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunMetrics:
        """The inverse of `to_dict`; `best_average` and `settings` may be missing. A missing key raises KeyError."""
        best = data.get(f"best_{AGGREGATE_METRIC}")
        return cls(
            global_step=data["global_step"],
            average=data[AGGREGATE_METRIC],
            main_metric=data["main_metric"],
            tasks=data["tasks"],
            select_best=data["select_best"],
            selected={name: SelectedStep(s["step"], s["metrics"]) for name, s in data["selected"].items()},
            selected_average=data[f"selected_{AGGREGATE_METRIC}"],
            best_average=None if best is None else BestAverage(best["step"], best["value"]),
            settings=data.get("settings"),
        )

    def write(self, path: Path) -> None:
        write_text_atomically(path, self.to_json())


def read_run_metrics(path: Path) -> RunMetrics:
    """`metrics.json` at `path`; a file that is not JSON, or not a run's metrics, is one line naming the problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from None
    try:
        return RunMetrics.from_dict(data)
    except (KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path} is not the metrics.json of a training run ({type(err).__name__}: {err})") from None


def write_metrics(path: Path, metrics: dict[str, float], tasks: list[TaskSpec], step: int,
                  selection: BestSelection, settings: dict[str, Any] | None = None) -> RunMetrics:
    """Write `metrics.json` from the final evaluation's `metrics`, the model selection and the run's `settings`
    record (what the model cards show), and return it."""
    per_task = metrics_by_task(metrics, tasks)
    selected = selection.selected_steps(per_task, step)
    run_metrics = RunMetrics(
        global_step=step,
        average=metrics[f"eval_{AGGREGATE_METRIC}"],
        main_metric={t.name: t.metric for t in tasks},
        tasks=per_task,
        select_best=selection.mode,
        selected=selected,
        selected_average=aggregate_score({n: s.metrics for n, s in selected.items()}, tasks),
        best_average=selection.best_average_step(),
        settings=settings,
    )
    run_metrics.write(path)
    return run_metrics
