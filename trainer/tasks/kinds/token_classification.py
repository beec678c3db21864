"""`token_classification`: one tag per word, BIO entity spans (NER, POS).

Tags are aligned to sub-words: the first sub-word of each word carries the word's tag and the
others get -100, so the loss and the metrics see each word once. Metrics are entity-level
precision/recall/F1 over BIO spans, as conlleval and seqeval (default mode) count them.
"""

from __future__ import annotations

import copy
import json
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
from transformers import AutoModelForTokenClassification

from trainer.errors import UserError
from trainer.tasks.kinds.base import (
    IGNORE_INDEX,
    Field,
    TaskKind,
    batch_logits,
    class_label_names,
    has_column,
    label_index,
    lookup,
    pad_inputs,
    pad_sequences,
)

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from trainer.tasks.spec import TaskSpec

_WORD_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
LINES = "__lines__"  # CoNLL rows carry each word's line number, so a bad tag names its own line


def words_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A tokenizer that treats every pre-split word as preceded by a space.

    Byte-level BPE (GPT-2, RoBERTa) and Metaspace (SentencePiece) tokenizers mark a word start
    with a space; without `add_prefix_space=True` each pre-split word would be tokenised as if it
    began the text, which is not how the model saw words in pretraining.
    """
    if tokenizer in _WORD_TOKENIZERS:
        return _WORD_TOKENIZERS[tokenizer]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    result = tokenizer
    if backend is not None:
        from tokenizers import Tokenizer

        state = json.loads(backend.to_str())
        if _prefix_every_word(state.get("pre_tokenizer")):
            result = copy.deepcopy(tokenizer)
            result._tokenizer = Tokenizer.from_str(json.dumps(state))
            result.add_prefix_space = True
    _WORD_TOKENIZERS[tokenizer] = result
    return result


def _prefix_every_word(node: Any) -> bool:
    """Turn on the word-start space in a serialised pre-tokenizer; True if anything changed."""
    if not isinstance(node, dict):
        return False
    changed = False
    if node.get("type") == "ByteLevel" and not node.get("add_prefix_space"):
        node["add_prefix_space"] = changed = True
    if node.get("type") == "Metaspace" and node.get("prepend_scheme") != "always":
        node["prepend_scheme"], changed = "always", True
    for child in node.get("pretokenizers", []) or []:
        changed = _prefix_every_word(child) or changed
    return changed


def bio_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """Entity chunks `(type, start, end_exclusive)` in a BIO tag sequence, as conlleval finds them.

    A chunk starts at `B-X`, or at `I-X` after `O` or after another type; it ends before `O`,
    before any `B-`, and before a tag of another type.
    """
    spans: list[tuple[str, int, int]] = []
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-") if "-" in tag else (tag, "", "")
        if kind is not None and (prefix in ("O", "B") or label != kind or prefix not in ("I", "B")):
            spans.append((kind, start, i))
            kind = None
        if prefix in ("B", "I") and kind is None:
            kind, start = label, i
    return spans


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over entity spans, plus token accuracy."""
    gold_spans = {(s, *span) for s, tags in enumerate(gold) for span in bio_spans(tags)}
    pred_spans = {(s, *span) for s, tags in enumerate(pred) for span in bio_spans(tags)}
    correct = len(gold_spans & pred_spans)
    precision = correct / len(pred_spans) if pred_spans else 0.0
    recall = correct / len(gold_spans) if gold_spans else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    tokens = sum(len(t) for t in gold)
    same = sum(g == p for gs, ps in zip(gold, pred, strict=True) for g, p in zip(gs, ps, strict=True))
    return {"f1": f1, "precision": precision, "recall": recall, "accuracy": same / tokens if tokens else 0.0}


class TokenClassification(TaskKind):
    name = "token_classification"
    summary = "one tag per word (NER, POS); CoNLL or JSONL files"
    fields = (
        Field("labels", "the tag set, e.g. [O, B-PER, I-PER] (required, unless a source's ClassLabel tags name it)",
              list_of_str=True, unique=True, default=()),
        Field("tokens_column", "JSONL: the column with the list of words", default="tokens"),
        Field("tags_column", "JSONL: the column with the list of tags", default="tags"),
        Field("conll_columns", "CoNLL: the 0-based columns of the word and its tag", default=(0, -1)),
    )
    metrics = {"f1": True, "precision": True, "recall": True, "accuracy": True}
    file_formats = ("conll", "jsonl")
    pipeline = "token-classification"

    def validate(self, task: TaskSpec, where: str) -> None:
        pending = task.declared_source and not task.labels  # the source's ClassLabel tags name them
        if len(task.labels) < 2 and not pending:
            raise UserError(f"{where}: a token_classification task needs 'labels' (its tag set), at least two")
        if len(set(task.labels)) != len(task.labels):
            raise UserError(f"{where}: 'labels' lists a tag twice ({', '.join(task.labels)})")
        columns = task.conll_columns
        if not (isinstance(columns, (list, tuple)) and len(columns) == 2 and all(isinstance(c, int) for c in columns)):
            raise UserError(f"{where}: 'conll_columns' takes two column numbers [word, tag], e.g. [0, 3]")

    def default_metric(self, task: TaskSpec) -> str:
        """Entity F1 for BIO tags; token accuracy for tag sets without B-/I- prefixes (POS), which have no spans."""
        return "f1" if any(t.startswith(("B-", "I-")) for t in task.labels) else "accuracy"

    def num_labels(self, task: TaskSpec) -> int:
        return len(task.labels)

    # -- data ---------------------------------------------------------------------------

    def features(self, task: TaskSpec) -> datasets.Features:
        return datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "tags": datasets.Sequence(datasets.Value("int64"))})

    def read_file(self, task: TaskSpec, path: str, fmt: str, encoding: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """CoNLL: one word per line, columns split on tabs (or spaces), a blank line between sentences."""
        word_col, tag_col = task.conll_columns
        words: list[str] = []
        tags: list[str] = []
        lines: list[int] = []
        start = 1
        with open(path, encoding=encoding) as handle:
            for lineno, line in enumerate(handle, 1):
                line = line.rstrip("\r\n")
                if line.startswith("-DOCSTART-"):
                    continue
                if not line.strip():
                    if words:
                        yield f"{path}:{start}", {task.tokens_column: words, task.tags_column: tags, LINES: lines}
                    words, tags, lines, start = [], [], [], lineno + 1
                    continue
                cells = line.split("\t") if "\t" in line else line.split()
                try:
                    if len(cells) < 2:
                        raise IndexError
                    word, tag = cells[word_col], cells[tag_col]
                except IndexError:
                    raise UserError(
                        f"{path}:{lineno}: expected a word and a tag in columns {word_col} and {tag_col}, "
                        f"found {len(cells)} column(s); set 'conll_columns' for multi-column files"
                    ) from None
                if not words:
                    start = lineno
                words.append(word)
                tags.append(tag)
                lines.append(lineno)
        if words:
            yield f"{path}:{start}", {task.tokens_column: words, task.tags_column: tags, LINES: lines}

    def source_options(self, task: TaskSpec, features: datasets.Features, where: str) -> dict[str, Any]:
        feature = features.get(task.tags_column)
        names = class_label_names(task, feature, where, sequence=True)
        if names is None and not task.labels:
            found = f"holds {feature}" if feature is not None else f"is missing (columns: {', '.join(features)})"
            raise UserError(f"{where}: tags column {task.tags_column!r} {found}, not a list of datasets ClassLabel; "
                            "declare 'labels' (the tag set)")
        return {} if names is None else {"labels": names}

    def has_label(self, task: TaskSpec, row: dict[str, Any]) -> bool:
        return has_column(row, task.tags_column)

    def normalise(self, task: TaskSpec, row: dict[str, Any], where: str, labelled: bool = True) -> dict[str, Any]:
        words = lookup(row, task.tokens_column, where)
        if not labelled:
            if not isinstance(words, list) or not words:
                raise UserError(f"{where}: {task.tokens_column!r} must be a non-empty list of words")
            return {"tokens": [str(w) for w in words], "tags": [0] * len(words)}  # placeholder tags
        tags = lookup(row, task.tags_column, where)
        if not isinstance(words, list) or not isinstance(tags, list):
            raise UserError(f"{where}: {task.tokens_column!r} and {task.tags_column!r} must be lists")
        if not words:
            raise UserError(f"{where}: an empty sentence; each sentence needs at least one word")
        if len(words) != len(tags):
            raise UserError(
                f"{where}: the sentence has {len(words)} word(s) but {len(tags)} tag(s); give one tag per word"
            )
        lines = row.get(LINES)
        path = where.rsplit(":", 1)[0]
        return {"tokens": [str(w) for w in words],
                "tags": [label_index(task, t, f"{path}:{lines[i]}" if lines else where, "tag")
                         for i, t in enumerate(tags)]}

    def tokenize(
        self, batch: dict[str, list[Any]], task: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list[Any]]:
        encoded = words_tokenizer(tokenizer)(
            batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length
        )
        out = {k: list(v) for k, v in encoded.items()}
        out["labels"] = [align_tags(encoded.word_ids(i), tags) for i, tags in enumerate(batch["tags"])]
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out

    def collate(
        self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None
    ) -> dict[str, Any]:
        labels = [f["labels"] for f in features]
        batch = pad_inputs(features, tokenizer, pad_to_multiple_of)
        batch["labels"] = pad_sequences(labels, IGNORE_INDEX, batch["input_ids"].shape[1], tokenizer.padding_side)
        return batch

    def label_summary(self, task: TaskSpec, columns: dict[str, list[Any]]) -> str:
        counts = np.bincount([t for tags in columns["tags"] for t in tags], minlength=len(task.labels))
        return f"{sum(map(len, columns['tags']))} words; " + ", ".join(
            f"{name}: {int(n)}" for name, n in zip(task.labels, counts, strict=True) if n)

    # -- model and metrics --------------------------------------------------------------

    def model_class(self) -> type:
        return AutoModelForTokenClassification

    def config(self, encoder_config: PreTrainedConfig, task: TaskSpec) -> PreTrainedConfig:
        config = super().config(encoder_config, task)
        config.num_labels = len(task.labels)
        config.id2label = dict(enumerate(task.labels))
        config.label2id = {label: i for i, label in enumerate(task.labels)}
        return config

    def reduce_logits(self, logits: Any, labels: torch.Tensor) -> torch.Tensor:
        logits = logits[0] if isinstance(logits, tuple) else logits
        return logits.argmax(-1)

    def compute_metrics(self, task: TaskSpec, predictions: Any, labels: np.ndarray) -> dict[str, float]:
        preds = np.asarray(predictions)
        labels = np.asarray(labels)
        gold, pred = [], []
        for p_row, l_row in zip(preds, labels, strict=True):
            keep = l_row != IGNORE_INDEX
            gold.append([task.labels[i] for i in l_row[keep]])
            pred.append([task.labels[i] for i in p_row[keep]])
        return entity_scores(gold, pred)

    # -- inference ----------------------------------------------------------------------

    def predict(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        inputs: list[dict[str, Any]], max_length: int,
    ) -> list[dict[str, Any]]:
        words = [i["text"].split() for i in inputs]
        if not all(words):
            raise UserError(f"task {task.name!r} tags words: --text must hold at least one word")
        batch = self.encode(task, {"tokens": words, "tags": [[0] * len(w) for w in words]}, tokenizer, max_length)
        results = []
        for sentence, tags in zip(words, self.word_tags(task, model, batch, words), strict=True):
            entities = [{"type": kind, "text": " ".join(sentence[s:e]), "start": s, "end": e}
                        for kind, s, e in bio_spans(tags)]
            results.append({"tokens": [[w, t] for w, t in zip(sentence, tags, strict=True)], "entities": entities})
        return results

    def predict_rows(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        columns: dict[str, list[Any]], max_length: int,
    ) -> list[tuple[str, ...]]:
        """Each sentence's tags, space-joined, one per word."""
        batch = self.encode(task, columns, tokenizer, max_length)
        return [(" ".join(tags),) for tags in self.word_tags(task, model, batch, columns["tokens"])]

    def word_tags(self, task: TaskSpec, model: PreTrainedModel, batch: dict[str, Any], sentences: list[list[str]]
                  ) -> list[list[str]]:
        """Each word's predicted tag, read at its first sub-word; words cut off by truncation get O."""
        first = batch["labels"] != IGNORE_INDEX
        best = batch_logits(model, batch).argmax(-1)
        fill = "O" if "O" in task.labels else task.labels[0]
        tags = []
        for i, sentence in enumerate(sentences):
            found = [task.labels[int(t)] for t in best[i][first[i]]]
            tags.append(found + [fill] * (len(sentence) - len(found)))
        return tags


def align_tags(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """The word's tag on its first sub-word; -100 on the other sub-words and on special tokens."""
    aligned, previous = [], None
    for word in word_ids:
        aligned.append(tags[word] if word is not None and word != previous else IGNORE_INDEX)
        previous = word
    return aligned


KIND = TokenClassification()
