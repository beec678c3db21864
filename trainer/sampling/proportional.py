"""Every example once per epoch; tasks interleave at random in proportion to their number of batches.

With SAMPLING_CAP=K (T5's examples-proportional mixing with a cap), a task weighs min(examples, K) instead: the epoch
keeps its number of steps, split as `temperature` splits them with T = 1, so a task larger than K is cut short and
the others cycle through reshuffled passes.
"""

from __future__ import annotations

import numpy as np

from trainer.sampling.base import Step, Strategy, interleave, mixture


class Proportional(Strategy):
    name = "proportional"
    takes_cap = True

    def plan(self, sampler, rng: np.random.Generator) -> list[Step]:
        if self.caps_something(sampler):
            return mixture(sampler, self.shares(sampler), rng, self.steps(sampler.batches_per_task()))
        per_task = [sampler.task_pass(t, rng) for t in range(sampler.num_tasks)]
        order = rng.permutation(np.repeat(np.arange(sampler.num_tasks), [len(b) for b in per_task]))
        return interleave(order, per_task)
