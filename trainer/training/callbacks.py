"""The Trainer callbacks of a run that are not a concern of their own: the progress bar, TensorBoard on resume,
the last evaluation, and the final save."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import has_length

from trainer.training.metrics import AGGREGATE_METRIC


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


class FinalSaveCallback(TrainerCallback):
    """Always checkpoint the last step, so the steps after the last SAVE_STEPS are never lost."""

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if state.global_step >= state.max_steps:
            control.should_save = True
        return control
