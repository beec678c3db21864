"""The GPU fast path: what the Trainer gets on CUDA by default, and TORCH_COMPILE for the shared encoder.

On a CUDA device: bf16 (PRECISION=auto, see `precision.py`) with TF32 matmuls allowed, fused AdamW,
pinned host memory and two dataloader workers. SDPA attention is Transformers' own default when a model
supports it (`PreTrainedModel.get_correct_attn_implementation`), so nothing here asks for it; `attention`
reports what the encoder got. On CPU the Trainer keeps its defaults and batches are collated in the training
process (DATALOADER_WORKERS=0), unless the setting says otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers.utils.import_utils import is_torch_tf32_available

logger = logging.getLogger(__name__)

GPU_DATALOADER_WORKERS = 2


def dataloader_workers(setting: int | None, cuda: bool) -> int:
    """DATALOADER_WORKERS, or its auto value: 2 on a GPU (the host collates while the GPU trains), else 0."""
    if setting is not None:
        return setting
    return GPU_DATALOADER_WORKERS if cuda else 0


def gpu_arguments(workers: int | None, cuda: bool | None = None) -> dict[str, Any]:
    """The `TrainingArguments` of the fast path: tf32, the fused optimizer, pinned memory and workers."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    arguments: dict[str, Any] = {
        "dataloader_num_workers": dataloader_workers(workers, cuda),
        "dataloader_pin_memory": cuda,
    }
    if cuda:
        arguments["optim"] = "adamw_torch_fused"
        if is_torch_tf32_available():  # Ampere and newer: fp32 matmuls (the optimizer, fp32 heads) use TF32
            arguments["tf32"] = True
    return arguments


def attention(model: nn.Module) -> str:
    """The attention implementation a loaded model runs with (`sdpa` unless the model can't)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "eager"


def compile_encoder(encoder: nn.Module) -> nn.Module:
    """Compile the shared encoder in place (TORCH_COMPILE=1), with dynamic shapes.

    `nn.Module.compile` keeps the module, its class and its parameter names (checkpoints, exports and the task
    models' shared reference are unchanged); `dynamic=True` traces batch size and sequence length as symbols,
    so batches of new lengths reuse the compiled graph instead of recompiling.
    """
    encoder.compile(dynamic=True)
    logger.info("TORCH_COMPILE: the encoder (%s, %s attention) is compiled with dynamic shapes",
                type(encoder).__name__, attention(encoder))
    return encoder
