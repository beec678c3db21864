"""The Trainer callbacks of a run that are not a concern of their own: the progress bar, TensorBoard on resume,
the last evaluation, each epoch's steps per task, and the final save."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import has_length

from trainer.sampling.sampler import MultitaskBatchSampler
from trainer.training.metrics import AGGREGATE_METRIC

logger = logging.getLogger(__name__)


class TaskProgressCallback(ProgressCallback):
    """The stock progress bars, with each evaluation bar named after its task.

    Without a terminal (a log file, Vertex AI) the nested evaluation bars are left out: tqdm draws
    them with cursor-up escapes (`ESC[A`), which are noise in a log.
    """

    def __init__(self) -> None:
        super().__init__()
        self.task_name = ""

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not sys.stderr.isatty():
            return
        if state.is_world_process_zero and has_length(eval_dataloader) and self.prediction_bar is None:
            self.prediction_bar = tqdm(total=len(eval_dataloader), leave=self.training_bar is None,
                                       dynamic_ncols=True, desc=f"eval {self.task_name}")
        super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)


class ResumableTensorBoard(TensorBoardCallback):
    """The stock TensorBoard callback, except that a resumed run's first event file starts with a purge
    marker at the first step it trains (the checkpoint's step + 1).

    The steps logged after that checkpoint and before the run stopped (a kill, a preemption) are in an
    earlier event file, and the resumed run logs them again. The marker (`SummaryWriter(purge_step=…)`,
    a SessionLog START) tells TensorBoard's readers to drop the earlier files' events from that step on,
    so every step appears once, whether the earlier files are on local disk or in the bucket beside the
    new ones.
    """

    purge_step: int | None = None

    def __init__(self, log_dir: str | None = None) -> None:
        super().__init__()
        if log_dir is not None:  # LOG_DIR; the stock callback reads it only from TENSORBOARD_LOGGING_DIR
            self.logging_dir = log_dir

    def on_train_begin(self, args, state, control, **kwargs):
        self.purge_step = state.global_step + 1 if state.global_step else None
        super().on_train_begin(args, state, control, **kwargs)

    def _init_summary_writer(self, args):
        if self._SummaryWriter is not None:
            self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=self.purge_step)
            self.purge_step = None  # only the resumed run's first file purges


class LastEvaluation(TrainerCallback):
    """Remember the newest evaluation and its step, so the end of a run need not evaluate again."""

    def __init__(self) -> None:
        self.step = -1
        self.metrics: dict[str, float] = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and any(k.endswith(f"_{AGGREGATE_METRIC}") for k in metrics):
            self.step, self.metrics = state.global_step, dict(metrics)


class StepShares(TrainerCallback):
    """At the end of each epoch, each task's realised share of the epoch's steps beside the share its strategy means
    it to get (SAMPLING, SAMPLING_TEMPERATURE, SAMPLING_CAP): one line on the main process, e.g.
    `epoch 1: steps per task: stsb 40.1 % (expected 40.0 %), ...`, and `<task>_share` (0 to 1) in the logged
    metrics (TensorBoard's `train/<task>_share`), so a mix can be checked against the formula that chose it.

    The shares count the batches of the steps the epoch trained, read back from the sampler's schedule: the steps
    before a resume count, and an epoch cut short (MAX_STEPS, a stop) counts the steps it trained. Every rank
    draws the same tasks, so every rank computes the same shares. Not logged for SAMPLING=all_tasks, whose every
    step trains every task.
    """

    def __init__(self, task_names: list[str], log: Callable[[dict[str, float]], None]) -> None:
        self.task_names = task_names
        self.log = log

    def on_epoch_end(self, args, state, control, train_dataloader=None, **kwargs):
        sampler = getattr(train_dataloader, "batch_sampler", None)
        if not isinstance(sampler, MultitaskBatchSampler) or not sampler.strategy.one_task_per_step:
            return
        total = len(sampler)
        # the Trainer sets state.epoch to epoch + batches trained / batches per epoch, counting batches it skipped on
        # resume; the sampler holds the epoch it is in
        steps = min(total, round((state.epoch - sampler.epoch) * total))
        if steps <= 0:
            return
        realised = sampler.realised_shares(steps)
        expected = sampler.strategy.shares(sampler).tolist()
        if state.is_world_process_zero:
            part = "" if steps == total else f" ({steps} of {total} steps)"
            shares = ", ".join(f"{name} {100 * r:.1f} % (expected {100 * e:.1f} %)"
                               for name, r, e in zip(self.task_names, realised, expected, strict=True))
            logger.info("epoch %d%s: steps per task: %s", sampler.epoch + 1, part, shares)
        self.log({f"{name}_share": round(r, 4) for name, r in zip(self.task_names, realised, strict=True)})


class FinalSaveCallback(TrainerCallback):
    """Always checkpoint the last step, so the steps after the last SAVE_STEPS are never lost."""

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if state.global_step >= state.max_steps:
            control.should_save = True
        return control
