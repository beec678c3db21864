"""A run that goes wrong on its own: a non-finite loss (TRAINING_DIVERGED) or a full disk, each one clear line."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import (
    TrainerCallback,
)

from trainer.checkpoints.local import (
    latest_complete_checkpoint,
)
from trainer.errors import UserError
from trainer.layout import BucketDirs

if TYPE_CHECKING:
    from trainer.training.trainer import MultitaskTrainer

NO_STEP = 2**62  # "no non-finite loss yet", in the per-task record of the first step that had one


class TrainingDiverged(UserError):
    """A training loss became NaN or infinite; the run stopped without saving or evaluating that state."""

    def __init__(self, step: int, tasks: list[str], stopped_at: int) -> None:
        self.step, self.tasks, self.stopped_at = step, tasks, stopped_at
        super().__init__(f"the training loss of {' and '.join(tasks)} became nan or inf at step {step} (stopped at "
                         f"step {stopped_at}, nothing saved after it)")


class DiskFull(UserError):
    """A checkpoint did not fit on the disk; its partial folder is removed."""


class FiniteLossGuard(TrainerCallback):
    """Checks the losses before a save or an evaluation that is not also a logging step (the log checks
    those): no checkpoint is ever saved from weights a non-finite loss has touched."""

    def __init__(self, trainer: MultitaskTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if (control.should_save or control.should_evaluate) and not control.should_log:
            self.trainer.check_finite_losses()
        return control


def out_of_space(err: BaseException, folder: Path) -> bool:
    """An ENOSPC, or a writer's error (torch.save's RuntimeError hides the errno) while the disk is full."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder.parent).free < 1024 * 1024
    except OSError:
        return False


def diverged_error(diverged: TrainingDiverged, output_dir: str, dirs: BucketDirs | None) -> TrainingDiverged:
    """The one line of a run whose loss became NaN or inf: the step, the task and the last finite checkpoint."""
    last = latest_complete_checkpoint(output_dir)  # saves stop at the first non-finite loss: this one is finite
    advice = "lower LEARNING_RATE or check the task's data"
    if last:
        where = f"the last finite checkpoint is {last}" + (f" (also in {dirs.checkpoints})" if dirs else "")
        advice += f", then resume with RESUME={last}"
    else:
        where = "no checkpoint was saved before it"
    diverged.args = (f"{diverged.args[0]}; {where}; {advice}",)
    return diverged
