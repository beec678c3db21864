"""QUANTIZE=4bit|8bit (QLoRA): the frozen shared base loaded quantized by bitsandbytes, through
`from_pretrained(quantization_config=BitsAndBytesConfig(...))`, then readied by peft's
`prepare_model_for_kbit_training` (base frozen, norms in fp32, inputs that carry a gradient into the adapters).

bitsandbytes' k-bit matmuls need a CUDA GPU, so QUANTIZE on any other machine is one line before anything is read
or written. bitsandbytes is no pinned requirement: its 43 MB wheel (125 MB installed) pulls CUDA kernels a CPU
image never uses and warns at import on CPU; it is imported only here, and a missing one is one line.

4bit is NF4 with double quantization and bf16 compute (fp16 where the GPU has no bf16), the QLoRA paper's
recipe; 8bit is LLM.int8().
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from trainer.errors import UserError

BITSANDBYTES = "bitsandbytes==0.50.2"  # the version checked to install and import (torch 2.13)


def check_quantize(quantize: str | None, cuda: bool | None = None) -> None:
    """QUANTIZE needs a CUDA GPU and bitsandbytes: one line otherwise, before anything is read or written."""
    if not quantize:
        return
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda:
        raise UserError(f"QUANTIZE={quantize} needs a CUDA GPU (bitsandbytes' k-bit kernels) and this machine has "
                        "none; leave QUANTIZE empty (ADAPTER=lora trains the same adapters on an unquantized base)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"QUANTIZE={quantize} needs the bitsandbytes package: pip install {BITSANDBYTES}")


def quantization_config(quantize: str) -> Any:
    """The `BitsAndBytesConfig` of QUANTIZE=4bit (NF4, double quantization) or 8bit (LLM.int8())."""
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def prepare_quantized(encoder: nn.Module, gradient_checkpointing: bool) -> nn.Module:
    """peft's preparation of a k-bit base for training adapters: every base weight frozen, layer norms upcast to
    fp32, and the embeddings' output made to require a gradient; checkpointing non-reentrant, as everywhere."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(encoder, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})
