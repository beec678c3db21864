"""Which task each step trains: one small class per strategy (`proportional.py`, `temperature.py`, `round_robin.py`,
`all_tasks.py`, registered in `STRATEGIES`), the deterministic DDP-safe batch sampler (`sampler.py`), and evaluation in
length-sorted batches (`eval_order.py`).

May import: nothing else of `trainer` (the settings import the strategies' names from here).
"""


from trainer.sampling.all_tasks import AllTasks
from trainer.sampling.base import Strategy
from trainer.sampling.proportional import Proportional
from trainer.sampling.round_robin import RoundRobin
from trainer.sampling.temperature import Temperature, Uniform

STRATEGIES: dict[str, type[Strategy]] = {
    "proportional": Proportional,
    "temperature": Temperature,
    "uniform": Uniform,
    "round_robin": RoundRobin,
    "all_tasks": AllTasks,
}

__all__ = ["STRATEGIES", "Strategy"]
