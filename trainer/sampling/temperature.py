"""The epoch keeps the proportional number of steps, split across tasks with p(task) ~ batches^(1/T).

Small tasks are cycled through reshuffled passes; large tasks are cut short. `uniform` is T = inf.
"""

from __future__ import annotations

import math

import numpy as np

from trainer.sampling.base import Step, Strategy, cycled, interleave


class Temperature(Strategy):
    name = "temperature"

    def counts(self, batches_per_task: list[int]) -> list[int]:
        """Steps per task: largest-remainder rounding of p(task) * steps."""
        total = self.steps(batches_per_task)
        weights = np.array(batches_per_task, dtype=float)
        probs = np.ones_like(weights) if math.isinf(self.temperature) else weights ** (1.0 / self.temperature)
        probs /= probs.sum()
        counts = np.floor(probs * total).astype(int)
        remainders = probs * total - counts
        for i in np.argsort(-remainders, kind="stable")[: total - counts.sum()]:
            counts[i] += 1
        return counts.tolist()

    def plan(self, sampler, rng: np.random.Generator) -> list[Step]:
        counts = self.counts(sampler.batches_per_task())
        per_task = [cycled(sampler, t, count, rng) for t, count in enumerate(counts)]
        order = rng.permutation(np.repeat(np.arange(sampler.num_tasks), counts))
        return interleave(order, per_task)


class Uniform(Temperature):
    name = "uniform"

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__(math.inf)
