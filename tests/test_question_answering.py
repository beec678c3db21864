"""Extractive question answering: windows of long contexts, the SQuAD scorer, SQuAD JSON/JSONL/source data, and
runs on a tiny BERT (training, predict, export, resume). No SQuAD-format data is at hand: the tests make their own."""

import json
import random

import datasets
import numpy as np
import pytest

from trainer.errors import UserError
from trainer.tasks.demo import build_demo_tokenizer
from trainer.tasks.kinds.question_answering import (
    best_answers,
    best_threshold,
    normalize_answer,
    squad_scores,
    token_f1,
)
from trainer.tasks.spec import TaskSpec

from .tiny import gpt2_tokenizer, roberta_tokenizer

QA = TaskSpec.from_dict({"name": "qa", "type": "question_answering", "doc_stride": 4})
QA2 = TaskSpec.from_dict({"name": "qa2", "type": "question_answering", "allow_unanswerable": True,
                         "doc_stride": 16})
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
FILLER = ["the", "movie", "was", "good", "and", "we", "saw", "a", "red", "bus", "in", "town", "today"]


def qa_rows(count: int, seed: int = 0, words: int = 40, unanswerable: float = 0.0) -> list[dict]:
    """Questions with something to learn: "which fruit ?" about a text of filler words with one "the fruit is X"
    somewhere (long enough to need several windows); with `unanswerable`, that share has no fruit."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        filler = [rng.choice(FILLER) for _ in range(words)]
        if rng.random() < unanswerable:
            rows.append({"id": f"q{i}", "question": "which fruit ?", "context": " ".join(filler),
                         "answers": {"text": [], "answer_start": []}})
            continue
        fruit, at = rng.choice(FRUITS), rng.randrange(words)
        before = " ".join(filler[:at] + ["the", "fruit", "is"]) + " "
        context = before + " ".join([fruit] + filler[at:])
        rows.append({"id": f"q{i}", "question": "which fruit ?", "context": context,
                     "answers": {"text": [fruit], "answer_start": [len(before)]}})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_squad(path, rows):
    """SQuAD's own layout: data[].paragraphs[] with a context and its qas[], one paragraph per row, indented."""
    paragraphs = []
    for r in rows:
        answers = [{"text": t, "answer_start": s}
                   for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"], strict=True)]
        paragraphs.append({"context": r["context"], "qas": [{"id": r["id"], "question": r["question"],
                                                             "is_impossible": not answers, "answers": answers}]})
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}, indent=1))
    return path


# ---- the scorer, hand-checked --------------------------------------------------------------------------------


def test_squad_normalisation_and_scores_are_hand_checked():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an Apple, a pear and THE plum.") == "apple pear and plum"
    # "the cat sat" vs "a cat sat down": normalised "cat sat" vs "cat sat down": 2 common words,
    # precision 2/2, recall 2/3, F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("cat", "") == 0.0
    exact, f1 = squad_scores(["Paris.", "in the city of paris", "", "x"], [["paris", "Lyon"], ["Paris"], [], ["y"]])
    assert exact.tolist() == [1.0, 0.0, 1.0, 0.0]
    # "in city of paris" vs "paris": 1 common word, precision 1/4, recall 1, F1 = 2 * 0.25 / 1.25 = 0.4
    assert f1.tolist() == pytest.approx([1.0, 0.4, 1.0, 0.0])


def test_the_best_null_threshold_follows_the_official_script():
    # three questions: two with answers (span F1 1.0 and 0.5), one without; null margins -2, 1, 3
    score, threshold = best_threshold(np.array([1.0, 0.5, 0.0]), np.array([-2.0, 1.0, 3.0]),
                                      np.array([True, True, False]))
    # thresholds: all null -> 1/3; answer q0 -> (1 + 1)/3; also q1 -> 2.5/3; also q2 -> 1.5/3: best 2.5/3 at 1.0
    assert score == pytest.approx(2.5 / 3) and threshold == 1.0


# ---- windows -------------------------------------------------------------------------------------------------


def _straddling(tokenizer, max_length):
    """A context whose answer ("banana bus", two words or more tokens) is cut by the first window's end: it is
    whole only in the second window."""
    task = TaskSpec.from_dict({"name": "qa", "type": "question_answering", "doc_stride": 6})
    question = "which fruit ?"
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - len(
        tokenizer(question, add_special_tokens=False)["input_ids"])
    words = []
    while True:  # add filler until the answer starts inside the first window and ends after it
        context = " ".join([*words, "the", "banana", "bus"])
        start = len(" ".join([*words, "the"])) + 1
        offsets = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        first = next(i for i, (s, e) in enumerate(offsets) if e > start)
        if first <= room - 1 < len(offsets) - 1:
            break
        assert first < room, "no filler length cuts the answer"
        words.append("the")  # one token in both vocabularies: the answer moves one token at a time
    rows = {"question": [question], "context": [context], "answer_text": [["banana bus"]], "answer_start": [[start]]}
    return task, rows, start


@pytest.mark.parametrize("make", [build_demo_tokenizer, roberta_tokenizer, gpt2_tokenizer],
                         ids=["wordpiece", "byte-level-bpe-roberta", "byte-level-bpe-gpt2"])
def test_an_answer_straddling_two_windows_is_labelled_in_the_window_that_holds_it(make):
    tokenizer = make()
    task, rows, start = _straddling(tokenizer, 24)
    out = task.kind.tokenize(rows, task, tokenizer, 24)
    assert len(out["input_ids"]) >= 2
    first, second = out["labels"][0], out["labels"][1]
    assert first == [out["cls_index"][0]] * 2  # cut by the window's end: no answer here
    s, e = second
    offsets = out["offsets"][1]
    assert s != out["cls_index"][1] and rows["context"][0][offsets[s][0]:offsets[e][1]].strip() == "banana bus"
    # evaluation puts the two windows back together and finds the answer from the second one's logits
    logits = np.full((len(out["input_ids"]), max(out["length"]), 2), -5.0)
    logits[1, s, 0] = logits[1, e, 1] = 5.0
    found = best_answers(logits, np.asarray(out["example"]), out["offsets"], out["cls_index"],
                         {0: rows["context"][0]}, 20, 30)
    assert (found[0]["answer"], found[0]["start"], found[0]["end"]) == ("banana bus", start, start + 10)


def test_windows_overlap_by_doc_stride_and_every_one_names_its_row():
    tokenizer = build_demo_tokenizer()
    rows = qa_rows(3, words=30)
    columns = {"question": [r["question"] for r in rows], "context": [r["context"] for r in rows],
               "answer_text": [r["answers"]["text"] for r in rows],
               "answer_start": [r["answers"]["answer_start"] for r in rows]}
    out = QA.kind.tokenize_rows(columns, [7, 8, 9], QA, tokenizer, 24)
    assert sorted(set(out["example"])) == [7, 8, 9] and len(out["example"]) > 3
    assert max(out["length"]) <= 24
    same = [i for i, e in enumerate(out["example"]) if e == 7]
    tail = [o for o in out["offsets"][same[0]] if o != [-1, -1]][-4:]
    head = [o for o in out["offsets"][same[1]] if o != [-1, -1]][:4]
    assert tail == head  # doc_stride 4: the next window starts with the last 4 context tokens of this one
    for i, (s, e) in enumerate(out["labels"]):  # every window holding the whole answer is labelled with it
        context, gold = columns["context"][out["example"][i] - 7], columns["answer_text"][out["example"][i] - 7][0]
        if s != out["cls_index"][i]:
            assert context[out["offsets"][i][s][0]:out["offsets"][i][e][1]] == gold


def test_v2_null_answers_and_has_answer_no_answer_metrics():
    """Two questions, one answerable, one not; the model's logits are made up by hand."""
    tokenizer = build_demo_tokenizer()
    rows = {"question": ["which fruit ?"] * 2, "context": ["the fruit is plum", "we saw a bus"],
            "answer_text": [["plum"], []], "answer_start": [[13], []]}
    features = datasets.Dataset.from_dict(QA2.kind.tokenize(rows, QA2, tokenizer, 64))
    logits = np.full((2, max(features["length"]), 2), -5.0)
    plum = features["labels"][0][0]
    logits[0, plum] = 6.0  # the span "plum" scores 12, its null score (CLS) -10: answered
    logits[1, 0] = 3.0  # the second one's null score 6 beats every span (-10): no answer
    metrics = QA2.kind.split_metrics(QA2, logits, np.asarray(features["labels"]), features)
    assert metrics["exact_match"] == 1.0 and metrics["f1"] == 1.0
    assert metrics["has_answer_exact_match"] == 1.0 and metrics["no_answer_accuracy"] == 1.0
    logits[1, 0] = -6.0  # now a (wrong) span of the second context wins: it is answered, and wrong
    metrics = QA2.kind.split_metrics(QA2, logits, np.asarray(features["labels"]), features)
    assert metrics["exact_match"] == 0.5 and metrics["no_answer_accuracy"] == 0.0
    assert metrics["has_answer_f1"] == 1.0
    # null margins (null score - best span score): the first -10 - 12 = -22, the second -12 - (-10) = -2; a
    # threshold of -22 answers the first and makes the second null: both right
    assert metrics["best_f1"] == 1.0 and metrics["best_f1_threshold"] == pytest.approx(-22.0)


# ---- data ----------------------------------------------------------------------------------------------------


def test_squad_json_and_jsonl_read_the_same_rows(tmp_path):
    from trainer.data.read import read_split

    rows = qa_rows(5, unanswerable=0.4, seed=3)
    write_squad(tmp_path / "train.json", rows)
    write_jsonl(tmp_path / "train.jsonl", rows)
    read = {}
    for suffix in ("json", "jsonl"):
        task = TaskSpec.from_dict({"name": "qa", "type": "question_answering", "allow_unanswerable": True,
                                   "train_file": str(tmp_path / f"train.{suffix}")})
        read[suffix] = read_split(task, "train", None).columns
    assert read["json"]["answer_text"] == read["jsonl"]["answer_text"] == [r["answers"]["text"] for r in rows]
    assert read["json"]["context"] == read["jsonl"]["context"]


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_an_answer_start_that_does_not_match_names_the_file_and_line(tmp_path, suffix):
    from trainer.data.read import read_split

    rows = qa_rows(4)
    rows[2]["answers"]["answer_start"] = [rows[2]["answers"]["answer_start"][0] + 1]
    path = (write_squad if suffix == "json" else write_jsonl)(tmp_path / f"train.{suffix}", rows)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if '"q2"' in text)
    task = TaskSpec.from_dict({"name": "qa", "type": "question_answering", "train_file": str(path)})
    with pytest.raises(UserError, match=rf"{path}:{line}\b.*answer '\w+' is not at answer_start"):
        read_split(task, "train", None)


def test_unanswerable_questions_need_allow_unanswerable(tmp_path):
    from trainer.data.read import read_split

    path = write_jsonl(tmp_path / "train.jsonl", qa_rows(3, unanswerable=1.0))
    task = TaskSpec.from_dict({"name": "qa", "type": "question_answering", "train_file": str(path)})
    with pytest.raises(UserError, match=rf"{path}:1: the question has no answer; set 'allow_unanswerable: true'"):
        read_split(task, "train", None)


def test_a_declared_source_in_the_datasets_layout(tmp_path, monkeypatch):
    """`source:` goes through `datasets.load_dataset`, as `source: {dataset: rajpurkar/squad}` does, here on a
    local folder of SQuAD's columns (id, title, context, question, answers {text, answer_start})."""
    from trainer.data.read import read_split, resolve_source
    from trainer.tasks.declare import load_tasks_file

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    folder = tmp_path / "squad"
    folder.mkdir()
    for split, seed in (("train", 1), ("validation", 2)):
        rows = [{**r, "title": "t"} for r in qa_rows(6, seed=seed)]
        datasets.Dataset.from_list(rows).to_parquet(str(folder / f"{split}.parquet"))
    (tmp_path / "tasks.yaml").write_text("tasks:\n  - {name: squad, type: question_answering, "
                                         "source: {dataset: squad}}\n")
    (task,) = [resolve_source(t) for t in load_tasks_file(str(tmp_path / "tasks.yaml")).values()]
    dev = read_split(task, "dev", None).columns
    assert dev["answer_text"] == [r["answers"]["text"] for r in qa_rows(6, seed=2)]
