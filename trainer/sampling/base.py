"""What a sampling strategy is: the plan of one epoch, as (task, global batch) pairs per step.

A strategy sees the sampler only through `batches_per_task()` and `task_pass(task, rng)` (one
shuffled pass over a task, cut into global batches). It draws everything from the `rng` it is given,
which the sampler seeds with (seed, epoch), so a plan is the same on every rank and on resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from trainer.sampling.sampler import MultitaskBatchSampler

Step = list[tuple[int, np.ndarray]]  # the (task, global batch) pairs one optimizer step trains


class Strategy:
    name = ""
    one_task_per_step = True  # False: a step holds a batch of every task (the losses are summed)

    def __init__(self, temperature: float = 2.0) -> None:
        self.temperature = temperature

    def steps(self, batches_per_task: list[int]) -> int:
        """Steps per epoch."""
        return sum(batches_per_task)

    def plan(self, sampler: MultitaskBatchSampler, rng: np.random.Generator) -> list[Step]:
        raise NotImplementedError


def cycled(sampler: MultitaskBatchSampler, task: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` global batches of a task: reshuffled passes, as many as needed, cut short at `count`."""
    batches: list[np.ndarray] = []
    while len(batches) < count:
        batches += sampler.task_pass(task, rng)
    return batches[:count]


def interleave(order: np.ndarray | list[int], per_task: list[list[np.ndarray]]) -> list[Step]:
    """One single-task step per entry of `order`, taking each task's batches in turn."""
    cursors = [0] * len(per_task)
    plan = []
    for task in order:
        plan.append([(int(task), per_task[task][cursors[task]])])
        cursors[task] += 1
    return plan
