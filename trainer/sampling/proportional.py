"""Every example once per epoch; tasks interleave at random in proportion to their number of batches."""

from __future__ import annotations

import numpy as np

from trainer.sampling.base import Step, Strategy, interleave


class Proportional(Strategy):
    name = "proportional"

    def plan(self, sampler, rng: np.random.Generator) -> list[Step]:
        per_task = [sampler.task_pass(t, rng) for t in range(sampler.num_tasks)]
        order = rng.permutation(np.repeat(np.arange(sampler.num_tasks), [len(b) for b in per_task]))
        return interleave(order, per_task)
