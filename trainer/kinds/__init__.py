"""The task kinds. A new kind is one module here plus one line in `KINDS`."""

from __future__ import annotations

from trainer.kinds import classification, multiple_choice, regression, token_classification
from trainer.kinds.base import TaskKind

KINDS: dict[str, TaskKind] = {
    "classification": classification.KIND,
    "regression": regression.KIND,
    "multiple_choice": multiple_choice.KIND,
    "token_classification": token_classification.KIND,
}

__all__ = ["KINDS", "TaskKind"]
