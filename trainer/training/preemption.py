"""Graceful preemption: on SIGTERM, finish the step, checkpoint, and stop.

Spot VMs and Vertex AI send SIGTERM before they take a machine away. The handler only
sets a flag; at the end of the current step the callback asks the Trainer to save and
stop. Under DDP the flag is OR-reduced across ranks every step, so all ranks stop on the
same step even if the signal reached them at different moments. The flag is a CPU tensor
reduced over a gloo group (a side group created once under NCCL), so the check never waits
for the GPU: the host keeps queueing the next step's kernels. The run then exits with
`EXIT_PREEMPTED` so that Vertex restarts the worker, which resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

logger = logging.getLogger(__name__)

EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a process killed by SIGTERM reports


class PreemptionCallback(TrainerCallback):
    """Turn SIGTERM into "save a checkpoint at the end of this step, then stop training".

    `on_preempt(signalled_at)` runs once, at the end of that step, with the `time.monotonic()` of the signal
    (on a rank that only learnt of it from another: of the step's end), so that later waits count from it.
    """

    def __init__(self, on_preempt: Callable[[float], None] | None = None,
                 signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.on_preempt = on_preempt
        self.requested = False
        self.preempted = False
        self.signalled_at: float | None = None
        self._signals = signals
        self._previous: dict[int, Any] = {}
        self._group: Any = None  # the gloo group the flag is reduced over (DDP only)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if self._group is None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every rank begins training together: the one place to create the group collectively
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return control

    def _any_rank_requested(self) -> bool:
        if self._group is None:
            return self.requested
        flag = torch.tensor([1 if self.requested else 0])  # on the CPU: no device sync
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if self._any_rank_requested():
            if not self.preempted:
                logger.warning("SIGTERM received: saving a checkpoint at step %d and stopping", state.global_step)
                if self.signalled_at is None:
                    self.signalled_at = time.monotonic()
                if self.on_preempt:
                    self.on_preempt(self.signalled_at)
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        return control


PREEMPTION_UPLOAD_TIMEOUT = 25.0  # seconds after SIGTERM: Vertex AI gives a preempted worker 30 s


class Preempted(Exception):
    """Training stopped on SIGTERM after saving (and, with JOB_DIR, uploading) a checkpoint."""
