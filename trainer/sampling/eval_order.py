"""Evaluation in length-sorted batches, with the predictions put back in the dataset's order.

Sorting a dev split by token length (longest first) makes every batch pad to nearly its own length,
so evaluation processes far fewer padding tokens; the longest batch also comes first, so a batch that
does not fit in memory fails at once. The Trainer gathers predictions in the order it evaluated them;
`restore` undoes the sort before any metric sees them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Dataset indices, longest first; equal lengths keep their dataset order (equal-length LM blocks stay put)."""
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


class OrderedSampler(Sampler[int]):
    """Yield the indices of a given order (the DataLoader cuts them into batches)."""

    def __init__(self, order: np.ndarray):
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())


def restore(values: Any, order: np.ndarray) -> Any:
    """Rows evaluated in `order` (row k is example order[k]) back in dataset order; tuples element by element."""
    if values is None:
        return None
    if isinstance(values, (tuple, list)):
        return type(values)(restore(v, order) for v in values)
    if len(values) != len(order):
        raise ValueError(f"{len(values)} predictions for {len(order)} evaluated examples")
    restored = np.empty_like(values)
    restored[order] = values
    return restored
