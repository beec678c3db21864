"""Test splits, `evaluate` and `predict-file`: labelled test splits are scored as training scores dev, unlabelled
ones are refused with one line, and predict-file streams any file of the task's format into a TSV."""

import csv
import json
import subprocess
import sys

import datasets
import pytest

from trainer.data.arrow_split import UnlabelledSplit
from trainer.data.read import read_split
from trainer.errors import UserError
from trainer.tasks.catalog import BUILTIN_TASKS
from trainer.tasks.declare import load_tasks_file

from .tiny import ROOT, SHARED_DATA, cli_environ, quick_env

# ---- reading test splits (fast) -------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_real_test_splits_glue_is_refused_and_wnut17_reads():
    with pytest.raises(UnlabelledSplit, match=r"task 'rte': the test split \(.*rte/test\.tsv\) has no labels "
                                              r"\(GLUE withholds them\); score the dev split, or write predictions"):
        read_split(BUILTIN_TASKS["rte"], "test", str(SHARED_DATA))
    with pytest.raises(UnlabelledSplit, match=r"task 'commonsense_qa'.*\(CommonsenseQA withholds them\)"):
        read_split(BUILTIN_TASKS["commonsense_qa"], "test", str(SHARED_DATA))
    wnut = read_split(BUILTIN_TASKS["wnut17"], "test", str(SHARED_DATA))
    assert len(wnut) == 1287 and any(any(tags) for tags in wnut.tags)  # gold tags, not placeholders
    with pytest.raises(UserError, match=r"task 'wikitext2' has no local test split; the hub has one"):
        read_split(BUILTIN_TASKS["wikitext2"], "test", str(SHARED_DATA))


def test_the_hub_test_split_is_asked_for_by_its_name_and_withheld_labels_are_refused(monkeypatch):
    asked = []

    def load_dataset(path, name, split):
        asked.append((path, name, split))
        return datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [-1 if split == "test"
                                                                                             else 1]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert read_split(BUILTIN_TASKS["rte"], "dev", None).label == [1]
    with pytest.raises(UnlabelledSplit, match=r"the test split \(nyu-mll/glue test\) has no labels"):
        read_split(BUILTIN_TASKS["rte"], "test", None)
    assert asked == [("nyu-mll/glue", "rte", "validation"), ("nyu-mll/glue", "rte", "test")]


def test_test_file_is_optional_and_relative_to_the_tasks_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "t.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - {name: a, type: classification, text_columns: [text], label_column: label, labels: [neg, pos],"
        " train_file: d/t.csv, dev_file: d/t.csv, test_file: d/t.csv}\n"
        "  - {name: b, type: classification, text_columns: [text], label_column: label, labels: [neg, pos],"
        " train_file: d/t.csv, dev_file: d/t.csv}\n")
    tasks = load_tasks_file(str(tmp_path / "tasks.yaml"))
    assert read_split(tasks["a"], "test", None).label == [1, 0]
    with pytest.raises(UserError, match=r"task 'b' has no local test split; declare 'test_file:' for it"):
        read_split(tasks["b"], "test", None)


# ---- one trained run: evaluate and predict-file ------------------------------------------------------------

WORDS = {"pos": ["good", "great", "wonderful", "lovely"], "neg": ["bad", "awful", "boring", "dull"]}


def _rows(count: int, offset: int = 0):
    for i in range(count):
        label = "pos" if (i + offset) % 2 else "neg"
        yield f"a {WORDS[label][(i + offset) % 4]} film number {i}", label


@pytest.fixture(scope="module")
def run(tmp_path_factory, forked_cli):
    """Two tasks: `mood` has a labelled test file with an index column, `blind` a test file without labels."""
    root = tmp_path_factory.mktemp("eval")
    (root / "train.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in _rows(64)))
    (root / "dev.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in _rows(16, 1)))
    (root / "test.tsv").write_text("index\ttext\tlabel\n" + "".join(f"{100 + i}\t{t}\t{y}\n"
                                                                     for i, (t, y) in enumerate(_rows(40, 3))))
    (root / "blind.tsv").write_text("index\ttext\n" + "".join(f"{i}\t{t}\n" for i, (t, _) in enumerate(_rows(5))))
    entry = "type: classification, text_columns: [text], label_column: label, labels: [neg, pos], " \
            "train_file: train.tsv, dev_file: dev.tsv"
    (root / "tasks.yaml").write_text(f"tasks:\n  - {{name: mood, {entry}, test_file: test.tsv}}\n"
                                     f"  - {{name: blind, {entry}, test_file: blind.tsv}}\n")
    out = root / "out"
    env = quick_env(out, TASKS_FILE=str(root / "tasks.yaml"), MAX_STEPS="8")
    result = forked_cli.run("train", env=cli_environ(env), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, out, env


def one_error_line(result) -> str:
    """The one `error:` line; beside it stderr may only hold predict-file's progress bar."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("predicting ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def read_tsv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle, delimiter="\t"))


@pytest.mark.slow
def test_evaluate_refuses_an_unlabelled_test_split_before_scoring_anything(run, cli):
    root, out, env = run
    line = one_error_line(cli("evaluate", "--split=test", env=env))
    assert f"task 'blind': the test split ({root / 'blind.tsv'}) has no labels" in line
    assert "--tasks=mood scores the labelled ones" in line
    assert not (out / "metrics_test.json").exists()


@pytest.mark.slow
def test_evaluate_scores_a_labelled_test_split_as_predict_file_predicts_it(run, tmp_path, cli):
    root, out, env = run
    result = cli("evaluate", "--split=test", "--tasks=mood", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "metrics_test.json").read_text())
    assert env["MAX_EVAL_SAMPLES"] == "32"  # the first 32 of the 40 rows are scored, as for dev
    assert report["split"] == "test" and report["examples"] == {"mood": 32} and report["main_metric"] == {
        "mood": "accuracy"}
    assert f"test metrics -> {out / 'metrics_test.json'}" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines()]
    assert any(row[:2] == ["mood", "accuracy"] and row[3] == "32" for row in rows), result.stdout

    predicted = tmp_path / "mood.tsv"
    result = cli("predict-file", "--task=mood", f"--input={root / 'test.tsv'}", f"--output={predicted}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    table = read_tsv(predicted)
    assert table[0] == ["index", "prediction", "probability"]
    assert [row[0] for row in table[1:]] == [str(100 + i) for i in range(40)]  # the file's index column
    assert all(row[1] in ("neg", "pos") and 0.5 <= float(row[2]) <= 1.0 for row in table[1:])
    gold = [y for _, y in _rows(32, 3)]
    accuracy = sum(row[1] == y for row, y in zip(table[1:33], gold, strict=True)) / len(gold)
    assert report["tasks"]["mood"]["accuracy"] == pytest.approx(accuracy)
    assert report["average"] == pytest.approx(accuracy)

    assert cli("evaluate", "--split=dev", "--tasks=mood", env=env).returncode == 0
    dev = json.loads((out / "metrics_dev.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())  # training's final evaluation of the same weights
    assert dev["tasks"]["mood"]["accuracy"] == pytest.approx(metrics["tasks"]["mood"]["accuracy"])


@pytest.mark.slow
def test_predict_file_reads_unlabelled_files_and_refuses_bad_lines_leaving_nothing(run, tmp_path, cli):
    root, _, env = run
    predicted = tmp_path / "blind.tsv"
    result = cli("predict-file", "--task=blind", f"--input={root / 'blind.tsv'}", f"--output={predicted}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row[0] for row in read_tsv(predicted)] == ["index", "0", "1", "2", "3", "4"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\n" + "fine\n" * 100 + "one\ttoo many\n")
    line = one_error_line(cli("predict-file", "--task=blind", f"--input={bad}", f"--output={tmp_path / 'x.tsv'}",
                              env=env))
    assert f"{bad}:102: expected 1 columns (text), found 2" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tsv", "blind.tsv"]  # no x.tsv, no x.tsv.partial


def _peak_rss_kb(rows: int, tmp_path, env) -> int:
    """Peak RSS of one predict-file process on `rows` rows of ~2 KB each, measured by a fresh parent."""
    data = tmp_path / f"rows{rows}.tsv"
    filler = "z" * 2000  # ~2 KB, one word: WordPiece makes it [UNK] at once, so tokenising stays cheap
    with open(data, "w") as handle:
        handle.write("text\n")
        for i in range(rows):
            handle.write(f"{i} good {filler}\n")
    command = [sys.executable, "-m", "trainer", "predict-file", "--task=mood", f"--input={data}",
               f"--output={tmp_path / f'out{rows}.tsv'}", "--max_seq_length=4"]
    probe = ("import resource, subprocess, sys; out = subprocess.DEVNULL; "
             "code = subprocess.run(sys.argv[1:], stdout=out, stderr=out).returncode; "
             "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    full_env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env}
    result = subprocess.run([sys.executable, "-c", probe, *command], env=full_env, capture_output=True, text=True,
                            timeout=600)
    code, peak = result.stdout.split()
    assert code == "0", result.stderr
    assert len(read_tsv(tmp_path / f"out{rows}.tsv")) == rows + 1
    return int(peak)


@pytest.mark.slow
def test_predict_file_memory_stays_flat_from_1000_to_10000_rows(run, tmp_path):
    """Holding 10,000 rows of ~2 KB costs over 20 MB (the texts alone); streaming costs the same at any size.
    (Fewer, longer rows than one would predict: the same 20 MB with half the model calls.)"""
    _, _, env = run
    small, large = _peak_rss_kb(1_000, tmp_path, env), _peak_rss_kb(10_000, tmp_path, env)
    assert large - small < 8_000, f"peak RSS grew by {(large - small) / 1000:.1f} MB from 1,000 to 10,000 rows"
