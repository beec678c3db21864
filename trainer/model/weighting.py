"""How per-task losses are weighted before they are summed or backpropagated.

- static: a fixed weight per task (TASK_WEIGHTS, default 1).
- uncertainty: Kendall, Gal & Cipolla (2018). Each task t learns s_t = log(sigma_t^2) and its loss
  becomes exp(-s_t) * L_t + s_t: a task whose loss stays high gets a smaller weight, and the + s_t
  term stops every weight from shrinking to zero. The s_t are model parameters, so they train with
  the model, sit in every checkpoint and resume exactly.

A weighting is a submodule of the multitask model and is applied inside its forward, so DDP sees
every parameter that takes part in the loss.
"""

from __future__ import annotations

import torch
from torch import nn


class StaticWeighting(nn.Module):
    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.weights = {t: float((weights or {}).get(t, 1.0)) for t in tasks}

    def forward(self, task: str, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.weights[task]

    def current(self) -> dict[str, float]:
        return dict(self.weights)


class UncertaintyWeighting(nn.Module):
    PARAMETER = "log_variance"

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.index = {t: i for i, t in enumerate(tasks)}
        self.log_variance = nn.Parameter(torch.zeros(len(tasks)))

    def forward(self, task: str, loss: torch.Tensor) -> torch.Tensor:
        s = self.log_variance[self.index[task]]
        return torch.exp(-s) * loss + s

    def current(self) -> dict[str, float]:
        """The effective weight exp(-s_t) of each task's loss. Under FSDP the s_t are a shard (a DTensor): every
        process gathers them (`full_tensor`, a collective; the Trainer logs on every process at the same step)."""
        log_variance = self.log_variance.detach()
        if hasattr(log_variance, "full_tensor"):
            log_variance = log_variance.full_tensor()
        weights = torch.exp(-log_variance.float()).tolist()
        return dict(zip(self.index, weights, strict=True))


WEIGHTINGS: dict[str, type[nn.Module]] = {"static": StaticWeighting, "uncertainty": UncertaintyWeighting}
