"""What a person reads on the console: a table after every evaluation, and the run's summary at the end.

The tables go to stdout (the progress bar and the log lines are on stderr), on the main process only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from trainer.checkpoints.local import trained_steps
from trainer.config.settings import Settings
from trainer.layout import EXPORT_DIR, METRICS_FILE, REPORT_FILE, BucketDirs, RunDirs
from trainer.tasks.spec import TaskSpec
from trainer.training.metrics import AGGREGATE_METRIC, RUNTIME, TIMINGS, RunMetrics, read_run_metrics


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _best(history: list[dict[str, Any]], key: str, higher_is_better: bool) -> tuple[float, int] | None:
    """The best value of `key` logged so far and its step (the earliest on a tie); NaN never wins."""
    points = [(entry[key], entry["step"]) for entry in history if key in entry and not math.isnan(entry[key])]
    if not points:
        return None
    sign = 1 if higher_is_better else -1
    return max(points, key=lambda point: (sign * point[0], -point[1]))


def eval_table(tasks: list[TaskSpec], metrics: dict[str, float], history: list[dict[str, Any]], step: int) -> str:
    """Each task's main metric now, its best so far (with the step) and the seconds its evaluation took, then the
    average (with the total seconds).

    `history` is the Trainer's `state.log_history`, this evaluation included; it comes back with a resumed
    checkpoint, so the best so far survives a resume.
    """
    rows = [(t.name, t.metric, f"eval_{t.name}_{t.metric}", t.higher_is_better) for t in tasks]
    rows.append((AGGREGATE_METRIC, "", f"eval_{AGGREGATE_METRIC}", True))
    width = max(len(name) for name, *_ in rows)
    seconds = {t.name: metrics.get(f"eval_{t.name}_{RUNTIME}") for t in tasks}
    seconds[AGGREGATE_METRIC] = sum(s for s in seconds.values() if s is not None)
    lines = [f"eval at step {step}", f"  {'task':<{width}}  {'metric':<10} {'now':>9} {'best':>9}  at step  eval s"]
    for name, metric, key, higher in rows:
        best = _best(history, key, higher)
        took = "-" if seconds[name] is None else f"{seconds[name]:.1f}"
        lines.append(f"  {name:<{width}}  {metric:<10} {_value(metrics.get(key)):>9} "
                     f"{_value(best and best[0]):>9}  {best[1] if best else '-':<7}  {took:>6}")
    return "\n".join(lines)


class EvalTableCallback(TrainerCallback):
    """Print `eval_table` after every evaluation of every task (the call that carries `eval_average`)."""

    def __init__(self, tasks: list[TaskSpec]) -> None:
        self.tasks = tasks

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and metrics and f"eval_{AGGREGATE_METRIC}" in metrics:
            tqdm.write(eval_table(self.tasks, metrics, state.log_history, state.global_step))


def summary(run_metrics: RunMetrics, tasks: list[TaskSpec], outputs: list[tuple[str, str]]) -> str:
    """The end of a run: the `final:` line, a table of final and selected metrics, and where everything went.

    `run_metrics` is what `metrics.json` holds; `outputs` are (what, where) pairs.
    """
    final = ", ".join(f"{t.name} {t.metric}={run_metrics.tasks[t.name][t.metric]:.3f}" for t in tasks)
    lines = [f"final: {final}; {AGGREGATE_METRIC}={run_metrics.average:.3f} (step {run_metrics.global_step})"]
    width = max(len(AGGREGATE_METRIC), *(len(t.name) for t in tasks))
    lines.append(f"  {'task':<{width}}  {'metric':<10} {'final':>9} {'selected':>9}  {'step':>5}  "
                 "other metrics (final)")
    for task in tasks:
        values = run_metrics.tasks[task.name]
        chosen = run_metrics.selected[task.name]
        others = " ".join(f"{k}={v:.4g}" for k, v in values.items() if k != task.metric and k not in TIMINGS)
        lines.append(f"  {task.name:<{width}}  {task.metric:<10} {_value(values[task.metric]):>9} "
                     f"{_value(chosen.metrics[task.metric]):>9}  {chosen.step:>5}  {others}")
    lines.append(f"  {AGGREGATE_METRIC:<{width}}  {'':<10} {_value(run_metrics.average):>9} "
                 f"{_value(run_metrics.selected_average):>9}  (SELECT_BEST={run_metrics.select_best})")
    lines.append("outputs:")
    width = max(len(what) for what, _ in outputs)
    lines += [f"  {what:<{width}}  {where}" for what, where in outputs]
    return "\n".join(lines)


def outputs(run: RunDirs, tasks: list[TaskSpec], report_file: Path | None,
            dirs: BucketDirs | None) -> list[tuple[str, str]]:
    """Where a run's outputs are, for the summary: local paths, then the bucket's."""
    found = [("model", f"{run.model}/"),
             *((f"export {t.name}", f"{run.export_task(t.name)}/") for t in tasks),
             ("metrics", str(run.metrics)),
             ("report", str(report_file) if report_file else "(not written, see the log)"),
             ("logs", f"{run.log_dir}/ (tensorboard --logdir {run.log_dir})")]
    if dirs:
        found += [("bucket model", f"{dirs.model}/ ({EXPORT_DIR}/, {METRICS_FILE}, {REPORT_FILE})"),
                  ("bucket logs", f"{dirs.logs}/"), ("bucket ckpts", f"{dirs.checkpoints}/")]
    return found


def already_finished(settings: Settings, checkpoint: str, args: TrainingArguments) -> dict[str, Any]:
    """Nothing to train: say so (one line) and return the run's metrics.json as `train` returns it (empty if the run
    has none)."""
    path = RunDirs(settings.output_dir).metrics
    run_metrics = read_run_metrics(path) if path.is_file() else None
    if args.process_index == 0:
        exported = "" if run_metrics else (f"; it has no {METRICS_FILE} or export: python -m trainer export "
                                           f"--model_dir={checkpoint} writes one")
        print(f"the run in {settings.output_dir} already finished at step {trained_steps(checkpoint)}; nothing to do "
              f"(raise MAX_STEPS or NUM_EPOCHS to train on, or RESUME=never to start over){exported}", flush=True)
    return run_metrics.to_dict() if run_metrics else {}
