"""Model selection (SELECT_BEST): the step each task's export comes from.

- per_task: at every evaluation, each task whose main metric beats its best so far gets a copy of
  its weights at that step (the shared encoder and its head), because tasks peak at different times.
- average: every task's copy is replaced when `eval_average` beats its best.
- last: the final weights; nothing is copied during training.

Copies are standalone task models, as `export/` holds them, in `OUTPUT_DIR/best/<task>-step<N>/`. With an adapter
a copy is only what the task adds to the frozen base, its adapter and head (`task_state.safetensors`): a full copy
per task of a multi-GB base is what adapters avoid; the export loads it into the final model for the moment it
writes that task.
`best/selection.json` names each task's current copy; it is replaced atomically once a new copy is
complete, and the old copy is deleted after that, so a crash at any point leaves a consistent
selection and disk use stays at one copy per task (two while one is replaced).

Every checkpoint carries the selection in `checkpoint-<N>/best/`, as hard links (copies are never
modified, only replaced), so it costs no local disk, survives preemption, and travels to the bucket
with the checkpoint. Resuming puts the checkpoint's selection back (`restore`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainer.files import follow_umask, link_tree, write_text_atomically
from trainer.layout import BEST_DIR, SELECTION_FILE, TASK_FILE, TASK_STATE_FILE, RunDirs, best_name
from trainer.model.modeling import MultitaskModel
from trainer.model.sharding import unsharded
from trainer.outputs.export import export_tasks, save_task
from trainer.tasks.spec import TaskSpec
from trainer.training.metrics import AGGREGATE_METRIC, BestAverage, SelectedStep, metrics_by_task, without_timings

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _task_state_loaded(model: MultitaskModel, path: Path) -> Iterator[None]:
    """The model with a selected task's adapter and head in place of its current ones, for the block."""
    selected = load_file(str(path))
    params = model.state_dict(keep_vars=True)
    current = {k: params[k].detach().clone() for k in selected}
    with torch.no_grad():
        for key, value in selected.items():
            params[key].copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for key, value in current.items():
                params[key].copy_(value)


def _score(value: float | None) -> float:
    """Comparable main-metric value: a missing or NaN one loses to any number."""
    return -math.inf if value is None or math.isnan(value) else value


class BestSelection(TrainerCallback):
    """Keeps `OUTPUT_DIR/best/` up to date at every evaluation; `link_into` puts it into each checkpoint."""

    def __init__(self, mode: str, tasks: list[TaskSpec], tokenizer: PreTrainedTokenizerBase, output_dir: str):
        self.mode = mode
        self.tasks = tasks
        self.tokenizer = tokenizer
        self.root = RunDirs(output_dir).best
        self.selected: dict[str, dict[str, Any]] = {}  # task -> {step, metric, value, metrics, dir}
        self.best_average: dict[str, Any] = {}  # {step, value}

    # -- resume -------------------------------------------------------------------------

    def restore(self, checkpoint: str | None) -> None:
        """Start from the selection saved in `checkpoint` (a resume), or from none (a new run).

        Whatever `OUTPUT_DIR/best/` holds is replaced: after a kill it may be ahead of the checkpoint.
        """
        shutil.rmtree(self.root, ignore_errors=True)
        saved = Path(checkpoint) / BEST_DIR if checkpoint else None
        if saved is None or not (saved / SELECTION_FILE).is_file():
            self.selected, self.best_average = {}, {}
            return
        link_tree(saved, self.root)
        state = json.loads((self.root / SELECTION_FILE).read_text(encoding="utf-8"))
        self.selected, self.best_average = state["tasks"], state["average"]
        logger.info("restored the model selection of %s: %s", checkpoint, self.describe())

    # -- Trainer events -----------------------------------------------------------------

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, model: MultitaskModel | None = None, **kwargs: Any):
        if self.mode == "last" or not metrics or f"eval_{AGGREGATE_METRIC}" not in metrics:
            return
        model = unsharded(model)  # FSDP: every process gathers the full weights for the main one (a collective)
        if not args.should_save:
            return
        per_task = {name: without_timings(values) for name, values in metrics_by_task(metrics, self.tasks).items()}
        average = metrics[f"eval_{AGGREGATE_METRIC}"]
        if self.mode == "average":
            if _score(average) <= _score(self.best_average.get("value")) and self.best_average:
                return
            self.best_average = {"step": state.global_step, "value": average}
            improved = list(self.tasks)
        else:
            improved = [t for t in self.tasks if t.name not in self.selected
                        or _score(per_task[t.name][t.metric]) > _score(self.selected[t.name]["value"])]
            if _score(average) > _score(self.best_average.get("value")) or not self.best_average:
                self.best_average = {"step": state.global_step, "value": average}
        replaced = []
        for task in improved:
            name = best_name(task.name, state.global_step)
            self._write_copy(model, task.name, self.root / name)
            old = self.selected.get(task.name, {}).get("dir")
            if old and old != name:
                replaced.append(old)
            self.selected[task.name] = {"step": state.global_step, "metric": task.metric,
                                        "value": per_task[task.name][task.metric],
                                        "metrics": per_task[task.name], "dir": name}
        self._write_state()
        for old in replaced:
            shutil.rmtree(self.root / old, ignore_errors=True)
        if improved:
            logger.info("step %d: new best for %s", state.global_step, ", ".join(t.name for t in improved))

    def link_into(self, checkpoint: Path) -> None:
        """Link the selection into the checkpoint just written (before its completion marker: `SaveSequence`)."""
        if (self.root / SELECTION_FILE).is_file():
            link_tree(self.root, checkpoint / BEST_DIR)

    # -- the end of the run -------------------------------------------------------------

    def export(self, model: MultitaskModel, export_dir: str | os.PathLike[str], merged: bool = True,
               **where: Any) -> None:
        """Write `export/<task>` for every task from its selected copy (the final weights with `last`), merged or
        as a peft adapter directory (`merged`, from EXPORT_MERGED); `where`: `export_tasks`' checks of the folder
        it replaces."""

        def write(task: str, directory: Path) -> None:
            chosen = self.selected.get(task)
            if self.mode == "last" or chosen is None:
                save_task(model, self.tokenizer, task, directory, merged)
            elif (self.root / chosen["dir"] / TASK_STATE_FILE).is_file():
                with _task_state_loaded(model, self.root / chosen["dir"] / TASK_STATE_FILE):
                    save_task(model, self.tokenizer, task, directory, merged)
            else:
                shutil.copytree(self.root / chosen["dir"], directory)

        export_tasks(model, self.tokenizer, export_dir, write, **where)

    def selected_steps(self, final: dict[str, dict[str, float]], final_step: int) -> dict[str, SelectedStep]:
        """`metrics.json`'s view of the selection: each task's selected step and metrics (`final`'s where none was
        selected)."""
        selected = {}
        for task in self.tasks:
            chosen = self.selected.get(task.name)
            if self.mode == "last" or chosen is None:
                selected[task.name] = SelectedStep(final_step, final[task.name])
            else:
                selected[task.name] = SelectedStep(chosen["step"], chosen["metrics"])
        return selected

    def best_average_step(self) -> BestAverage | None:
        """The evaluation with the best `eval_average` so far (None with SELECT_BEST=last, or before any)."""
        return BestAverage(self.best_average["step"], self.best_average["value"]) if self.best_average else None

    def describe(self) -> str:
        return ", ".join(f"{n} {s['metric']}={s['value']:.4g} at step {s['step']}" for n, s in self.selected.items())

    # -- internals ----------------------------------------------------------------------

    def _write_copy(self, model: MultitaskModel, task: str, directory: Path) -> None:
        """One task's standalone model (with an adapter: its adapter and head), written under a temporary name and
        renamed when complete."""
        tmp = directory.with_name(f".{directory.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if model.adapter.mode == "none":
            save_task(model, self.tokenizer, task, tmp)
        else:
            tmp.mkdir(parents=True)
            state = model.state_dict()
            save_file({k: state[k].detach().cpu().contiguous() for k in model.task_keys(task)},
                      str(tmp / TASK_STATE_FILE))
            (tmp / TASK_FILE).write_text(json.dumps(model.tasks[task].to_dict(), indent=2), encoding="utf-8")
            follow_umask(tmp)  # safetensors writes 0600
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)

    def _write_state(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        payload = {"mode": self.mode, "tasks": self.selected, "average": self.best_average}
        write_text_atomically(self.root / SELECTION_FILE, json.dumps(payload, indent=2))
