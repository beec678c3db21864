"""`transformers.Trainer` with its hooks overridden: the train dataloader, the inputs of a step, the loss,
the logits kept for metrics, and evaluation. What differs between task kinds is asked of the kind.

The training loop, progress bars, logging, checkpointing and resume are the stock Trainer's.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import EvalPrediction

from trainer.data.dataset import MultitaskDataset
from trainer.files import follow_umask
from trainer.layout import CHECKPOINT_PREFIX, RunDirs
from trainer.model.modeling import MultitaskModel
from trainer.model.sharding import keep_fsdp_on_cpu
from trainer.sampling.eval_order import OrderedSampler, length_order, restore
from trainer.sampling.sampler import MultitaskBatchSampler
from trainer.tasks.spec import TaskSpec
from trainer.training.callbacks import LastEvaluation, ResumableTensorBoard, StepShares, TaskProgressCallback
from trainer.training.divergence import NO_STEP, DiskFull, FiniteLossGuard, TrainingDiverged, out_of_space
from trainer.training.metrics import AGGREGATE_METRIC, aggregate_score, metrics_by_task

logger = logging.getLogger(__name__)


def leave_process_group() -> None:
    """Destroy this process's torch.distributed group at the end of a run, as torch asks. Left to the interpreter's
    exit, a process that ends before the main one (which still exports and uploads) can abort there: "terminate
    called without an active exception", seen on a torchrun rank with gloo. No collective runs after cleanup."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


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
        sampling_cap: int | None = None,
        group_by_length: bool = False,
        weighting_learning_rate: float | None = None,
        log_dir: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, compute_metrics=self._task_metrics, preprocess_logits_for_metrics=self._reduce_logits,
                         **kwargs)
        self.progress = TaskProgressCallback()
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(self.progress)
        callbacks = self.callback_handler.callbacks  # replaced in place: it logs before our callbacks run
        for i, callback in enumerate(callbacks):
            if type(callback) is TensorBoardCallback:
                callbacks[i] = ResumableTensorBoard(log_dir)
        self.last_evaluation = LastEvaluation()
        self.add_callback(self.last_evaluation)
        self.tasks = tasks
        self.tasks_by_name = {t.name: t for t in tasks}
        self._task_index = {t.name: i for i, t in enumerate(tasks)}
        self._task_loss_sums = torch.zeros(len(tasks), device=self.args.device)
        self._task_loss_counts = torch.zeros(len(tasks), dtype=torch.long)
        # per task, the first step whose loss was not finite; filled on the device, read at logging steps
        self._first_nonfinite = torch.full((len(tasks),), NO_STEP, dtype=torch.long, device=self.args.device)
        self.diverged: TrainingDiverged | None = None
        self.add_callback(FiniteLossGuard(self))
        self.sampling = sampling
        self.sampling_temperature = sampling_temperature
        self.sampling_cap = sampling_cap
        self.add_callback(StepShares([t.name for t in tasks], self.log))
        self.weighting_learning_rate = weighting_learning_rate
        self.group_by_length = group_by_length
        self._eval_task: TaskSpec | None = None
        self._eval_batches = 0
        self._eval_predict_seconds = 0.0  # time the current task's kind spent on `eval_predictions` (generation)
        self._eval_order: np.ndarray | None = None  # the order the current dev split is evaluated in

    def create_accelerator_and_postprocess(self) -> None:
        """The stock accelerator; on CPU with FSDP=true, with the FSDP plugin accelerate leaves out there
        (`trainer.model.sharding.keep_fsdp_on_cpu`)."""
        super().create_accelerator_and_postprocess()
        if keep_fsdp_on_cpu(self.accelerator, self.args.fsdp_plugin_args):
            self.is_fsdp_enabled = True

    # -- training data ------------------------------------------------------------------

    def make_batch_sampler(self) -> MultitaskBatchSampler:
        dataset: MultitaskDataset = self.train_dataset
        return MultitaskBatchSampler(
            dataset.task_sizes(),
            batch_size=self._train_batch_size,
            strategy=self.sampling,
            temperature=self.sampling_temperature,
            cap=self.sampling_cap,
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
        sampler = self.make_batch_sampler()
        if not sampler.strategy.one_task_per_step:
            self._freeze_unused_parameters(sampler)
        return EpochDataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def _freeze_unused_parameters(self, sampler: MultitaskBatchSampler) -> None:
        """Freeze parameters that no task's loss uses (RoBERTa's pooler, say), found with one probe step.

        Every step of SAMPLING=all_tasks uses every head, so DDP runs with find_unused_parameters off;
        a parameter that never gets a gradient would stall its gradient reduction. It happens before
        the optimizer and DDP are built (the Trainer asks for the dataloader first), and changes
        nothing else: such a parameter would never have been updated.
        """
        model = self._unwrapped_model
        first_step = [i for _, batch in sampler.global_schedule()[0] for i in batch[:2].tolist()]
        inputs = self._prepare_inputs(self.data_collator(self.train_dataset.__getitems__(first_step)))
        with torch.random.fork_rng():
            generator = torch.Generator().manual_seed(0)
            batches = {n: self._kind_prepare(b, generator) for n, b in inputs["batches"].items()} \
                if "batches" in inputs else {inputs["task"]: self._kind_prepare(inputs, generator)}
            model(batches=batches).loss.backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        for name, param in model.named_parameters():
            param.grad = None
            if name in unused:
                param.requires_grad_(False)
        if unused:
            logger.info("SAMPLING=all_tasks: %d parameter tensor(s) no task uses are frozen: %s", len(unused),
                        ", ".join(unused[:4]) + (" ..." if len(unused) > 4 else ""))

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
        if "batches" in inputs:  # a SAMPLING=all_tasks step: every task's batch, in task order
            return {"batches": {n: self._kind_prepare(batch, generator) for n, batch in inputs["batches"].items()}}
        return self._kind_prepare(inputs, generator)

    def _kind_prepare(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        return self.tasks_by_name[batch["task"]].kind.prepare_inputs(batch, self.processing_class, generator)

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None):
        return super().training_step(model, self._kind_inputs(inputs, training=True), num_items_in_batch)

    def prediction_step(self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None):
        """The stock step (loss, logits); a kind that predicts some other way (seq2seq generates) replaces the
        logits with its `eval_predictions`, as `Seq2SeqTrainer` does with generated tokens."""
        inputs = self._kind_inputs(inputs, training=False)
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        task = self._eval_task
        if prediction_loss_only or task is None:
            return loss, logits, labels
        started = time.perf_counter()
        with self.accelerator.autocast():  # PRECISION's autocast, as the prepared model's forward has: bf16 matmuls
            predictions = task.kind.eval_predictions(task, self._unwrapped_model.active_task_model(task.name),
                                                     inputs, self.processing_class)
        if predictions is None:
            return loss, logits, labels
        self._eval_predict_seconds += time.perf_counter() - started
        return loss, predictions, labels

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> Any:
        """The model weights each task's loss (and sums them in an all_tasks step); this keeps the
        unweighted per-task losses for the log."""
        outputs = model(**inputs)
        task_losses = outputs.get("task_losses") or {}  # training only
        for task, task_loss in task_losses.items():
            index = self._task_index[task]
            self._task_loss_sums[index] += task_loss.detach().float()  # on the device: no host sync per step
            self._task_loss_counts[index] += 1
        if task_losses:
            self._record_nonfinite(task_losses, outputs.loss.detach())
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _record_nonfinite(self, task_losses: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        """Note the step in `_first_nonfinite` for each task whose loss is not finite (all the step's tasks when
        only the weighted sum is). Device operations only: nothing waits for the GPU here."""
        own = {task: ~torch.isfinite(task_loss.detach()) for task, task_loss in task_losses.items()}
        only_total = ~torch.isfinite(loss) & ~torch.stack(list(own.values())).any()
        step = self.state.global_step + 1  # the step being computed
        for task, bad in own.items():
            index = self._task_index[task]
            first = self._first_nonfinite[index]
            self._first_nonfinite[index] = torch.where((bad | only_total) & (first == NO_STEP), step, first)

    def check_finite_losses(self) -> None:
        """Stop the run, without saving or evaluating, when any loss since the start was not finite.

        Called at logging steps (where `log` reads the losses anyway) and before saves and evaluations, so a
        non-finite loss stops the run at the next of those at the latest, and every checkpoint saved was
        computed from finite losses. Under DDP every rank takes the same (gathered) decision.
        """
        first = self._first_nonfinite
        if self.args.world_size > 1:  # a collective: every rank calls this at the same step
            first = self.accelerator.gather(first).view(self.args.world_size, -1).min(0).values
        steps = first.tolist()
        bad = [step for step in steps if step != NO_STEP]
        if not bad:
            return
        step = min(bad)
        self.diverged = TrainingDiverged(step, [t.name for t, s in zip(self.tasks, steps, strict=True) if s == step],
                                         self.state.global_step)
        self.control.should_training_stop = True
        self.control.should_save = self.control.should_evaluate = False

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `<task>_loss`, each task's mean (unweighted) training loss since the last log, beside `loss`."""
        if "loss" in logs:
            self.check_finite_losses()
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
            model = self._unwrapped_model
            if model.task_weighting != "static":  # learned weights change: log them
                logs.update({f"{t}_weight": round(w, 4) for t, w in model.loss_weighting.current().items()})
        super().log(logs, start_time)

    @property
    def _unwrapped_model(self) -> MultitaskModel:
        """The MultitaskModel itself, out of whatever DDP or accelerate wrapped it in."""
        return self.accelerator.unwrap_model(self.model)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The stock optimizer, with learned loss weights in their own group: no weight decay, and their
        own learning rate (they start at 0 and must move much further than the encoder's weights)."""
        weighting = [p for p in self._unwrapped_model.loss_weighting.parameters() if p.requires_grad]
        if self.optimizer is not None or not weighting:
            return super().create_optimizer(model)
        ids = {id(p) for p in weighting}
        for p in weighting:
            p.requires_grad_(False)  # keeps them out of the stock groups
        try:
            optimizer = super().create_optimizer(model)
        finally:
            for p in weighting:
                p.requires_grad_(True)
        assert not any(id(p) in ids for g in optimizer.param_groups for p in g["params"])
        optimizer.add_param_group({"params": weighting, "weight_decay": 0.0,
                                   "lr": self.weighting_learning_rate or self.args.learning_rate})
        return optimizer

    # -- evaluation ---------------------------------------------------------------------

    def _get_eval_sampler(self, eval_dataset: Any) -> torch.utils.data.Sampler | None:
        """A task's split in length-sorted order (see `trainer.sampling.eval_order`): batches pad to nearly their own
        length. Under DDP accelerate deals the batches to the ranks in turn and gathers them back in this order."""
        if not isinstance(eval_dataset, MultitaskDataset):
            self._eval_order = None
            return super()._get_eval_sampler(eval_dataset)
        self._eval_order = length_order([n for lengths in eval_dataset.lengths() for n in lengths])
        return OrderedSampler(self._eval_order)

    def _reduce_logits(self, logits: Any, labels: torch.Tensor) -> Any:
        return self._eval_task.kind.reduce_logits(logits, labels)

    def _task_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        """The kind's metrics, on predictions and labels put back in the dev split's order (one row per feature of
        the tokenised split, which the kind may read: question answering's windows)."""
        predictions, labels = prediction.predictions, prediction.label_ids
        if self._eval_order is not None:
            predictions, labels = restore(predictions, self._eval_order), restore(labels, self._eval_order)
        task = self._eval_task
        predictions, labels = task.kind.decode_predictions(task, predictions, labels, self.processing_class)
        return task.kind.split_metrics(task, predictions, labels, self.eval_dataset[task.name].splits[task.name])

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
            self._eval_predict_seconds = 0.0
            self.progress.task_name = task.name
            prefix = f"{metric_key_prefix}_{task.name}"
            metrics.update(super().evaluate(self.eval_dataset[task.name], ignore_keys, prefix))
            if self._eval_predict_seconds:
                logger.info("%s: %s predicting its dev split took %.1f s", task.name, task.kind.name,
                            self._eval_predict_seconds)
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
            model = self._unwrapped_model
            model.save_config(output_dir or self.args.output_dir)
            follow_umask(output_dir or self.args.output_dir)  # safetensors writes 0600

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """The stock checkpoint; when the disk is full, its partial folder is removed and the run stops with one
        line naming the space it needs."""
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as err:
            folder = RunDirs(self._get_output_dir(trial)).checkpoint(self.state.global_step)
            if not self.args.should_save or not out_of_space(err, folder):
                raise
            shutil.rmtree(folder, ignore_errors=True)
            free = shutil.disk_usage(folder.parent).free
            if self.progress.training_bar is not None:
                self.progress.training_bar.close()  # the error line starts on a line of its own
            raise DiskFull(f"no space left on the disk of {folder.parent} to save {folder.name}: a checkpoint needs "
                           f"about {self._checkpoint_bytes(folder.parent) / 1e6:.1f} MB, {free / 1e6:.1f} MB are "
                           "free; free some space or set OUTPUT_DIR to a larger disk (RESUME=auto continues from the "
                           "last checkpoint)") from None

    def _checkpoint_bytes(self, output_dir: Path) -> int:
        """What a checkpoint takes: the size of the newest one on disk, else the weights it saves (with an adapter,
        only what trains) plus AdamW's two moments of what trains."""
        for folder in sorted(output_dir.glob(f"{CHECKPOINT_PREFIX}*"), key=lambda p: p.stat().st_mtime, reverse=True):
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            if size:
                return size
        saved = sum(t.numel() * t.element_size() for t in self._unwrapped_model.state_dict().values())
        return saved + 2 * sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad)
