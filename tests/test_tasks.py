import datasets
import pytest

from trainer.data.arrow_split import read_local_split
from trainer.data.read import normalise_hub_rows, read_split
from trainer.errors import UserError
from trainer.tasks.catalog import BUILTIN_TASKS
from trainer.tasks.declare import load_tasks_file, resolve_tasks

from .tiny import SHARED_DATA

OFFICIAL_ROWS = {
    "rte": (2490, 277), "stsb": (5749, 1500), "sst2": (67349, 872), "mrpc": (3668, 408),
    "cola": (8551, 1043), "commonsense_qa": (9741, 1221),
}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the project")
@pytest.mark.parametrize("name", sorted(OFFICIAL_ROWS))
def test_builtin_tasks_load_from_local_files_with_official_row_counts(name):
    task = BUILTIN_TASKS[name]
    train, dev = (read_split(task, split, str(SHARED_DATA)) for split in ("train", "dev"))
    assert (len(train), len(dev)) == OFFICIAL_ROWS[name]
    assert all(train.text_a) and all(dev.text_a)
    if task.type == "classification":
        assert set(train.label) == set(range(task.num_labels))
    if task.type == "regression":
        assert min(train.label) >= 0.0 and max(train.label) <= 5.0
    if task.type == "multiple_choice":
        assert {len(c) for c in train.choices} == {5} and set(train.label) == set(range(5))
    if name == "mrpc":  # the BOM must not end up in the header
        assert train.label.count(1) == 2474


def test_hub_rows_are_normalised():
    glue = datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1]})
    rte = normalise_hub_rows(BUILTIN_TASKS["rte"], glue)
    assert rte.text_a == ["a", "b"] and rte.text_b == ["c", "d"] and rte.label == [0, 1]
    csqa = datasets.Dataset.from_list([{
        "id": "x", "question": "where?", "question_concept": "c",
        "choices": {"label": list("ABCDE"), "text": ["p", "q", "r", "s", "t"]}, "answerKey": "C",
    }])
    mc = normalise_hub_rows(BUILTIN_TASKS["commonsense_qa"], csqa)
    assert mc.choices == [["p", "q", "r", "s", "t"]] and mc.label == [2]
    with pytest.raises(UserError, match="outside"):
        normalise_hub_rows(BUILTIN_TASKS["rte"], glue.map(lambda r: {"label": -1}))


def write_tasks_file(tmp_path, body: str):
    path = tmp_path / "tasks.yaml"
    path.write_text(body)
    return path


def test_tasks_file_declares_every_task_type(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sent.csv").write_text('text,label\n"good, really",pos\nbad,neg\n')
    (tmp_path / "data" / "sim.tsv").write_text("a\tb\tscore\nx\ty\t0.5\n")
    (tmp_path / "data" / "qa.jsonl").write_text('{"q": "which?", "opts": ["a", "b"], "answer": 1}\n')
    path = write_tasks_file(tmp_path, """
tasks:
  - {name: sent, type: classification, text_columns: [text], label_column: label, labels: [neg, pos],
     train_file: data/sent.csv, dev_file: data/sent.csv}
  - {name: sim, type: regression, text_columns: [a, b], label_column: score,
     train_file: data/sim.tsv, dev_file: data/sim.tsv}
  - {name: qa, type: multiple_choice, text_columns: [q], choice_columns: [opts.0, opts.1], label_column: answer,
     train_file: data/qa.jsonl, dev_file: data/qa.jsonl}
""")
    tasks = {t.name: t for t in resolve_tasks(("sent", "sim", "qa"), str(path))}
    sent = read_split(tasks["sent"], "train", None)
    assert sent.text_a == ["good, really", "bad"] and sent.label == [1, 0]
    assert read_split(tasks["sim"], "dev", None).label == [0.5]
    qa = read_split(tasks["qa"], "train", None)
    assert qa.choices == [["a", "b"]] and qa.label == [1]


def test_tasks_file_with_a_missing_field(tmp_path):
    path = write_tasks_file(tmp_path, "tasks:\n  - {name: t, type: regression, text_columns: [a]}\n")
    with pytest.raises(UserError, match="missing the field.*label_column.*train_file.*dev_file"):
        load_tasks_file(str(path))


def test_unknown_task_lists_the_available_ones():
    with pytest.raises(UserError, match=r"unknown task\(s\) nope.*available: .*rte"):
        resolve_tasks(("rte", "nope"), None)


BAD_ROWS = [
    ("sentence\tlabel\ngood\t1\ntoo\tmany\tcolumns\n", "sst2", r":3: expected 2 columns \(sentence, label\), found 3"),
    ("sentence\tlabel\ngood\t1\nfine\t7\n", "sst2", r":3: label '7' of task 'sst2' is not in its label list \(0, 1\)"),
    ("sentence\tlabel\n", "sst2", "has no rows"),
    ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
     "0\tg\tf\ty\t0\ts\ts\ta\tb\tfive\n", "stsb",
     r":2: regression target 'five' of task 'stsb' is not a finite number"),
]


@pytest.mark.parametrize(("content", "task", "message"), BAD_ROWS)
def test_bad_rows_name_the_file_and_line(tmp_path, content, task, message):
    path = tmp_path / "train.tsv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_local_split(BUILTIN_TASKS[task], str(path))


def test_missing_data_file(tmp_path):
    with pytest.raises(UserError, match=r"data file .*rte/train.tsv not found"):
        read_split(BUILTIN_TASKS["rte"], "train", str(tmp_path))


DECLARATION_ERRORS = [
    ("{name: t, type: classification, text_columns: [a], label_column: y, labels: [p, q], main_metric: acuracy,"
     " train_file: t.csv, dev_file: d.csv}", r"main_metric 'acuracy' is not a metric of this classification task; "
     r"choose one of accuracy, mcc, f1"),
    ("{name: t, type: classification, text_columns: [a], label_column: y, labels: [p, q, r], main_metric: f1,"
     " train_file: t.csv, dev_file: d.csv}", r"choose one of accuracy, mcc, macro_f1"),
    ("{name: t, type: clasification, train_file: t.csv, dev_file: d.csv}",
     r"type 'clasification' is not allowed; choose one of classification, regression"),
    ("{name: t, type: regression, text_columns: [a], label_column: y, choice_columns: [b, c],"
     " train_file: t.csv, dev_file: d.csv}", r"choice_columns are not allowed for a regression task \(choice_columns "
     r"belong\(s\) to another kind\)"),
    ("{name: t, type: classification, text_columns: [a], label_column: y, labels: [p, p],"
     " train_file: t.csv, dev_file: d.csv}", r"'labels' lists a value twice"),
    ("{name: t, type: regression, text_columns: [a], label_column: y, header: ture,"
     " train_file: t.csv, dev_file: d.csv}", r"header='ture' is not a boolean"),
    ("{name: t, type: regression, text_columns: [a], label_column: y, main_metric: mse,"
     " train_file: t.csv, dev_file: d.csv}", r"main_metric 'mse' is lower-is-better; model selection needs a "
     r"higher-is-better one: pearson, spearman"),
    ("{name: t, type: masked_lm, main_metric: perplexity, train_file: t.txt, dev_file: d.txt}",
     r"'perplexity' is lower-is-better"),
]


def test_review_cases_column_numbers_pos_tags_and_choices(tmp_path):
    (tmp_path / "a.csv").write_text("0,1\nhello,1.5\n")
    (tmp_path / "q.jsonl").write_text('{"q": "?", "c": ["x", "y"], "a": "C"}\n{"q": "?", "c": ["x", "y", "z"], '
                                      '"a": "A"}\n')
    tasks = load_tasks_file(str(write_tasks_file(tmp_path, """
tasks:
  - {name: num, type: regression, text_columns: [0], label_column: 1, train_file: a.csv, dev_file: a.csv}
  - {name: pos, type: token_classification, labels: [NOUN, VERB], train_file: a.conll, dev_file: a.conll}
  - {name: qa, type: multiple_choice, text_columns: [q], choices_column: c, label_column: a, labels: [A, B, C],
     train_file: q.jsonl, dev_file: q.jsonl}
""")))
    assert read_split(tasks["num"], "train", None).label == [1.5]  # column names that YAML reads as numbers
    assert tasks["pos"].metric == "accuracy"  # no B-/I- tags: no entity spans to score
    with pytest.raises(UserError, match=r"q.jsonl:1: answer 'C' of task 'qa' points past the row's 2 choices"):
        read_split(tasks["qa"], "train", None)
    (tmp_path / "q.jsonl").write_text('{"q": "?", "c": ["x", "y"], "a": "A"}\n{"q": "?", "c": ["x", "y", "z"], '
                                      '"a": "A"}\n')
    with pytest.raises(UserError, match=r"rows have 2 or 3 choices; every row of a multiple_choice task"):
        read_split(tasks["qa"], "train", None)


@pytest.mark.parametrize(("entry", "message"), DECLARATION_ERRORS)
def test_declaration_errors_name_the_field_and_what_is_allowed(tmp_path, entry, message):
    path = write_tasks_file(tmp_path, f"tasks:\n  - {entry}\n")
    with pytest.raises(UserError, match=message):
        load_tasks_file(str(path))


def test_tasks_command_lists_builtin_tasks_and_every_kinds_fields(cli):
    from trainer.tasks.kinds import KINDS

    result = cli("tasks")
    assert result.returncode == 0, result.stderr
    assert "\n  source " in result.stdout and "datasets.load_dataset" in result.stdout
    for name in BUILTIN_TASKS:
        assert f"\n  {name} " in result.stdout
    for kind in KINDS.values():
        assert f"type: {kind.name} - " in result.stdout
        for field in kind.fields:
            assert f"  {field.name} " in result.stdout
