"""`question_answering` (extractive): find the answer to a question as a span of its context (SQuAD).

A context longer than MAX_SEQ_LENGTH becomes several windows that overlap by `doc_stride` tokens (the fast
tokenizer's overflowing tokens and offsets); each window is one feature, labelled with the answer's first and last
token, or with the CLS position when the answer is not inside that window (and for unanswerable questions). The
dev metrics put a question's windows back together: the best span over `n_best` starts and ends of every window,
at most `max_answer_length` tokens, is mapped back to the context's characters and scored with SQuAD's exact match
and F1 (the official script's answer normalisation and its v2 HasAns/NoAns split and best null-score threshold).
"""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering

from trainer.errors import UserError
from trainer.tasks.encode import encode_texts
from trainer.tasks.kinds.base import Field, TaskKind, has_column, lookup

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from trainer.tasks.spec import TaskSpec

NO_OFFSET = [-1, -1]  # a window's token that is not in the context (question, special tokens)


# ---- SQuAD's scorer: the official evaluation script's normalisation and token F1 (v2.0, which v1.1 agrees with) ----


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces: the official script's normalisation."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text, flags=re.UNICODE)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised answers' words; an empty answer scores 1 against an empty one, else 0."""
    pred, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not true:
        return float(pred == true)
    same = sum((collections.Counter(pred) & collections.Counter(true)).values())
    if not same:
        return 0.0
    precision, recall = same / len(pred), same / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], golds: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Each question's exact match and F1: the best over its gold answers ([""] for an unanswerable question)."""
    exact, f1 = [], []
    for prediction, answers in zip(predictions, golds, strict=True):
        answers = [a for a in answers if normalize_answer(a)] or [""]
        exact.append(max(exact_match(prediction, a) for a in answers))
        f1.append(max(token_f1(prediction, a) for a in answers))
    return np.asarray(exact), np.asarray(f1)


def best_threshold(scores: np.ndarray, null_margins: np.ndarray, has_answer: np.ndarray) -> tuple[float, float]:
    """The official script's `find_best_thresh`: the score (mean) when a question is answered null iff its null
    margin (null score minus best span score) is above the threshold, at the best threshold, and that threshold.
    `scores` are those of the best non-null spans."""
    total = best = float((~has_answer).sum())  # every question answered null
    threshold = 0.0
    for i in np.argsort(null_margins, kind="stable"):
        total += scores[i] if has_answer[i] else -1.0  # a non-null answer to an unanswerable question scores 0
        if total > best:
            best, threshold = total, float(null_margins[i])
    return best / max(len(scores), 1), threshold


# ---- windows back to answers -----------------------------------------------------------------------------------


def best_answers(
    logits: np.ndarray, examples: np.ndarray, offsets: list[list[list[int]]], cls_index: list[int],
    contexts: dict[int, str], n_best: int, max_answer_length: int,
) -> dict[int, dict[str, Any]]:
    """Per example: its best span over all its windows, `{"answer", "start", "end", "span_score", "null_score",
    "probability"}` (characters of the context; an empty answer where no window has a valid span). `logits` is
    (features, tokens, 2): start and end logits of each window, padded past its own tokens."""
    candidates: dict[int, list[tuple[float, int, int]]] = collections.defaultdict(list)
    null: dict[int, float] = {}
    for f, example in enumerate(examples.tolist()):
        window = np.asarray(offsets[f])
        inside = window[:, 0] >= 0  # the context's tokens (NO_OFFSET elsewhere)
        start_logits, end_logits = logits[f, : len(window), 0], logits[f, : len(window), 1]
        cls = cls_index[f]
        null[example] = min(null.get(example, np.inf), float(start_logits[cls] + end_logits[cls]))
        starts = np.argsort(start_logits, kind="stable")[::-1][:n_best]
        ends = np.argsort(end_logits, kind="stable")[::-1][:n_best]
        for s in starts.tolist():
            if not inside[s]:
                continue
            for e in ends.tolist():
                if not inside[e] or e < s or e - s + 1 > max_answer_length:
                    continue
                candidates[example].append((float(start_logits[s] + end_logits[e]), int(window[s, 0]),
                                            int(window[e, 1])))
    answers = {}
    for example, null_score in null.items():
        ranked = sorted(candidates[example], key=lambda c: -c[0])[:n_best]
        if ranked:
            span_score, start, end = ranked[0]
            start, end = _trimmed(contexts[example], start, end)
        else:
            span_score, start, end = -np.inf, 0, 0
        scores = np.asarray([c[0] for c in ranked] + [null_score])
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        answers[example] = {"answer": contexts[example][start:end], "start": start, "end": end,
                            "span_score": span_score, "null_score": null_score,
                            "probability": float(probabilities[0]) if ranked else 0.0,
                            "null_probability": float(probabilities[-1])}
    return answers


def _trimmed(context: str, start: int, end: int) -> tuple[int, int]:
    """A span without the spaces byte-level BPE offsets may include (GPT-2's "Ġword" covers its space)."""
    while start < end and context[start].isspace():
        start += 1
    while end > start and context[end - 1].isspace():
        end -= 1
    return start, end


class QuestionAnswering(TaskKind):
    name = "question_answering"
    summary = "a question and a context; the answer is a span of the context (SQuAD)"
    fields = (
        Field("question_column", "the column holding the question", default="question"),
        Field("context_column", "the column holding the context the answer is taken from", default="context"),
        Field("answers_column", "the column holding {text: [...], answer_start: [...]} (SQuAD/datasets layout)",
              default="answers"),
        Field("allow_unanswerable", "questions without an answer are allowed (SQuAD v2)", default=False),
        Field("doc_stride", "tokens two windows of a long context share (default: 128, or a third of "
              "MAX_SEQ_LENGTH when that is less)", value_type=int),
        Field("max_answer_length", "the longest answer predicted, in tokens", default=30),
        Field("n_best", "start and end positions tried per window", default=20),
    )
    # on a 0..1 scale like every kind's (eval_average mixes them); best_f1_threshold is a null-score margin that
    # the card and metrics.json report beside best_f1, not a quality (its "higher is better" means nothing)
    metrics = {"f1": True, "exact_match": True, "has_answer_f1": True, "has_answer_exact_match": True,
               "no_answer_accuracy": True, "best_f1": True, "best_f1_threshold": True}
    file_formats = ("json", "jsonl")
    pipeline = ""  # Transformers 5 removed the question-answering pipeline (pipelines/__init__.py points elsewhere)
    prediction_columns = ("answer", "start", "end", "score")
    no_packing = "its labels are token positions inside each window"
    takes_context = True
    map_batch_rows = 200  # a row may become several windows

    def validate(self, task: TaskSpec, where: str) -> None:
        for field in ("doc_stride", "max_answer_length", "n_best"):
            if getattr(task, field) is not None and getattr(task, field) < 1:
                raise UserError(f"{where}: '{field}' must be a positive number of tokens, not {getattr(task, field)}")

    def metrics_for(self, task: TaskSpec) -> list[str]:
        return list(self.metrics) if task.allow_unanswerable else ["f1", "exact_match"]

    # -- data ---------------------------------------------------------------------------

    def features(self, task: TaskSpec) -> datasets.Features:
        return datasets.Features({"question": datasets.Value("string"), "context": datasets.Value("string"),
                                  "answer_text": datasets.Sequence(datasets.Value("string")),
                                  "answer_start": datasets.Sequence(datasets.Value("int64"))})

    def read_file(self, task: TaskSpec, path: str, fmt: str, encoding: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """SQuAD JSON: `data[].paragraphs[]` of a `context` and its `qas[]`; each question is one row, named by the
        line of its id (or of its question) in the file."""
        with open(path, encoding=encoding) as handle:
            text = handle.read()
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(document, dict) or not isinstance(document.get("data"), list):
            raise UserError(f"{path}: a SQuAD JSON file holds {{\"data\": [{{\"paragraphs\": [{{\"context\": ..., "
                            "\"qas\": [...]}]}]}; use .jsonl for one question per line")
        position = 0
        for a, article in enumerate(document["data"]):
            for p, paragraph in enumerate(_items(article, "paragraphs", f"{path}: data[{a}]")):
                for q, qa in enumerate(_items(paragraph, "qas", f"{path}: data[{a}].paragraphs[{p}]")):
                    mark = json.dumps(qa.get("id", qa.get("question", "")), ensure_ascii=False)
                    found = text.find(mark, position)
                    position = found if found >= 0 else position
                    line = text.count("\n", 0, position) + 1
                    answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                    where = f"{path}:{line} (data[{a}].paragraphs[{p}].qas[{q}])"
                    if not isinstance(answers, list) or not all(isinstance(x, dict) for x in answers):
                        raise UserError(f"{where}: 'answers' must be a list of {{\"text\", \"answer_start\"}}")
                    row = {task.question_column: qa.get("question"), task.context_column: paragraph.get("context"),
                           task.answers_column: {"text": [x.get("text") for x in answers],
                                                 "answer_start": [x.get("answer_start") for x in answers]}}
                    yield where, row

    def has_label(self, task: TaskSpec, row: dict[str, Any]) -> bool:
        return has_column(row, task.answers_column)

    def normalise(self, task: TaskSpec, row: dict[str, Any], where: str, labelled: bool = True) -> dict[str, Any]:
        question, context = lookup(row, task.question_column, where), lookup(row, task.context_column, where)
        for column, value in ((task.question_column, question), (task.context_column, context)):
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{where}: {column!r} must be a non-empty text, not {value!r:.40}")
        if not labelled:
            return {"question": question, "context": context, "answer_text": [], "answer_start": []}
        answers = lookup(row, task.answers_column, where)
        if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
                or not isinstance(answers.get("answer_start"), list) \
                or len(answers["text"]) != len(answers["answer_start"]):
            raise UserError(f"{where}: {task.answers_column!r} must be {{\"text\": [...], \"answer_start\": [...]}} "
                            "with one start per text")
        texts, starts = answers["text"], answers["answer_start"]
        for text, start in zip(texts, starts, strict=True):
            if not isinstance(text, str) or not text or isinstance(start, bool) or not isinstance(start, int):
                raise UserError(f"{where}: an answer needs a non-empty text and an integer answer_start, not "
                                f"{text!r:.40} at {start!r}")
            if context[start:start + len(text)] != text:
                raise UserError(f"{where}: answer {text!r:.60} is not at answer_start {start} of its context (there: "
                                f"{context[start:start + len(text)]!r:.60}); answer_start is the answer's 0-based "
                                "character offset in the context")
        if not texts and not task.allow_unanswerable:
            raise UserError(f"{where}: the question has no answer; set 'allow_unanswerable: true' on task "
                            f"{task.name!r} for SQuAD v2-style unanswerable questions")
        return {"question": question, "context": context, "answer_text": texts, "answer_start": starts}

    def check_lengths(self, task: TaskSpec, rows: Any, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        questions = [q.lstrip() for q in rows.question]
        for start in range(0, len(questions), 10_000):
            check_windows(task, tokenizer, questions[start:start + 10_000], max_length)

    # -- tokenisation: windows ----------------------------------------------------------

    def tokenize(
        self, batch: dict[str, list[Any]], task: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list[Any]]:
        return self.tokenize_rows(batch, list(range(len(batch["question"]))), task, tokenizer, max_length)

    def tokenize_rows(
        self, batch: dict[str, list[Any]], indices: list[int], task: TaskSpec, tokenizer: PreTrainedTokenizerBase,
        max_length: int,
    ) -> dict[str, list[Any]]:
        """One feature per window: input ids, `labels` [start, end] (the CLS position when the answer is not in the
        window), and what the metrics need to score the row: its index (`example`), each token's context
        characters (`offsets`), the CLS position, the context and the gold answers."""
        questions = [q.lstrip() for q in batch["question"]]
        check_windows(task, tokenizer, questions, max_length)
        encoded = tokenizer(questions, batch["context"], truncation="only_second", max_length=max_length,
                            stride=doc_stride(task, max_length), return_overflowing_tokens=True,
                            return_offsets_mapping=True, return_attention_mask=False)
        out: dict[str, list[Any]] = {k: [] for k in ("input_ids", "labels", "length", "example", "offsets",
                                                     "cls_index", "context", "answer_text")}
        types = "token_type_ids" in tokenizer.model_input_names
        if types:
            out["token_type_ids"] = []
        for w, row in enumerate(encoded["overflow_to_sample_mapping"]):
            ids, sequence = encoded["input_ids"][w], encoded.sequence_ids(w)
            offsets = [list(o) if s == 1 else NO_OFFSET for o, s in zip(encoded["offset_mapping"][w], sequence,
                                                                         strict=True)]
            cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            out["input_ids"].append(ids)
            if types:
                out["token_type_ids"].append(encoded["token_type_ids"][w])
            out["labels"].append(answer_tokens(offsets, batch["answer_text"][row], batch["answer_start"][row], cls))
            out["length"].append(len(ids))
            out["example"].append(indices[row])
            out["offsets"].append(np.asarray(offsets, dtype=np.int32))  # half of int64's bytes in the cache
            out["cls_index"].append(cls)
            out["context"].append(batch["context"][row])
            out["answer_text"].append(batch["answer_text"][row])
        return out

    def collate(
        self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None
    ) -> dict[str, Any]:
        """Padded on the right whatever the tokenizer's side, so the labels' token positions stay put."""
        keys = [k for k in features[0] if k in tokenizer.model_input_names]
        batch = dict(tokenizer.pad([{k: f[k] for k in keys} for f in features], padding=True,
                                   pad_to_multiple_of=pad_to_multiple_of, padding_side="right", return_tensors="pt"))
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    def token_lengths(self, task: TaskSpec, columns: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase
                      ) -> np.ndarray:
        """Question plus context, untruncated: `length_note` says how many need more than one window."""
        encoded = encode_texts(tokenizer, columns["question"], columns["context"])
        return np.asarray([len(ids) for ids in encoded["input_ids"]])

    def length_note(self, task: TaskSpec, lengths: np.ndarray, max_length: int) -> str:
        share = np.mean(lengths > max_length)
        return f"split into windows (doc_stride {doc_stride(task, max_length)}) at {max_length}: {share:.1%}"

    def label_summary(self, task: TaskSpec, columns: dict[str, list[Any]]) -> str:
        unanswerable = sum(not a for a in columns["answer_text"])
        return f"{len(columns['answer_text'])} questions, {unanswerable} unanswerable"

    # -- model and metrics --------------------------------------------------------------

    def model_class(self) -> type:
        return AutoModelForQuestionAnswering

    def check_model(self, task: TaskSpec, config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        super().check_model(task, config, tokenizer)
        if not tokenizer.is_fast:
            raise UserError(f"task {task.name!r} (question_answering) needs a fast tokenizer (its offsets map "
                            "answers to tokens); this model's tokenizer is not one")

    def config(self, encoder_config: PreTrainedConfig, task: TaskSpec) -> PreTrainedConfig:
        config = super().config(encoder_config, task)
        config.num_labels = 2  # the start and end logits
        return config

    def model_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is not None:
            inputs["start_positions"], inputs["end_positions"] = labels[:, 0], labels[:, 1]
        return inputs

    def reduce_logits(self, logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, 2): the start and end logits side by side, one array for the Trainer to gather."""
        return torch.stack([logits[0], logits[1]], dim=-1).float()

    def split_metrics(self, task: TaskSpec, predictions: Any, labels: np.ndarray, features: datasets.Dataset
                      ) -> dict[str, float]:
        columns = features.select_columns(["example", "offsets", "cls_index", "context", "answer_text"])[:]
        examples = np.asarray(columns["example"])
        contexts = dict(zip(columns["example"], columns["context"], strict=True))
        golds = dict(zip(columns["example"], columns["answer_text"], strict=True))
        found = best_answers(np.asarray(predictions), examples, columns["offsets"], columns["cls_index"], contexts,
                             task.n_best, task.max_answer_length)
        order = sorted(found)
        gold = [golds[e] for e in order]
        spans = [found[e]["answer"] for e in order]
        answered = [found[e]["answer"] if not _null(task, found[e]) else "" for e in order]
        exact, f1 = squad_scores(answered, gold)
        metrics = {"f1": float(f1.mean()), "exact_match": float(exact.mean())}
        if task.allow_unanswerable:
            has_answer = np.asarray([bool(g) for g in gold])
            span_exact, span_f1 = squad_scores(spans, gold)
            margins = np.asarray([found[e]["null_score"] - found[e]["span_score"] for e in order])
            metrics["has_answer_f1"] = float(f1[has_answer].mean()) if has_answer.any() else 0.0
            metrics["has_answer_exact_match"] = float(exact[has_answer].mean()) if has_answer.any() else 0.0
            metrics["no_answer_accuracy"] = float(exact[~has_answer].mean()) if (~has_answer).any() else 0.0
            metrics["best_f1"], metrics["best_f1_threshold"] = best_threshold(span_f1, margins, has_answer)
        return metrics

    def compute_metrics(self, task: TaskSpec, predictions: Any, labels: np.ndarray) -> dict[str, float]:
        raise NotImplementedError("question answering scores whole questions: see split_metrics")

    # -- inference ----------------------------------------------------------------------

    def predict(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        inputs: list[dict[str, Any]], max_length: int,
    ) -> list[dict[str, Any]]:
        if any(not (i.get("context") or "").strip() for i in inputs):
            raise UserError(f"task {task.name!r} answers questions about a text: pass --context (or \"context\" in "
                            "stdin's JSON lines) with the question as --text")
        columns = {"question": [i["text"] for i in inputs], "context": [i["context"] for i in inputs]}
        return [{"answer": a["answer"], "score": round(a["probability"], 4), "start": a["start"], "end": a["end"]}
                for a in self.answer(task, model, tokenizer, columns, max_length)]

    def predict_rows(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        columns: dict[str, list[Any]], max_length: int,
    ) -> list[tuple[str, ...]]:
        return [(a["answer"], str(a["start"]), str(a["end"]), f"{a['probability']:.4f}")
                for a in self.answer(task, model, tokenizer, columns, max_length)]

    def answer(self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
               columns: dict[str, list[Any]], max_length: int) -> list[dict[str, Any]]:
        """Each question's answer as evaluation finds it (an empty answer, with the null probability, when the task
        allows unanswerable questions and the null score wins)."""
        rows = {"question": columns["question"], "context": columns["context"],
                "answer_text": [[] for _ in columns["question"]], "answer_start": [[] for _ in columns["question"]]}
        features = self.tokenize(rows, task, tokenizer, max_length)
        batch = self.collate([{k: v[i] for k, v in features.items()} for i in range(len(features["input_ids"]))],
                             tokenizer, None)
        output = model(**{k: v for k, v in batch.items() if k != "labels"})
        logits = self.reduce_logits((output.start_logits, output.end_logits), batch["labels"]).numpy()
        found = best_answers(logits, np.asarray(features["example"]), features["offsets"], features["cls_index"],
                             dict(enumerate(columns["context"])), task.n_best, task.max_answer_length)
        results = []
        for i in range(len(columns["question"])):
            result = found[i]
            if _null(task, result):
                result = {"answer": "", "start": 0, "end": 0, "probability": result["null_probability"]}
            results.append(result)
        return results


def _null(task: TaskSpec, found: dict[str, Any]) -> bool:
    """Whether the question is answered "no answer": only where the task allows it, when the null score beats the
    best span's (the threshold 0; `best_f1_threshold` reports the dev split's best)."""
    return bool(task.allow_unanswerable) and found["null_score"] > found["span_score"]


DOC_STRIDE = 128  # SQuAD's usual overlap, at its usual MAX_SEQ_LENGTH of 384


def doc_stride(task: TaskSpec, max_length: int) -> int:
    """The task's `doc_stride`, else 128 or a third of MAX_SEQ_LENGTH when that is less (SQuAD's 128 of 384), so a
    QA task runs at the default MAX_SEQ_LENGTH of 128 too, with windows that overlap by 42 tokens."""
    return task.doc_stride if task.doc_stride is not None else min(DOC_STRIDE, max_length // 3)


def check_windows(task: TaskSpec, tokenizer: PreTrainedTokenizerBase, questions: list[str], max_length: int) -> None:
    """Refuse what can't be cut into windows: a doc_stride of MAX_SEQ_LENGTH or more, a question that leaves no room
    for its context, or one that leaves no more context per window than doc_stride (no window would move on)."""
    stride = doc_stride(task, max_length)
    if stride >= max_length:
        raise UserError(f"task {task.name!r}: doc_stride {stride} must be below MAX_SEQ_LENGTH={max_length} "
                        "(windows overlap by doc_stride tokens); lower it, or raise MAX_SEQ_LENGTH (SQuAD: 384 "
                        "with the default doc_stride 128)")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in encode_texts(tokenizer, questions, add_special_tokens=False)["input_ids"]]
    for question, length in zip(questions, lengths, strict=True):
        room = max_length - specials - length
        if room < 1:
            raise UserError(f"task {task.name!r}: the question {question[:60]!r} has {length} tokens, which leaves no "
                            f"room for its context in MAX_SEQ_LENGTH={max_length}; shorten it or raise MAX_SEQ_LENGTH")
        if stride >= room:
            raise UserError(f"task {task.name!r}: the question {question[:60]!r} leaves {room} context tokens per "
                            f"window at MAX_SEQ_LENGTH={max_length}, not more than doc_stride {stride}; "
                            "lower doc_stride or raise MAX_SEQ_LENGTH")


def answer_tokens(offsets: list[list[int]], texts: list[str], starts: list[int], cls: int) -> list[int]:
    """The window's first and last token of the (first) answer; [cls, cls] when it has none or it is not wholly
    inside the window."""
    if not texts:
        return [cls, cls]
    first_char, last_char = starts[0], starts[0] + len(texts[0])
    inside = [i for i, o in enumerate(offsets) if o != NO_OFFSET]
    if not inside or offsets[inside[0]][0] > first_char or offsets[inside[-1]][1] < last_char:
        return [cls, cls]
    start = max(i for i in inside if offsets[i][0] <= first_char)
    end = min(i for i in inside if offsets[i][1] >= last_char)
    return [start, end]


def _items(parent: Any, key: str, where: str) -> list[Any]:
    items = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(items, list):
        raise UserError(f"{where}: expected a list {key!r}")
    return items


KIND = QuestionAnswering()
