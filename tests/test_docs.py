"""The README and .env.example stay true to the code."""

import json
import re

from trainer.config.settings import ENV_NAMES
from trainer.data.read import read_split
from trainer.tasks.declare import load_tasks_file

from .tiny import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented():
    example = (ROOT / ".env.example").read_text()
    for name in ENV_NAMES:
        assert f"`{name}`" in README, f"{name} missing from the README settings table"
        assert re.search(rf"^# {name}=", example, re.M), f"{name} missing from .env.example"


def test_readme_quickstart_commands():
    assert "make run-local" in README and "make test" in README
    assert "MODEL_NAME=roberta-base TASKS=stsb,rte,commonsense_qa" in README


def test_the_readme_tasks_file_example_works(tmp_path):
    block = re.search(r"```yaml\n(tasks:.*?)```", README, re.S).group(1)
    (tmp_path / "tasks.yaml").write_text(block)
    files = {
        "data/sentiment/train.csv": "review,stars\ngreat value,good\nmeh,ok\n",
        "data/sentiment/dev.csv": "review,stars\nawful,bad\n",
        "data/sim/train.tsv": "sentence1\tsentence2\tscore\na\tb\t1.5\n",
        "data/sim/dev.tsv": "sentence1\tsentence2\tscore\na\tc\t0\n",
        "data/quiz/train.jsonl": json.dumps({"question": {"stem": "q?"}, "options": ["x", "y", "z"], "answer": 2}),
        "data/quiz/dev.jsonl": json.dumps({"question": {"stem": "r?"}, "options": ["x", "y", "z"], "answer": 0}),
        "data/ner/train.conll": "Ann\tB-PER\nlives\tO\nin\tO\nRome\tB-LOC\n\nBo\tB-PER\n",
        "data/ner/dev.jsonl": json.dumps({"tokens": ["Ann", "Lee"], "tags": ["B-PER", "I-PER"]}),
        "data/text/train.txt": "first line\n\nsecond line",
        "data/text/dev.txt": "third line",
    }
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content + "\n")
    tasks = load_tasks_file(str(tmp_path / "tasks.yaml"))
    assert read_split(tasks["sentiment"], "train", None).label == [2, 1]
    assert tasks["sentiment"].metric == "macro_f1"
    assert read_split(tasks["similarity"], "train", None).label == [1.5]
    quiz = read_split(tasks["quiz"], "train", None)
    assert quiz.text_a == ["q?"] and quiz.choices == [["x", "y", "z"]] and quiz.label == [2]
    ner = read_split(tasks["ner"], "train", None)
    assert ner.tokens == [["Ann", "lives", "in", "Rome"], ["Bo"]] and ner.tags == [[1, 0, 0, 3], [1]]
    assert read_split(tasks["ner"], "dev", None).tags == [[1, 2]]
    assert read_split(tasks["wiki"], "train", None).text == ["first line", "second line"]
    assert not tasks["wiki"].counts_in_average and tasks["story"].metric == "accuracy"


def test_the_readme_source_example_declares_the_tweeteval_tasks(tmp_path):
    block = re.search(r"```yaml\n(tasks:\n  - name: emotion.*?)```", README, re.S).group(1)
    (tmp_path / "tasks.yaml").write_text(block)
    tasks = load_tasks_file(str(tmp_path / "tasks.yaml"))  # declared offline: the labels come when read
    for name in ("emotion", "sentiment"):
        task = tasks[name]
        assert (task.hub_path, task.hub_name) == ("cardiffnlp/tweet_eval", name) and task.declared_source
        assert task.hub_splits == ("train", "validation", "test" if name == "emotion" else "")
        assert task.labels == () and task.text_columns == ("text",) and task.main_metric == "macro_f1"


def test_the_readme_trec_and_tweeteval_example_reads_trec_lines(tmp_path):
    block = re.search(r"```yaml\n(tasks:\n  - name: trec.*?)```", README, re.S).group(1)
    (tmp_path / "tasks.yaml").write_text(block)
    (tmp_path / "trec").mkdir()
    lines = ["DESC:manner How did serfdom develop ?", "NUM:date When was Ozzy born ?", "HUM:ind Who is he ?",
             "LOC:city Where is Caf\xe9 Rouge ?"] * 10
    (tmp_path / "trec" / "train_5500.label").write_bytes("\n".join(lines).encode("latin-1"))
    tasks = load_tasks_file(str(tmp_path / "tasks.yaml"))
    dev = read_split(tasks["trec"], "dev", None)
    assert len(dev) == 4 and sorted(dev.label) == [1, 3, 4, 5]  # 10 % of 40, one of each label
    assert "Where is Caf\xe9 Rouge ?" in read_split(tasks["trec"], "train", None).text_a
    assert tasks["irony"].test_labels_file.endswith("tweeteval/irony/test_labels.txt")
