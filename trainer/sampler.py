"""A deterministic multitask batch sampler that keeps DDP ranks in step.

The schedule of an epoch is a pure function of (seed, epoch): which task each step
trains, and which examples each rank gets. Every rank builds the same *global* batch
for step `s` (one task, up to `batch_size * num_replicas` examples) and takes its own
disjoint slice, so all ranks run the same head in the same step and DDP's gradient
reduction always lines up. Resuming mid-epoch replays the same schedule: the Trainer
skips the batches already trained.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from trainer.settings import SamplingStrategy

STRATEGIES = typing.get_args(SamplingStrategy)
MEGABATCH_FACTOR = 50  # length grouping sorts within windows of this many global batches


class MultitaskBatchSampler(Sampler[list[int]]):
    """Yield this rank's index lists for a dataset laid out as task 0, task 1, ... end to end.

    Strategies:
      - proportional: every example once per epoch; tasks interleave at random in
        proportion to their number of batches.
      - temperature / uniform: the epoch has the same number of steps, split across tasks
        with p(task) ~ batches^(1/T) (uniform: T = inf). Small tasks are cycled through
        reshuffled passes; large tasks are cut short.
      - round_robin: tasks take turns in order; a task whose batches run out drops out.

    With several replicas a task's last global batch may hold fewer than `num_replicas`
    examples; it is topped up from the start of that task's epoch order so every rank has
    at least one example.
    """

    def __init__(
        self,
        task_sizes: Sequence[int],
        batch_size: int,
        strategy: str = "proportional",
        temperature: float = 2.0,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        lengths: Sequence[Sequence[int]] | None = None,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampling strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if batch_size <= 0 or not 0 <= rank < num_replicas:
            raise ValueError("batch_size must be positive and 0 <= rank < num_replicas")
        if not task_sizes or min(task_sizes) <= 0:
            raise ValueError("every task needs at least one example")
        self.task_sizes = list(task_sizes)
        self.offsets = np.cumsum([0, *self.task_sizes[:-1]])
        self.batch_size = batch_size
        self.strategy = strategy
        self.temperature = math.inf if strategy == "uniform" else temperature
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.lengths = [np.asarray(x) for x in lengths] if lengths is not None else None
        self.epoch = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches_per_task(self) -> list[int]:
        return [math.ceil(n / self.global_batch_size) for n in self.task_sizes]

    def __len__(self) -> int:
        return sum(self.batches_per_task())

    # -- the schedule -------------------------------------------------------------------

    def _task_pass(self, task: int, rng: np.random.Generator) -> list[np.ndarray]:
        """One shuffled pass over a task, cut into global batches of dataset indices."""
        order = rng.permutation(self.task_sizes[task])
        gbs = self.global_batch_size
        if self.lengths is not None:
            window = gbs * MEGABATCH_FACTOR
            lengths = self.lengths[task]
            windows = np.split(order, range(window, len(order), window))
            order = np.concatenate([w[np.argsort(-lengths[w], kind="stable")] for w in windows])
        batches = [order[i : i + gbs] for i in range(0, len(order), gbs)]
        if self.lengths is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        short = self.num_replicas - len(batches[-1])
        if short > 0:
            batches[-1] = np.concatenate([batches[-1], np.resize(order, short)])
        return [b + self.offsets[task] for b in batches]

    def _task_counts(self) -> list[int]:
        """Steps per task this epoch for the temperature/uniform strategies."""
        total = len(self)
        weights = np.array(self.batches_per_task(), dtype=float)
        probs = np.ones_like(weights) if math.isinf(self.temperature) else weights ** (1.0 / self.temperature)
        probs /= probs.sum()
        counts = np.floor(probs * total).astype(int)
        remainders = probs * total - counts
        for i in np.argsort(-remainders, kind="stable")[: total - counts.sum()]:
            counts[i] += 1
        return counts.tolist()

    def global_schedule(self) -> list[tuple[int, np.ndarray]]:
        """(task, global batch) for every step of the current epoch; identical on all ranks."""
        rng = np.random.default_rng([self.seed, self.epoch])
        num_tasks = len(self.task_sizes)
        if self.strategy == "proportional":
            per_task = [self._task_pass(t, rng) for t in range(num_tasks)]
            order = rng.permutation(np.repeat(np.arange(num_tasks), [len(b) for b in per_task]))
        elif self.strategy == "round_robin":
            per_task = [self._task_pass(t, rng) for t in range(num_tasks)]
            order = [t for step in range(max(map(len, per_task))) for t in range(num_tasks) if step < len(per_task[t])]
        else:
            counts = self._task_counts()
            per_task = []
            for t, count in enumerate(counts):
                batches: list[np.ndarray] = []
                while len(batches) < count:
                    batches += self._task_pass(t, rng)
                per_task.append(batches[:count])
            order = rng.permutation(np.repeat(np.arange(num_tasks), counts))
        cursors = [0] * num_tasks
        schedule = []
        for t in order:
            schedule.append((int(t), per_task[t][cursors[t]]))
            cursors[t] += 1
        return schedule

    def rank_slice(self, batch: np.ndarray) -> list[int]:
        """This rank's contiguous share of a global batch (sizes differ by at most one)."""
        return np.array_split(batch, self.num_replicas)[self.rank].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for _, batch in self.global_schedule():
            yield self.rank_slice(batch)
