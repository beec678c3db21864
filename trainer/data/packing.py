"""PACKING=1: padding-free batches for encoder tasks.

A packed batch is one row: the batch's sequences end to end (Transformers' `DataCollatorWithFlattening`),
with `position_ids` restarting at every sequence and the boundaries in `cu_seq_lens_q/k`. Two pieces make a
stock encoder and a stock head train on it:

- attention (`packed_sdpa`, registered with Transformers' attention interfaces): each token attends only
  within its own sequence. On a GPU in bf16/fp16 it is varlen flash attention (`torch.nn.attention.varlen`),
  which skips the padding instead of masking it; elsewhere it is SDPA with a block-diagonal mask (the
  reference path: right on CPU, but as slow as one sequence of the whole batch's length). Batches that are
  not packed (evaluation of a kind that can't pack) run the stock SDPA.
- output (`_unpack`, a forward hook on the shared encoder): the encoder's packed output is scattered back
  to one row per sequence, and its pooler reapplied, so every head reads the CLS or first token of its own
  sequence, as from a padded batch. The scatter is cheap next to the encoder layers, which saw no padding.

A kind whose head reads the batch's shape (multiple choice reshapes it into choices) says why in
`TaskKind.no_packing`, and its batches are padded; so are all batches of an encoder that can't pack.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn
from transformers import DataCollatorWithFlattening, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.9
    varlen_attn = None

logger = logging.getLogger(__name__)

PACKED_ATTENTION = "packed_sdpa"
PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "position_ids")


def sequence_index(cu_seq_lens: torch.Tensor, total: int) -> torch.Tensor:
    """The sequence each of a packed row's `total` tokens belongs to (no host sync)."""
    tokens = torch.arange(total, device=cu_seq_lens.device, dtype=cu_seq_lens.dtype)
    return torch.bucketize(tokens, cu_seq_lens[1:], right=True)


def packed_sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          cu_seq_lens_q: torch.Tensor | None = None, max_length_q: int | None = None,
                          **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention within each sequence of a packed row (`query`: 1 x heads x tokens x dim); stock SDPA else."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if varlen_attn is not None and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16):
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # tokens x heads x dim
        out = varlen_attn(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, scale=scaling)
        return out.unsqueeze(0), None  # 1 x tokens x heads x dim, as the stock functions return it
    seq = sequence_index(cu_seq_lens_q, query.shape[2])
    mask = (seq[:, None] == seq[None, :])[None, None]
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)


AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # padded batches get SDPA's own mask


def _unpack(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
    """Forward hook: a packed output becomes one padded row per sequence, with the pooler reapplied."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None:
        return None
    hidden = output.last_hidden_state[0]  # tokens x hidden
    seq = sequence_index(cu_seq_lens, hidden.shape[0])
    position = torch.arange(hidden.shape[0], device=hidden.device) - cu_seq_lens[seq]
    rows = hidden.new_zeros(cu_seq_lens.shape[0] - 1, kwargs["max_length_q"], hidden.shape[-1])
    fields = dict(output)
    fields["last_hidden_state"] = rows.index_put((seq, position), hidden)
    pooler = getattr(module, "pooler", None)
    if pooler is not None and "pooler_output" in fields:
        fields["pooler_output"] = pooler(fields["last_hidden_state"])
    return type(output)(**fields)


def packing_problem(encoder: PreTrainedModel) -> str | None:
    """Why this encoder can't train on packed batches, or None when it can."""
    config = encoder.config
    causal = any(getattr(m, "is_causal", False) is True for m in encoder.modules())  # its attention layers say
    if causal or getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        return f"{config.model_type} is not a bidirectional encoder"
    if not getattr(encoder, "_supports_sdpa", False):
        return f"{config.model_type} has no SDPA attention in Transformers"
    if "position_ids" not in inspect.signature(encoder.forward).parameters:
        return f"{config.model_type} takes no position_ids"
    return None


def enable_packing(encoder: PreTrainedModel) -> bool:
    """Switch the encoder to packed attention and unpacked outputs; False (and one log line) if it can't."""
    problem = packing_problem(encoder)
    if problem:
        logger.warning("PACKING=1: %s; every batch is padded instead", problem)
        return False
    encoder.set_attn_implementation(PACKED_ATTENTION)
    encoder.register_forward_hook(_unpack, with_kwargs=True)
    return True


def position_start(encoder: nn.Module) -> int:
    """The first position id the encoder gives a sequence: RoBERTa-like embeddings count from padding_idx + 1."""
    padding_idx = getattr(getattr(encoder, "embeddings", None), "padding_idx", None)
    return padding_idx + 1 if isinstance(padding_idx, int) else 0


class Packer:
    """Turn a kind's padded batch into a packed one: same labels, the inputs end to end in one row."""

    def __init__(self, position_ids_start: int = 0):
        self.flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True,
                                                  position_ids_start=position_ids_start)

    def __call__(self, features: list[dict[str, Any]], padded: dict[str, Any]) -> dict[str, Any]:
        flat = self.flatten([{"input_ids": f["input_ids"]} for f in features])
        batch = {k: v for k, v in padded.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
        batch.update({k: flat[k] for k in ("input_ids", *PACKED_KEYS)})
        if "token_type_ids" in padded:  # what the kind passes the model (the tokenizer's model_input_names)
            batch["token_type_ids"] = torch.tensor([[t for f in features for t in f["token_type_ids"]]])
        return batch


def packer_for(encoder: PreTrainedModel, tasks: list[Any]) -> Packer | None:
    """PACKING=1: set the encoder up for packed batches and say once which tasks pad anyway; None if it can't."""
    if not enable_packing(encoder):
        return None
    for task in tasks:
        if task.kind.no_packing:
            logger.warning("PACKING=1: task %r (%s) is padded: %s", task.name, task.kind.name, task.kind.no_packing)
    return Packer(position_start(encoder))
