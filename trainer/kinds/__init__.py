"""The task kinds. A new kind is one module here plus one line in `KINDS`."""

from __future__ import annotations

from trainer.kinds import classification, multiple_choice, regression
from trainer.kinds.base import TaskKind

KINDS: dict[str, TaskKind] = {
    "classification": classification.KIND,
    "regression": regression.KIND,
    "multiple_choice": multiple_choice.KIND,
}

__all__ = ["KINDS", "TaskKind"]
