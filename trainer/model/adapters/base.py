"""What an adapter mode is (`Adapter`): which of the shared encoder's weights train, which adapter a task's forward
runs through, and the encoder a task's standalone model is made of; and the LoRA options the settings give
(`LoraOptions`).

An adapter never touches the heads or the loss weighting: they are outside the encoder and train in full in every
mode. It changes the encoder in place, so its class, `base_model_prefix` and the task models' shared reference stay.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from trainer.config.settings import Settings


@dataclass(frozen=True)
class LoraOptions:
    """LORA_R, LORA_ALPHA, LORA_DROPOUT and LORA_TARGET_MODULES (None: peft's default for the architecture)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LoraOptions:
        return cls(settings.lora_r, settings.lora_alpha, settings.lora_dropout, settings.lora_target_modules)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["target_modules"] = list(self.target_modules) if self.target_modules else None
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> LoraOptions:
        targets = record.get("target_modules")
        return cls(record["r"], record["alpha"], record["dropout"], tuple(targets) if targets else None)


class Adapter:
    """One ADAPTER mode. `check` runs before anything is written (bad settings stop the run with one line);
    `attach` changes the encoder once, when the multitask model is built; `activate` runs before each task's forward."""

    mode: ClassVar[str]

    def __init__(self, options: LoraOptions, tasks: list[str]) -> None:
        self.options = options
        self.tasks = list(tasks)

    def check(self, encoder: nn.Module) -> None:
        """Refuse, with a `UserError`, what `attach` could not do to this encoder."""

    def attach(self, encoder: nn.Module) -> None:
        """Add the adapter(s) to `encoder` in place and freeze what does not train."""

    def activate(self, task: str) -> None:
        """Make `task`'s adapter the one the encoder's forward runs through."""

    def encoder_weights(self, encoder: nn.Module, task: str | None) -> dict[str, torch.Tensor]:
        """The weights of the plain encoder `task`'s standalone model gets, under the base's names: with an adapter,
        `task`'s merged into the base (`None`: the base alone). Tensors the merge leaves alone are the encoder's own,
        not copies, so exporting a large base costs one model's memory, not three."""
        return encoder.state_dict()

    def describe(self, encoder: nn.Module) -> str:
        """The log line that says what trains; empty when there is nothing to say."""
        return ""

    def to_dict(self) -> dict[str, Any]:
        """What `multitask.json` records to rebuild the same adapters (`from_dict`)."""
        return {"mode": self.mode, **self.options.to_dict()}
