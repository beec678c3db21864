"""Tasks take turns in a fixed order; a task whose batches run out drops out of the rotation."""

from __future__ import annotations

import numpy as np

from trainer.sampling.base import Step, Strategy, interleave


class RoundRobin(Strategy):
    name = "round_robin"

    def plan(self, sampler, rng: np.random.Generator) -> list[Step]:
        per_task = [sampler.task_pass(t, rng) for t in range(sampler.num_tasks)]
        rounds = max(map(len, per_task))
        order = [t for step in range(rounds) for t in range(sampler.num_tasks) if step < len(per_task[t])]
        return interleave(order, per_task)
