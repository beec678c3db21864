"""How many tokens a model takes: MAX_SEQ_LENGTH above that is refused before training or predicting.

A model with absolute position embeddings (BERT, RoBERTa, GPT-2, ...) crashes mid-run on a longer input; the
limit is its config's `max_position_embeddings` (`n_positions` for GPT-2), less RoBERTa's offset, and the
tokenizer's `model_max_length` when the tokenizer declares one.
"""

from __future__ import annotations

from typing import Any

from trainer.errors import UserError

# Position ids of these models start after the padding index: `padding_idx + 1` positions are never used.
_PADDING_OFFSET = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "data2vec-text",
                   "longformer", "mpnet", "ibert", "xmod", "luke")
_UNSET = 10**6  # tokenizers without a declared maximum say int(1e30)


def max_positions(config: Any | None, tokenizer: Any | None) -> int | None:
    """The most tokens the model and tokenizer take, or None when neither declares a bound."""
    limits = []
    if config is not None and getattr(config, "position_biased_input", True):  # DeBERTa: relative positions only
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if isinstance(positions, int) and positions > 0:
            pad = getattr(config, "pad_token_id", None)
            offset = pad + 1 if config.model_type in _PADDING_OFFSET and isinstance(pad, int) else 0
            limits.append(positions - offset)
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < _UNSET:
        limits.append(declared)
    return min(limits) if limits else None


def check_max_seq_length(max_seq_length: int, config: Any | None, tokenizer: Any | None, model: str) -> None:
    """Refuse MAX_SEQ_LENGTH above what `model` (named in the message) takes."""
    limit = max_positions(config, tokenizer)
    if limit is not None and max_seq_length > limit:
        raise UserError(f"MAX_SEQ_LENGTH={max_seq_length} is more than {model} takes ({limit} tokens, its maximum "
                        f"positions); set MAX_SEQ_LENGTH to at most {limit}")
