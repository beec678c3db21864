"""ADAPTER=lora: one LoRA adapter (peft's `LoraConfig`, injected in place) on the frozen shared encoder, trained by
every task; the heads and the loss weighting train in full.

The base's own weights are frozen, embeddings included, so a masked- or causal-LM head tied to the input embeddings
is frozen too (it is the same tensor); such a head's other weights (a transform, a bias) train. `LoraPerTask`
(`lora_per_task.py`) is this with one adapter per task.

LORA_TARGET_MODULES: peft's default for the architecture (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`),
else `all-linear`; a name that matches none of the encoder's layers is one line, before anything is written.
"""

from __future__ import annotations

import copy
import warnings

import torch
from peft import LoraConfig
from peft.functional import inject_adapter_in_model, set_adapter, set_requires_grad
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers.pytorch_utils import Conv1D

from trainer.errors import UserError
from trainer.model.adapters.base import Adapter

ALL_LINEAR = "all-linear"  # peft's shorthand: every linear layer
ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D)  # the layers LoRA can wrap


def adaptable_layers(encoder: nn.Module) -> list[str]:
    """The names (last part, each once) of the encoder's layers LoRA can wrap: what LORA_TARGET_MODULES may name."""
    return sorted({name.rpartition(".")[2] for name, module in encoder.named_modules()
                   if name and isinstance(module, ADAPTABLE)})


def lora_targets(encoder: nn.Module, requested: tuple[str, ...] | None) -> tuple[list[str] | str, str]:
    """What peft's `target_modules` gets, and where it comes from (for the log).

    A requested name must match a layer LoRA can wrap, as peft matches a list: the layer's full name or its last
    parts (`query` matches `encoder.layer.0.attention.self.query`)."""
    model_type = getattr(getattr(encoder, "config", None), "model_type", "")
    if requested:
        if list(requested) == [ALL_LINEAR]:
            return ALL_LINEAR, "LORA_TARGET_MODULES"
        names = [name for name, module in encoder.named_modules() if name and isinstance(module, ADAPTABLE)]
        missing = [t for t in requested if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            model = model_type or type(encoder).__name__
            raise UserError(f"LORA_TARGET_MODULES={','.join(requested)}: the model ({model}) has no layer named "
                            f"{', '.join(map(repr, missing))}; its layers LoRA can wrap are "
                            f"{', '.join(adaptable_layers(encoder))} (or leave it empty for peft's default, or "
                            f"{ALL_LINEAR})")
        return list(requested), "LORA_TARGET_MODULES"
    default = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if default:
        return (default if isinstance(default, str) else list(default)), f"peft's default for {model_type}"
    return ALL_LINEAR, f"peft has no default for {model_type or type(encoder).__name__}"


def tuner_layers(encoder: nn.Module) -> dict[str, BaseTunerLayer]:
    """The layers peft wrapped, by name (not those inside another tuner layer)."""
    found: dict[str, BaseTunerLayer] = {}
    for name, module in encoder.named_modules():
        if isinstance(module, BaseTunerLayer) and not any(name.startswith(outer + ".") for outer in found):
            found[name] = module
    return found


class SharedLora(Adapter):
    """One adapter, `default` (peft's name), for every task."""

    mode = "lora"

    def adapter_names(self) -> list[str]:
        return ["default"]

    def adapter_of(self, task: str) -> str:
        return "default"

    def check(self, encoder: nn.Module) -> None:
        lora_targets(encoder, self.options.target_modules)

    def attach(self, encoder: nn.Module) -> None:
        """Inject every adapter, then freeze the whole base and make every adapter trainable.

        Every adapter keeps `requires_grad` for the whole run, so the optimizer and DDP's reducer hold each of them
        from the start; an adapter a step does not use simply gets no gradient (its `.grad` stays None, and AdamW
        leaves a parameter without a gradient, and its state, untouched).
        """
        targets, self.target_source = lora_targets(encoder, self.options.target_modules)
        conv1d = any(isinstance(module, Conv1D) for module in encoder.modules())  # GPT-2 stores weights transposed
        for name in self.adapter_names():
            config = LoraConfig(r=self.options.r, lora_alpha=self.options.alpha, lora_dropout=self.options.dropout,
                                target_modules=copy.copy(targets), bias="none", fan_in_fan_out=conv1d)
            with warnings.catch_warnings():  # each adapter after the first is meant to join the first's peft_config
                warnings.filterwarnings("ignore", "Already found a `peft_config` attribute", UserWarning)
                inject_adapter_in_model(config, encoder, adapter_name=name)
        for param in encoder.parameters():
            param.requires_grad_(False)
        self.encoder = encoder
        self.active = self.adapter_names()[0]
        set_adapter(encoder, self.active)
        set_requires_grad(encoder, self.adapter_names(), requires_grad=True)

    def encoder_weights(self, encoder: nn.Module, task: str | None) -> dict[str, torch.Tensor]:
        """The base's weights by the base's names (peft's `base_layer.` dropped, the LoRA weights left out), with
        `task`'s adapter merged into the layers it wraps: W + peft's `get_delta_weight` (scale * B @ A, transposed
        for GPT-2's Conv1D), which is what peft's `merge` writes, computed without copying the encoder."""
        state = {key.replace(".base_layer.", "."): value for key, value in encoder.state_dict().items()
                 if ".lora_" not in key}
        if task is not None:
            adapter = self.adapter_of(task)
            with torch.no_grad():
                for name, layer in tuner_layers(encoder).items():
                    weight = layer.get_base_layer().weight
                    state[f"{name}.weight"] = weight + layer.get_delta_weight(adapter).to(weight.dtype)
        return state

    def describe(self, encoder: nn.Module) -> str:
        layers = tuner_layers(encoder)
        wrapped = sorted({name.rpartition(".")[2] for name in layers})
        names = self.adapter_names()
        per_adapter = sum(p.numel() for n, p in encoder.named_parameters() if f".{names[0]}." in n
                          and any(n.startswith(layer + ".") for layer in layers))
        frozen = sum(p.numel() for p in encoder.parameters() if not p.requires_grad)
        return (f"ADAPTER={self.mode}: {len(names)} LoRA adapter(s) (r={self.options.r}, alpha={self.options.alpha:g}, "
                f"dropout={self.options.dropout:g}) of {per_adapter:,} parameters each on {len(layers)} layers: "
                f"{', '.join(wrapped)} ({self.target_source}); the base's {frozen:,} parameters are frozen")
