"""The dtypes a run computes and keeps its weights in.

PRECISION picks the compute dtype (`compute_precision`): the Trainer autocasts matmuls to bf16 or fp16, or computes
in fp32. What the weights are kept in is a separate choice, made here for every run whatever the checkpoint holds
(Transformers 5 loads a checkpoint in its own dtype by default, and the Llama, Qwen and Mistral bases on the hub are
bf16):
- weights that train are fp32: the optimizer's master copy. AdamW on bf16 weights loses every update smaller than
  about 0.4 % of the weight (bf16 keeps 8 significant bits), which at fine-tuning learning rates is most. So full
  fine-tuning loads the base in fp32, and adapters, heads and learned loss weights are made fp32 (`train_in_fp32`);
- a frozen base (ADAPTER=lora or lora_per_task) is kept in the compute dtype: bf16 or fp16 under that PRECISION,
  half the memory of fp32 and what its matmuls run in anyway; fp32 on CPU. A quantized base (QUANTIZE) keeps
  bitsandbytes' own dtypes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from trainer.errors import UserError

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def compute_precision(precision: str, cuda: bool | None = None) -> str:
    """PRECISION resolved to fp32, bf16 or fp16: auto is bf16 on a GPU that has it, else fp16 on a GPU, fp32 on
    CPU; bf16 and fp16 need a CUDA GPU (one line otherwise)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if precision == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision in HALF and not cuda:
        raise UserError(f"PRECISION={precision} needs a CUDA GPU; use auto or fp32 on this machine")
    return precision


class BaseDtype(NamedTuple):
    """The dtype the shared base loads in for training, and why (for the log)."""

    dtype: torch.dtype
    why: str


def base_dtype(adapter: str, precision: str) -> BaseDtype:
    """The dtype of the shared base for ADAPTER=`adapter` under the resolved `precision`."""
    if adapter == "none":
        return BaseDtype(torch.float32, "it trains: the optimizer's master weights are fp32")
    return BaseDtype(HALF.get(precision, torch.float32),
                     f"it is frozen, and kept in the dtype it computes in under PRECISION ({precision})")


def train_in_fp32(model: nn.Module) -> list[str]:
    """Make every trainable floating-point parameter fp32 (adapters and heads built in a half-precision base's
    dtype, for one); the names of those changed. Frozen parameters keep their dtype."""
    changed = []
    for name, param in model.named_parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
            changed.append(name)
    return changed
