"""Tokenise many texts (or pairs) at once, for the cached `datasets.map` of a split.

`tokenizer(texts, pairs, truncation=True, max_length=n)` turns every Rust `Encoding` into Python
lists of five fields, most of which a split never stores: the attention mask is all ones until a
batch is padded (`tokenizer.pad` makes it then), and the offsets are unused. On a fast tokenizer this
calls its Rust tokenizer directly instead (`encode_batch_fast`: no offsets) and keeps only the ids and,
where the model takes them, the token type ids: the same ids as the call above. A 1M-row split tokenises
1.3-1.6x as fast end to end (`benchmarks/data_scale.py`). A tokenizer without a Rust backend takes the call
above.
"""

from __future__ import annotations

import functools
from typing import Any

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase


@functools.lru_cache(maxsize=8)
def _backend(tokenizer: PreTrainedTokenizerBase, max_length: int | None, side: str) -> Tokenizer | None:
    """A private copy of the tokenizer's Rust tokenizer, truncating as `truncation=True` does and never padding
    (the copy's settings can't leak into the tokenizer's own calls, or theirs into it)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    if backend is None:
        return None
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    if max_length is None:
        copy.no_truncation()
    else:
        copy.enable_truncation(max_length, strategy="longest_first", direction=side)
    return copy


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], pairs: list[str] | None = None,
    max_length: int | None = None, add_special_tokens: bool = True,
) -> dict[str, list[list[int]]]:
    """`input_ids`, and `token_type_ids` when the tokenizer's model takes them, of each text (or text pair),
    truncated to `max_length` tokens (None: not truncated); no attention mask."""
    backend = _backend(tokenizer, max_length, tokenizer.truncation_side)
    if backend is None:
        encoded = tokenizer(texts, pairs, truncation=max_length is not None, max_length=max_length,
                            add_special_tokens=add_special_tokens, return_attention_mask=False, verbose=False)
        return dict(encoded)
    inputs: list[Any] = texts if pairs is None else list(zip(texts, pairs, strict=True))
    encodings = backend.encode_batch_fast(inputs, add_special_tokens=add_special_tokens)
    out = {"input_ids": [e.ids for e in encodings]}
    if "token_type_ids" in tokenizer.model_input_names:
        out["token_type_ids"] = [e.type_ids for e in encodings]
    return out
