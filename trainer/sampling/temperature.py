"""The epoch keeps the proportional number of steps, split across tasks with p(task) ~ weight^(1/T).

A task's weight is its number of batches, or with SAMPLING_CAP=K min(examples, K): the cap applies before the 1/T
exponent. Small tasks are cycled through reshuffled passes; large tasks are cut short. `uniform` is T = inf.
"""

from __future__ import annotations

import math

import numpy as np

from trainer.sampling.base import Step, Strategy, mixture


class Temperature(Strategy):
    name = "temperature"
    takes_cap = True

    def shares(self, sampler) -> np.ndarray:
        weights = self.weights(sampler)
        probs = np.ones_like(weights) if math.isinf(self.temperature) else weights ** (1.0 / self.temperature)
        return probs / probs.sum()

    def plan(self, sampler, rng: np.random.Generator) -> list[Step]:
        return mixture(sampler, self.shares(sampler), rng, self.steps(sampler.batches_per_task()))


class Uniform(Temperature):
    name = "uniform"
    takes_cap = False  # every task weighs the same: a cap changes nothing

    def __init__(self, temperature: float = 2.0, cap: int | None = None) -> None:
        super().__init__(math.inf, cap)
