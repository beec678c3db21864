"""Extractive question answering: windows of long contexts, the SQuAD scorer, SQuAD JSON/JSONL/source data, and
runs on a tiny BERT (training, predict, export, resume). No SQuAD-format data is at hand: the tests make their own."""

import json
import random
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
import transformers

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
    tail = [o for o in out["offsets"][same[0]].tolist() if o != [-1, -1]][-4:]
    head = [o for o in out["offsets"][same[1]].tolist() if o != [-1, -1]][:4]
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


# ---- the model: loss, save and reload, export ------------------------------------------------------------------


def _model_and_batch(tokenizer, task=QA, max_length=32):
    from trainer.data.dataset import TaskBatchCollator
    from trainer.model.modeling import MultitaskModel

    from .tiny import encoder_configs

    torch.manual_seed(0)
    model = MultitaskModel(transformers.AutoModel.from_config(encoder_configs(len(tokenizer))["bert"]), [task])
    rows = qa_rows(8, words=20)
    columns = {"question": [r["question"] for r in rows], "context": [r["context"] for r in rows],
               "answer_text": [r["answers"]["text"] for r in rows],
               "answer_start": [r["answers"]["answer_start"] for r in rows]}
    encoded = task.kind.tokenize(columns, task, tokenizer, max_length)
    features = [{"task": task.name, **{k: v[i] for k, v in encoded.items()}} for i in range(len(encoded["input_ids"]))]
    return model, TaskBatchCollator(tokenizer, [task])(features), rows


def test_the_training_loss_falls():
    model, batch, _ = _model_and_batch(build_demo_tokenizer())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    curve = []
    for _ in range(60):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        curve.append(loss.item())
    assert sum(curve[-5:]) / 5 < 0.5 * sum(curve[:5]) / 5, f"{curve[:5]} -> {curve[-5:]}"


def test_save_and_reload_is_bit_identical_and_the_export_answers_as_predict(tmp_path):
    """Trainer.save_model -> from_checkpoint gives the same logits bit for bit; the export loads with
    AutoModelForQuestionAnswering and `predict` on it answers every question as on the multitask model."""
    from trainer.data.dataset import TaskBatchCollator
    from trainer.model.modeling import MultitaskModel
    from trainer.outputs.export import export_tasks
    from trainer.outputs.inference import predict_inputs
    from trainer.training.trainer import MultitaskTrainer

    tokenizer = build_demo_tokenizer()
    model, batch, rows = _model_and_batch(tokenizer)
    model.eval()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = MultitaskTrainer(model=model, args=args, tasks=[QA], processing_class=tokenizer,
                               data_collator=TaskBatchCollator(tokenizer, [QA]))
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = MultitaskModel.from_checkpoint(tmp_path / "saved").eval()
    with torch.no_grad():
        expected = model(**batch)
        again = reloaded(**batch)
    assert torch.equal(expected.start_logits, again.start_logits) and torch.equal(expected.end_logits,
                                                                                  again.end_logits)
    (path,) = export_tasks(model, tokenizer, str(tmp_path / "export"))
    standalone = transformers.AutoModelForQuestionAnswering.from_pretrained(path).eval()
    assert type(standalone).__name__ == "BertForQuestionAnswering"
    inputs = [{"text": r["question"], "context": r["context"]} for r in rows]
    ours = predict_inputs(QA, model.task_models["qa"].eval(), tokenizer, inputs, 32)
    theirs = predict_inputs(QA, standalone, transformers.AutoTokenizer.from_pretrained(path), inputs, 32)
    assert [(o["answer"], o["start"], o["end"]) for o in ours] == [(t["answer"], t["start"], t["end"]) for t in theirs]
    assert all(r["context"][o["start"]:o["end"]] == o["answer"] for r, o in zip(rows, ours, strict=True))


def test_packing_pads_question_answering_with_one_line(caplog):
    from trainer.data.packing import packer_for

    from .tiny import encoder_configs

    encoder = transformers.AutoModel.from_config(encoder_configs()["bert"])
    with caplog.at_level("WARNING"):
        packer_for(encoder, [QA])
    if any("can't" in r.message or "cannot" in r.message for r in caplog.records):
        pytest.skip("this encoder can't pack at all")
    assert [r.message for r in caplog.records if "qa" in r.message] == [
        "PACKING=1: task 'qa' (question_answering) is padded: its labels are token positions inside each window"]


# ---- runs: in a mix with a demo task ---------------------------------------------------------------------------


def write_qa_task(root, train=300, dev=40, unanswerable=0.0):
    """A fruit_qa task: SQuAD JSON for train, JSONL for dev, both read through the TASKS_FILE."""
    write_squad(root / "train.json", qa_rows(train, seed=1, words=30, unanswerable=unanswerable))
    write_jsonl(root / "dev.jsonl", qa_rows(dev, seed=2, words=30, unanswerable=unanswerable))
    extra = ", allow_unanswerable: true" if unanswerable else ""
    (root / "tasks.yaml").write_text("tasks:\n  - {name: fruit_qa, type: question_answering, doc_stride: 16, "
                                     f"train_file: train.json, dev_file: dev.jsonl{extra}}}\n")
    return root / "tasks.yaml"


def test_resume_with_question_answering_in_a_mix_matches_an_uninterrupted_run(tmp_path):


    from .test_training import straight_and_resumed
    from .tiny import save_tiny_pretrained

    model_dir = save_tiny_pretrained(tmp_path / "tiny")
    common = {"model_name": str(model_dir), "tasks_file": str(write_qa_task(tmp_path, train=60, dev=8)),
              "tasks": "fruit_qa,demo_sentiment", "max_seq_length": 48, "max_steps": 12, "batch_size": 8,
              "max_train_samples": 60, "max_eval_samples": 8, "save_steps": 4, "eval_steps": 100, "seed": 3}
    a, b = straight_and_resumed(tmp_path, 6, **common)
    assert a.keys() == b.keys() and any(k.startswith("task_models.fruit_qa.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    from .tiny import run_cli, save_tiny_pretrained

    root = tmp_path_factory.mktemp("qa")
    env = {"MODEL_NAME": str(save_tiny_pretrained(root / "tiny")), "TASKS_FILE": str(write_qa_task(root)),
           "TASKS": "fruit_qa,demo_sentiment", "OUTPUT_DIR": str(root / "out"), "MAX_SEQ_LENGTH": "48",
           "MAX_STEPS": "120", "BATCH_SIZE": "16", "LEARNING_RATE": "3e-3", "LOGGING_STEPS": "10",
           "EVAL_STEPS": "60", "SAVE_STEPS": "60"}
    result = run_cli("train", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, env


def test_question_answering_trains_in_a_mix_predicts_and_exports(qa_run, tmp_path):
    from .tiny import ROOT, cli_environ, run_cli

    root, env = qa_run
    out = root / "out"
    report = json.loads((out / "metrics.json").read_text())
    assert report["main_metric"]["fruit_qa"] == "f1"
    assert report["tasks"]["fruit_qa"]["f1"] > 0.8 and "exact_match" in report["tasks"]["fruit_qa"]
    history = json.loads((out / "checkpoint-120" / "trainer_state.json").read_text())["log_history"]
    losses = [h["fruit_qa_loss"] for h in history if "fruit_qa_loss" in h]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses

    context = "we saw a red bus in town today and the fruit is cherry and the movie was good"
    answers = []
    for where in ([], ["--model_dir=" + str(out / "export" / "fruit_qa")]):
        result = run_cli("predict", "--task=fruit_qa", "--text=which fruit ?", f"--context={context}", *where,
                         env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        answers.append(json.loads(result.stdout))
    assert answers[0] == answers[1]  # predict reads export/<task> by default: the same model either way
    assert (answers[0]["answer"], answers[0]["start"]) == ("cherry", context.index("cherry"))
    assert 0 < answers[0]["score"] <= 1 and answers[0]["end"] == answers[0]["start"] + len("cherry")

    stdin = json.dumps({"text": "which fruit ?", "context": context}) + "\n"
    result = subprocess.run([sys.executable, "-m", "trainer", "predict", "--task=fruit_qa", "--text=-"], input=stdin,
                            env=cli_environ(env), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and json.loads(result.stdout)["answer"] == "cherry", result.stderr[-2000:]

    result = run_cli("predict-file", "--task=fruit_qa", f"--input={root / 'dev.jsonl'}",
                     f"--output={tmp_path / 'answers.tsv'}", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (tmp_path / "answers.tsv").read_text().splitlines()
    assert lines[0] == "index\tanswer\tstart\tend\tscore" and len(lines) == 41
    gold = [r["answers"]["text"][0] for r in qa_rows(40, seed=2, words=30)]
    assert np.mean([line.split("\t")[1] == g for line, g in zip(lines[1:], gold, strict=True)]) > 0.8

    model = transformers.AutoModelForQuestionAnswering.from_pretrained(out / "export" / "fruit_qa")
    assert type(model).__name__ == "BertForQuestionAnswering"
    card = (out / "export" / "fruit_qa" / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0].replace("ORG/NAME", str(out / "export" / "fruit_qa"))
    result = subprocess.run([sys.executable, "-c", snippet], env=cli_environ(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "plum", result.stderr[-2000:]  # the card's usage


@pytest.mark.parametrize("sampling", ["uniform", "all_tasks"])
def test_torchrun_two_ranks_with_question_answering_in_a_mix(tmp_path, sampling):
    """Two gloo ranks: the same task (or, all_tasks, every task) in every step, equal weights at the end, and
    the dev windows gathered from both ranks put back together per question (all_tasks: with unanswerable ones)."""
    from .test_ddp import torchrun_worker

    write_qa_task(tmp_path, train=96, dev=16, unanswerable=0.3 if sampling == "all_tasks" else 0.0)
    tasks, _ = torchrun_worker(tmp_path, SAMPLING=sampling, TASKS="demo_sentiment,fruit_qa",
                               TASKS_FILE=str(tmp_path / "tasks.yaml"), MAX_SEQ_LENGTH="48")
    expected = {"demo_sentiment+fruit_qa"} if sampling == "all_tasks" else {"demo_sentiment", "fruit_qa"}
    assert set(tasks[0]) == expected
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {"f1", "exact_match"} <= set(report["tasks"]["fruit_qa"])
    if sampling == "all_tasks":  # SQuAD v2-style questions without an answer: their metrics too
        assert {"has_answer_f1", "no_answer_accuracy", "best_f1_threshold"} <= set(report["tasks"]["fruit_qa"])


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "electra", "deberta-v2", "modernbert", "gpt2",
                                  "llama"])
def test_question_answering_runs_on_every_architecture(arch):
    """The QA model shares the encoder and gives a finite loss on every family, byte-level BPE included (GPT-2 and
    Llama pad with EOS, on the right whatever their side)."""
    from trainer.data.dataset import TaskBatchCollator
    from trainer.model.modeling import MultitaskModel

    from .tiny import decoder_configs, encoder_configs

    decoder = arch in ("gpt2", "llama")
    tokenizer = gpt2_tokenizer() if decoder else roberta_tokenizer()
    if decoder:
        tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
    config = (decoder_configs(len(tokenizer), tokenizer.pad_token_id) if decoder else encoder_configs())[arch]
    torch.manual_seed(0)
    model = MultitaskModel(transformers.AutoModel.from_config(config), [QA])
    task_model = model.task_models["qa"]
    assert getattr(task_model, task_model.base_model_prefix) is model.encoder
    rows = qa_rows(4, words=12)
    columns = {"question": [r["question"] for r in rows], "context": [r["context"] for r in rows],
               "answer_text": [r["answers"]["text"] for r in rows],
               "answer_start": [r["answers"]["answer_start"] for r in rows]}
    encoded = QA.kind.tokenize(columns, QA, tokenizer, 40)
    features = [{"task": "qa", **{k: v[i] for k, v in encoded.items()}} for i in range(len(encoded["input_ids"]))]
    batch = TaskBatchCollator(tokenizer, [QA])(features)
    assert (batch["input_ids"][:, 0] != tokenizer.pad_token_id).all()  # padded on the right
    assert torch.isfinite(model(**batch).loss)


def test_check_reports_windows_and_refuses_what_training_refuses(tmp_path):
    from trainer.check import check

    from .tiny import settings_of

    tasks_file = write_qa_task(tmp_path, train=20, dev=5, unanswerable=0.3)
    report = check(settings_of(tasks="fruit_qa", tasks_file=str(tasks_file), max_seq_length=48))
    assert "split into windows (doc_stride 16) at 48" in report and "unanswerable" in report
    with pytest.raises(UserError, match=r"doc_stride 16 must be below MAX_SEQ_LENGTH=16"):
        check(settings_of(tasks="fruit_qa", tasks_file=str(tasks_file), max_seq_length=16))


def test_predict_needs_a_context_and_answers_null_only_where_allowed(monkeypatch):
    from trainer.outputs.inference import predict_inputs

    tokenizer = build_demo_tokenizer()
    model, _, _ = _model_and_batch(tokenizer)
    qa_model = model.task_models["qa"].eval()
    with pytest.raises(UserError, match=r"task 'qa' answers questions about a text: pass --context"):
        predict_inputs(QA, qa_model, tokenizer, [{"text": "which fruit ?"}], 32)
    inputs = [{"text": "which fruit ?", "context": "the fruit is plum and we saw a bus"}]
    (answered,) = predict_inputs(QA, qa_model, tokenizer, inputs, 32)
    assert answered["answer"] and inputs[0]["context"][answered["start"]:answered["end"]] == answered["answer"]

    original = QA.kind.reduce_logits

    def cls_wins(logits, labels):  # the CLS position's start and end logits far above every other
        stacked = original(logits, labels)
        stacked[:, 0] = 100.0
        return stacked

    monkeypatch.setattr(QA.kind, "reduce_logits", cls_wins)
    v2 = TaskSpec.from_dict({"name": "qa", "type": "question_answering", "allow_unanswerable": True,
                             "doc_stride": 4})
    (null,) = predict_inputs(v2, qa_model, tokenizer, inputs, 32)
    (span,) = predict_inputs(QA, qa_model, tokenizer, inputs, 32)
    assert (null["answer"], null["start"], null["end"]) == ("", 0, 0) and null["score"] > 0.9
    assert span["answer"] != ""  # without allow_unanswerable the best span is the answer


def test_the_default_doc_stride_fits_the_default_max_seq_length():
    """Without `doc_stride`, windows overlap by 128 tokens, or a third of MAX_SEQ_LENGTH when that is less: a QA
    task runs at the default MAX_SEQ_LENGTH of 128; a doc_stride set at or above MAX_SEQ_LENGTH is refused."""
    from trainer.tasks.kinds.question_answering import check_windows, doc_stride

    task = TaskSpec.from_dict({"name": "qa", "type": "question_answering"})
    assert (doc_stride(task, 128), doc_stride(task, 384), doc_stride(task, 1024)) == (42, 128, 128)
    check_windows(task, build_demo_tokenizer(), ["which fruit is red ?"], 128)
    wide = TaskSpec.from_dict({"name": "qa", "type": "question_answering", "doc_stride": 128})
    with pytest.raises(UserError, match=r"doc_stride 128 must be below MAX_SEQ_LENGTH=128"):
        check_windows(wide, build_demo_tokenizer(), ["which fruit is red ?"], 128)
