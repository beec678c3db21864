"""What a sampling strategy is: the plan of one epoch, as (task, global batch) pairs per step.

A strategy sees the sampler only through `task_sizes`, `batches_per_task()` and `task_pass(task, rng)` (one
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
    takes_cap = False  # True: SAMPLING_CAP applies (a task weighs min(examples, K), T5's capped mixing)

    def __init__(self, temperature: float = 2.0, cap: int | None = None) -> None:
        if cap is not None and not self.takes_cap:
            raise ValueError(f"a sampling cap applies to proportional and temperature sampling, not to {self.name}")
        self.temperature = temperature
        self.cap = cap

    def steps(self, batches_per_task: list[int]) -> int:
        """Steps per epoch."""
        return sum(batches_per_task)

    def weights(self, sampler: MultitaskBatchSampler) -> np.ndarray:
        """Each task's weight in the mix: its batches, held with a cap K to the batches of K examples, the
        min(examples, K) of T5 (JMLR 21:140, §3.5.2) counted in global batches as every weight here is, so that a
        cap above every task's size changes nothing."""
        batches = np.array(sampler.batches_per_task(), dtype=float)
        if self.cap is None:
            return batches
        return np.minimum(batches, self.cap_batches(sampler))

    def cap_batches(self, sampler: MultitaskBatchSampler) -> int:
        """SAMPLING_CAP in global batches (rounded up): the most a task weighs."""
        return -(-self.cap // sampler.global_batch_size)

    def caps_something(self, sampler: MultitaskBatchSampler) -> bool:
        """Whether SAMPLING_CAP holds any task below its size (else the plan is the uncapped one)."""
        return self.cap is not None and max(sampler.batches_per_task()) > self.cap_batches(sampler)

    def shares(self, sampler: MultitaskBatchSampler) -> np.ndarray:
        """The share of an epoch's steps each task is meant to get (the realised shares are logged against it)."""
        weights = self.weights(sampler)
        return weights / weights.sum()

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


def step_counts(shares: np.ndarray, total: int) -> list[int]:
    """Steps per task: largest-remainder rounding of share * total (exact counts, so an epoch's realised shares are
    the formula's to within one step)."""
    counts = np.floor(shares * total).astype(int)
    remainders = shares * total - counts
    for i in np.argsort(-remainders, kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def mixture(sampler: MultitaskBatchSampler, shares: np.ndarray, rng: np.random.Generator,
            total: int) -> list[Step]:
    """`total` steps split across tasks by `shares`, in random order: a task with more steps than batches cycles
    through reshuffled passes, one with fewer is cut short."""
    counts = step_counts(shares, total)
    per_task = [cycled(sampler, t, count, rng) for t, count in enumerate(counts)]
    order = rng.permutation(np.repeat(np.arange(sampler.num_tasks), counts))
    return interleave(order, per_task)
