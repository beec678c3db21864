"""The built-in tasks (GLUE, CommonsenseQA, WNUT-17, WikiText-2 on the hub or in DATA_DIR) and the offline demo's."""

from __future__ import annotations

from typing import Any

from trainer.tasks import demo
from trainer.tasks.spec import COMMON_FIELDS, TaskSpec

_GLUE = "nyu-mll/glue"


def _glue(name: str, kind: str, text_columns: tuple[str, ...], label_column: str, hub_text: tuple[str, ...],
          **extra: Any) -> TaskSpec:
    common = {k: extra.pop(k) for k in list(extra) if k in COMMON_FIELDS}
    return TaskSpec(
        name=name, type=kind, options={"text_columns": text_columns, "label_column": label_column, **extra},
        test_file="test.tsv", hub_path=_GLUE, hub_name=name,
        hub_options={"text_columns": hub_text, "label_column": "label"}, **common,
    )


_PAIR = ("sentence1", "sentence2")
BUILTIN_TASKS: dict[str, TaskSpec] = {
    "stsb": _glue("stsb", "regression", _PAIR, "score", _PAIR),
    "rte": _glue("rte", "classification", _PAIR, "label", _PAIR, labels=("entailment", "not_entailment")),
    "sst2": _glue("sst2", "classification", ("sentence",), "label", ("sentence",), labels=("0", "1")),
    "mrpc": _glue("mrpc", "classification", ("#1 String", "#2 String"), "Quality", _PAIR, labels=("0", "1"),
                  main_metric="f1"),
    "cola": _glue("cola", "classification", ("sentence",), "label", ("sentence",), labels=("0", "1"),
                  main_metric="mcc", header=False, column_names=("source", "label", "original_label", "sentence")),
    "commonsense_qa": TaskSpec(
        name="commonsense_qa", type="multiple_choice",
        options={"text_columns": ("question.stem",),
                 "choice_columns": tuple(f"question.choices.{i}.text" for i in range(5)),
                 "label_column": "answerKey", "labels": ("A", "B", "C", "D", "E")},
        train_file="train_rand_split.jsonl", dev_file="dev_rand_split.jsonl",
        test_file="test_rand_split_no_answers.jsonl",
        hub_path="tau/commonsense_qa",
        hub_options={"text_columns": ("question",), "choice_columns": (), "choices_column": "choices.text"},
    ),
}

# The hub's ClassLabel order of WNUT-17's tags: the hub gives integers in this order.
WNUT17_TAGS = ("O", "B-corporation", "I-corporation", "B-creative-work", "I-creative-work", "B-group", "I-group",
               "B-location", "I-location", "B-person", "I-person", "B-product", "I-product")
BUILTIN_TASKS["wnut17"] = TaskSpec(
    name="wnut17", type="token_classification", options={"labels": WNUT17_TAGS},
    train_file="wnut17train.conll", dev_file="emerging.dev.conll", test_file="emerging.test.annotated",
    format="conll",
    hub_path="leondz/wnut_17", hub_options={"tags_column": "ner_tags"},
)
# WikiText-2's train split is missing from ../shared/data (SOURCES.md): locally valid.txt trains and
# test.txt evaluates (no local test split); the hub has all three splits (the raw text).
BUILTIN_TASKS["wikitext2"] = TaskSpec(
    name="wikitext2", type="masked_lm", train_file="valid.txt", dev_file="test.txt",
    hub_path="Salesforce/wikitext", hub_name="wikitext-2-raw-v1",
)

DEMO_TASKS: dict[str, TaskSpec] = {
    "demo_sentiment": TaskSpec(
        name="demo_sentiment", type="classification", demo=True,
        options={"text_columns": ("text",), "label_column": "label", "labels": ("negative", "positive")},
    ),
    "demo_similarity": TaskSpec(
        name="demo_similarity", type="regression", demo=True,
        options={"text_columns": ("a", "b"), "label_column": "score"},
    ),
    "demo_category": TaskSpec(
        name="demo_category", type="multiple_choice", demo=True,
        options={"text_columns": ("question",), "label_column": "answer",
                 "choice_columns": tuple(f"choice{i}" for i in range(demo.NUM_CHOICES))},
    ),
}
