"""What masked and causal language modelling share: raw text in, packed blocks of MAX_SEQ_LENGTH out.

Texts come from a `.txt` file (one line or document per row, blank lines skipped) or a text
column of a csv/tsv/jsonl file. They are tokenised, concatenated and cut into blocks, so no
token is spent on padding except in the last, shorter block of each map batch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import pyarrow as pa
import torch

from trainer.errors import UserError
from trainer.tasks.kinds import columns
from trainer.tasks.kinds.base import IGNORE_INDEX, Field, TaskKind, lookup, pad_sequences

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from trainer.tasks.spec import TaskSpec

TEXT_COLUMN = Field("text_column", "csv/tsv/jsonl: the column holding the text (.txt files: one text per line)",
                    default="text")


# A longer line is read, stored and tokenised in pieces of at most this many characters: one 100 MB line took
# 11.7 GB to tokenise whole (the Rust tokenizer keeps offsets and alignments per byte), pieces keep memory flat.
LINE_PIECE_CHARS = 1 << 12
_SPACE = re.compile(r"\s(?=\S*\Z)")  # the last whitespace of a text


def line_pieces(handle: Any, size: int = LINE_PIECE_CHARS) -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line of a text file; a line longer than `size` characters comes in
    pieces of at most `size`, each cut after its last whitespace (mid-word only where a piece has none). Never
    more than two pieces' worth of one line is held."""
    lineno, held = 1, ""
    while chunk := handle.readline(size):
        held += chunk
        ended = held.endswith("\n")
        if ended:
            held = held.rstrip("\r\n")
        while len(held) > size or (not ended and len(held) == size):
            space = _SPACE.search(held, 0, size)
            cut = space.end() if space and space.end() > 1 else size
            piece, held = held[:cut], held[cut:]
            if piece.strip():
                yield lineno, piece
        if ended:
            if held.strip():
                yield lineno, held
            lineno, held = lineno + 1, ""
    if held.strip():
        yield lineno, held


class LanguageModelKind(TaskKind):
    fields = (TEXT_COLUMN,)
    metrics = {"accuracy": True, "perplexity": False, "loss": False}
    auxiliary = True
    file_formats = ("txt", "csv", "tsv", "jsonl")
    no_packing = "its examples are blocks of one length: there is no padding to remove"
    map_batch_rows = 256  # at most 1 MB of text (256 pieces of LINE_PIECE_CHARS) and its tokens at a time

    def features(self, task: TaskSpec) -> datasets.Features:
        return datasets.Features({"text": datasets.Value("string")})

    def read_file(self, task: TaskSpec, path: str, fmt: str, encoding: str) -> Iterator[tuple[str, dict[str, Any]]]:
        with open(path, encoding=encoding) as handle:
            for lineno, text in line_pieces(handle):
                yield f"{path}:{lineno}", {task.text_column: text}

    def normalise(self, task: TaskSpec, row: dict[str, Any], where: str, labelled: bool = True) -> dict[str, Any]:
        return {"text": str(lookup(row, task.text_column, where))}  # the text is its own label

    def normalise_arrow(self, task: TaskSpec, table: pa.Table) -> pa.Table | None:
        texts = columns.text(columns.find(table, task.text_column))
        return None if texts is None else pa.table({"text": texts})

    def predict_rows(
        self, task: TaskSpec, model: Any, tokenizer: PreTrainedTokenizerBase, columns: dict[str, list[Any]],
        max_length: int,
    ) -> list[tuple[str, ...]]:
        raise UserError(f"task {task.name!r} is {self.name}: it has no per-row prediction to write; score it with "
                        "evaluate, or use predict for single texts")

    def token_lengths(self, task: TaskSpec, columns: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase
                      ) -> np.ndarray:
        """Each text's token count (texts are packed, not truncated), a few hundred texts at a time: the
        tokenizer's encodings of a whole split would not fit in memory."""
        texts = columns["text"]
        return np.asarray([len(ids) for start in range(0, len(texts), 256)
                           for ids in self.token_stream(texts[start:start + 256], tokenizer)], dtype=np.int64)

    def length_note(self, task: TaskSpec, lengths: np.ndarray, max_length: int) -> str:
        tokens = int(lengths.sum())
        return f"{tokens} tokens -> about {-(-tokens // max_length)} blocks of {max_length}"

    def label_summary(self, task: TaskSpec, columns: dict[str, list[Any]]) -> str:
        return f"{len(columns['text'])} texts, {sum(len(t) for t in columns['text'])} characters"

    def normalise_hub(self, task: TaskSpec, row: dict[str, Any], where: str) -> dict[str, Any] | None:
        text = str(lookup(row, task.text_column, where))
        return {"text": text} if text.strip() else None

    def token_stream(self, texts: list[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
        """Each text's token ids, with whatever marks its boundaries for this kind."""
        raise NotImplementedError

    def tokenize(
        self, batch: dict[str, list[Any]], task: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list[Any]]:
        ids = [i for text in self.token_stream(batch["text"], tokenizer) for i in text]
        blocks = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
        return {"input_ids": blocks, "length": [len(b) for b in blocks]}  # labels: the ids, set by collate

    def collate(
        self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None
    ) -> dict[str, Any]:
        rows = [f["input_ids"] for f in features]
        length = max(len(r) for r in rows)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        side = tokenizer.padding_side
        return {
            "input_ids": pad_sequences(rows, tokenizer.pad_token_id, length, side),
            "attention_mask": pad_sequences([[1] * len(r) for r in rows], 0, length, side),
            "labels": pad_sequences(rows, IGNORE_INDEX, length, side),
        }

    def shift(self) -> int:
        """How far ahead the label of a position is (causal LM predicts the next token)."""
        return 0

    def reduce_logits(self, logits: Any, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per position: 1/0 for a correct prediction (-100 where unscored) and its negative log-likelihood."""
        logits = logits[0] if isinstance(logits, tuple) else logits
        n = self.shift()
        if n:
            logits, labels = logits[:, :-n], labels[:, n:]
        scored = labels != IGNORE_INDEX
        nll = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), labels.masked_fill(~scored, 0), reduction="none"
        )
        correct = (logits.argmax(-1) == labels).long().masked_fill(~scored, IGNORE_INDEX)
        nll = nll.masked_fill(~scored, 0.0)
        if n:  # keep the (batch, length) shape the Trainer pads across batches
            correct = torch.nn.functional.pad(correct, (0, n), value=IGNORE_INDEX)
            nll = torch.nn.functional.pad(nll, (0, n), value=0.0)
        return correct, nll

    def compute_metrics(self, task: TaskSpec, predictions: Any, labels: np.ndarray) -> dict[str, float]:
        correct, nll = (np.asarray(p) for p in predictions)
        scored = correct != IGNORE_INDEX
        if not scored.any():
            return {"accuracy": 0.0, "perplexity": math.inf, "loss": math.inf}
        loss = float(nll[scored].mean())
        return {"accuracy": float(correct[scored].mean()), "perplexity": float(math.exp(min(loss, 700.0))),
                "loss": loss}
