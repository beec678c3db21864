"""Every step takes one batch from every task, and their weighted losses are summed (the GumGum recipe).

The epoch ends when the largest task is exhausted; the smaller tasks cycle through reshuffled passes.
Every head gets a gradient in every step.
"""

from __future__ import annotations

import numpy as np

from trainer.sampling.base import Step, Strategy, cycled


class AllTasks(Strategy):
    name = "all_tasks"
    one_task_per_step = False

    def steps(self, batches_per_task: list[int]) -> int:
        return max(batches_per_task)

    def plan(self, sampler, rng: np.random.Generator) -> list[Step]:
        steps = self.steps(sampler.batches_per_task())
        per_task = [cycled(sampler, t, steps, rng) for t in range(sampler.num_tasks)]
        return [[(t, per_task[t][step]) for t in range(sampler.num_tasks)] for step in range(steps)]
