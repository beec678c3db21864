"""Sampling strategies: which task (or tasks) each step of an epoch trains. One module each, one line here."""

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
