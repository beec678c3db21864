"""`transformers.Trainer` with its hooks overridden: the train dataloader, the inputs of a step, the loss,
the logits kept for metrics, and evaluation. What differs between task kinds is asked of the kind.

The training loop, progress bars, logging, checkpointing and resume are the stock Trainer's.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import EvalPrediction, has_length

from trainer.data import MultitaskDataset
from trainer.metrics import aggregate_score
from trainer.modeling import MultitaskModel
from trainer.sampler import MultitaskBatchSampler
from trainer.spec import TaskSpec

AGGREGATE_METRIC = "average"


def metrics_by_task(metrics: dict[str, float], tasks: list[TaskSpec], prefix: str = "eval") -> dict[str, dict]:
    """`{"eval_rte_accuracy": x}` -> `{"rte": {"accuracy": x}}`."""
    by_task: dict[str, dict[str, float]] = {t.name: {} for t in tasks}
    longest_first = sorted(by_task, key=len, reverse=True)  # eval_rte_x_f1 belongs to rte_x, not rte
    for key, value in metrics.items():
        name = next((n for n in longest_first if key.startswith(f"{prefix}_{n}_")), None)
        if name is not None:
            by_task[name][key.removeprefix(f"{prefix}_{name}_")] = value
    return by_task


class TaskProgressCallback(ProgressCallback):
    """The stock progress bars, with each evaluation bar named after its task.

    Without a terminal (a log file, Vertex AI) the nested evaluation bars are left out: tqdm draws
    them with cursor-up escapes (`ESC[A`), which are noise in a log.
    """

    def __init__(self) -> None:
        super().__init__()
        self.task_name = ""

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):  # noqa: ANN001
        if not sys.stderr.isatty():
            return
        if state.is_world_process_zero and has_length(eval_dataloader) and self.prediction_bar is None:
            self.prediction_bar = tqdm(total=len(eval_dataloader), leave=self.training_bar is None,
                                       dynamic_ncols=True, desc=f"eval {self.task_name}")
        super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)


class LastEvaluation(TrainerCallback):
    """Remember the newest evaluation and its step, so the end of a run need not evaluate again."""

    def __init__(self) -> None:
        self.step = -1
        self.metrics: dict[str, float] = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
        if metrics and any(k.endswith(f"_{AGGREGATE_METRIC}") for k in metrics):
            self.step, self.metrics = state.global_step, dict(metrics)


class EpochDataLoader(DataLoader):
    """A DataLoader whose `set_epoch` reaches its batch sampler (the Trainer calls it every epoch)."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


class MultitaskTrainer(Trainer):
    """Trains a `MultitaskModel` on batches that each come from one task."""

    def __init__(
        self,
        *args: Any,
        tasks: list[TaskSpec],
        sampling: str = "proportional",
        sampling_temperature: float = 2.0,
        task_weights: dict[str, float] | None = None,
        group_by_length: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, compute_metrics=self._task_metrics, preprocess_logits_for_metrics=self._reduce_logits,
                         **kwargs)
        self.progress = TaskProgressCallback()
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(self.progress)
        self.last_evaluation = LastEvaluation()
        self.add_callback(self.last_evaluation)
        self.tasks = tasks
        self.tasks_by_name = {t.name: t for t in tasks}
        self._task_index = {t.name: i for i, t in enumerate(tasks)}
        self._task_loss_sums = torch.zeros(len(tasks), device=self.args.device)
        self._task_loss_counts = torch.zeros(len(tasks), dtype=torch.long)
        self.sampling = sampling
        self.sampling_temperature = sampling_temperature
        self.task_weights = task_weights or {}
        self.group_by_length = group_by_length
        self._eval_task: TaskSpec | None = None
        self._eval_batches = 0

    # -- training data ------------------------------------------------------------------

    def make_batch_sampler(self) -> MultitaskBatchSampler:
        dataset: MultitaskDataset = self.train_dataset
        return MultitaskBatchSampler(
            dataset.task_sizes(),
            batch_size=self._train_batch_size,
            strategy=self.sampling,
            temperature=self.sampling_temperature,
            seed=self.args.seed,
            num_replicas=self.args.world_size,
            rank=self.args.process_index,
            lengths=dataset.lengths() if self.group_by_length else None,
        )

    def get_train_dataloader(self) -> DataLoader:
        """Batches from the rank-aware multitask sampler.

        The loader is deliberately not passed through `accelerator.prepare`: accelerate
        would shard it again by handing whole consecutive batches to different ranks,
        which puts different tasks (heads) on different ranks in the same step.
        """
        return EpochDataLoader(
            self.train_dataset,
            batch_sampler=self.make_batch_sampler(),
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    # -- inputs and loss ----------------------------------------------------------------

    def _kind_inputs(self, inputs: dict[str, Any], training: bool) -> dict[str, Any]:
        """Let the batch's kind finish it (masked LM draws its masks here).

        Training draws from (seed, step, rank), evaluation from (seed, batch number), so a run and
        its resumed twin see the same masks, and every evaluation the same dev masks.
        """
        generator = torch.Generator()
        if training:
            entropy = [self.args.seed, 0, self.state.global_step, self.args.process_index]
        else:
            self._eval_batches += 1
            entropy = [self.args.seed, 1, self._eval_batches, self.args.process_index]
        generator.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1))
        task = self.tasks_by_name[inputs["task"]]
        return task.kind.prepare_inputs(inputs, self.processing_class, generator)

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None):
        return super().training_step(model, self._kind_inputs(inputs, training=True), num_items_in_batch)

    def prediction_step(self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None):
        return super().prediction_step(model, self._kind_inputs(inputs, training=False), prediction_loss_only,
                                       ignore_keys)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> Any:
        task = inputs["task"]
        outputs = model(**inputs)
        if model.training:  # kept on the device: no host sync per step
            index = self._task_index[task]
            self._task_loss_sums[index] += outputs.loss.detach().float()
            self._task_loss_counts[index] += 1
        loss = outputs.loss * self.task_weights.get(task, 1.0)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `<task>_loss`, each task's mean (unweighted) training loss since the last log, beside `loss`."""
        if "loss" in logs and self._task_loss_counts.any():
            sums = self._task_loss_sums.clone()
            counts = self._task_loss_counts.to(sums.device, torch.float32)
            if self.args.world_size > 1:  # every rank logs at the same step: a safe collective
                sums, counts = self.accelerator.reduce(sums, "sum"), self.accelerator.reduce(counts, "sum")
            for task, total, count in zip(self.tasks, sums.tolist(), counts.tolist(), strict=True):
                if count:
                    logs[f"{task.name}_loss"] = round(total / count, 4)
            self._task_loss_sums.zero_()
            self._task_loss_counts.zero_()
        super().log(logs, start_time)

    # -- evaluation ---------------------------------------------------------------------

    def _reduce_logits(self, logits: Any, labels: torch.Tensor) -> Any:
        return self._eval_task.kind.reduce_logits(logits, labels)

    def _task_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        return self._eval_task.kind.compute_metrics(self._eval_task, prediction.predictions, prediction.label_ids)

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Evaluate every task on its own dev split; add `<prefix>_average` of the main metrics.

        The `eval_dataset` given to the constructor maps task names to their dev splits.
        Metrics are named `<prefix>_<task>_<metric>`, e.g. `eval_rte_accuracy`.
        """
        if eval_dataset is not None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics: dict[str, float] = {}
        for task in self.tasks:
            self._eval_task = task
            self._eval_batches = 0
            self.progress.task_name = task.name
            prefix = f"{metric_key_prefix}_{task.name}"
            metrics.update(super().evaluate(self.eval_dataset[task.name], ignore_keys, prefix))
        self._eval_task = None
        aggregate_key = f"{metric_key_prefix}_{AGGREGATE_METRIC}"
        metrics[aggregate_key] = aggregate_score(metrics_by_task(metrics, self.tasks, metric_key_prefix), self.tasks)
        self.log({aggregate_key: metrics[aggregate_key]})
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def final_metrics(self) -> dict[str, float]:
        """The dev metrics of the final weights: the last evaluation if it ran at the final step, else a new one."""
        if self.last_evaluation.step == self.state.global_step:
            return self.last_evaluation.metrics
        return self.evaluate()

    # -- saving -------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save weights (encoder once) plus the config and task specs needed to rebuild the model."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            model: MultitaskModel = self.accelerator.unwrap_model(self.model)
            model.save_config(output_dir or self.args.output_dir)


class FinalSaveCallback(TrainerCallback):
    """Always checkpoint the last step, so the steps after the last SAVE_STEPS are never lost."""

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if state.global_step >= state.max_steps:
            control.should_save = True
        return control
