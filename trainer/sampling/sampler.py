"""A deterministic multitask batch sampler that keeps DDP ranks in step.

The schedule of an epoch is a pure function of (seed, epoch): which task each step
trains, and which examples each rank gets. Every rank builds the same *global* batch
for step `s` (one task, up to `batch_size * num_replicas` examples; with `all_tasks`, one
such batch per task) and takes its own disjoint slice, so all ranks run the same heads in
the same step and DDP's gradient reduction always lines up. Resuming mid-epoch replays the
same schedule: the Trainer skips the batches already trained.

Which tasks a step trains is the strategy's (`trainer.sampling`); this class cuts tasks into
shuffled global batches, optionally grouped by length, and slices them per rank.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from trainer.sampling import STRATEGIES
from trainer.sampling.base import Step

MEGABATCH_FACTOR = 200  # length grouping sorts within windows of this many global batches


class MultitaskBatchSampler(Sampler[list[int]]):
    """Yield this rank's index lists for a dataset laid out as task 0, task 1, ... end to end.

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
        cap: int | None = None,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampling strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if batch_size <= 0 or not 0 <= rank < num_replicas:
            raise ValueError("batch_size must be positive and 0 <= rank < num_replicas")
        if not task_sizes or min(task_sizes) <= 0:
            raise ValueError("every task needs at least one example")
        if cap is not None and cap <= 0:
            raise ValueError("a sampling cap must be a positive number of examples")
        self.task_sizes = list(task_sizes)
        self.offsets = np.cumsum([0, *self.task_sizes[:-1]])
        self.batch_size = batch_size
        self.strategy = STRATEGIES[strategy](temperature, cap)
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.lengths = [np.asarray(x) for x in lengths] if lengths is not None else None
        self.epoch = 0

    @property
    def num_tasks(self) -> int:
        return len(self.task_sizes)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches_per_task(self) -> list[int]:
        return [-(-n // self.global_batch_size) for n in self.task_sizes]

    def __len__(self) -> int:
        return self.strategy.steps(self.batches_per_task())

    # -- the schedule -------------------------------------------------------------------

    def task_pass(self, task: int, rng: np.random.Generator) -> list[np.ndarray]:
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

    def global_schedule(self) -> list[Step]:
        """(task, global batch) pairs for every step of the current epoch; identical on all ranks."""
        return self.strategy.plan(self, np.random.default_rng([self.seed, self.epoch]))

    def realised_shares(self, steps: int) -> list[float]:
        """Each task's share of the batches of the current epoch's first `steps` steps.

        The schedule is a pure function of (seed, epoch) and the Trainer trains it in order (a resumed epoch
        skips the steps trained before the resume, then goes on), so this counts what the epoch trained, the
        steps before a resume included, on every rank alike.
        """
        counts = np.zeros(self.num_tasks)
        for step in self.global_schedule()[:steps]:
            for task, _ in step:
                counts[task] += 1
        return (counts / max(counts.sum(), 1)).tolist()

    def rank_slice(self, batch: np.ndarray) -> list[int]:
        """This rank's contiguous share of a global batch (sizes differ by at most one)."""
        return np.array_split(batch, self.num_replicas)[self.rank].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.global_schedule():
            yield [i for _, batch in step for i in self.rank_slice(batch)]
