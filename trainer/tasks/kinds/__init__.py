"""The task kinds. A new kind is one module here plus one line in `KINDS`."""

from __future__ import annotations

from trainer.tasks.kinds import (
    causal_lm,
    classification,
    masked_lm,
    multiple_choice,
    question_answering,
    regression,
    seq2seq,
    token_classification,
)
from trainer.tasks.kinds.base import TaskKind

KINDS: dict[str, TaskKind] = {
    "classification": classification.KIND,
    "regression": regression.KIND,
    "multiple_choice": multiple_choice.KIND,
    "token_classification": token_classification.KIND,
    "masked_lm": masked_lm.KIND,
    "causal_lm": causal_lm.KIND,
    "question_answering": question_answering.KIND,
    "seq2seq": seq2seq.KIND,
}

__all__ = ["KINDS", "TaskKind"]
