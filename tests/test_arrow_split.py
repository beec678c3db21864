"""Local splits read into Arrow: bad rows named by file and line, long fields, the content cache, flat memory."""

import json
import subprocess
import sys
import textwrap

import datasets
import pyarrow as pa
import pytest

from trainer.data import arrow_split
from trainer.data.file_rows import iter_file_rows
from trainer.errors import UserError
from trainer.tasks.spec import TaskSpec

from .tiny import ROOT


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def sentiment(path, fmt="") -> TaskSpec:
    return TaskSpec(name="sent", type="classification", train_file=str(path), dev_file=str(path), format=fmt,
                    options={"text_columns": ("text",), "label_column": "label", "labels": ("neg", "pos")})


def choice(path) -> TaskSpec:
    return TaskSpec(name="qa", type="multiple_choice", train_file=str(path), dev_file=str(path),
                    options={"text_columns": ("q.stem",), "choice_columns": ("c.0", "c.1"), "label_column": "a"})


def cached_splits(tmp_path):
    return sorted(p.name for p in (tmp_path / "hf-cache").rglob("rows-*"))


BAD = [
    ("t.csv", sentiment, 'text,label\n"a quoted field\nover two lines",pos\n\nfine,neg\nbad, maybe \n',
     r"t.csv:6: label 'maybe' of task 'sent' is not in its label list \(neg, pos\)"),
    ("t.csv", sentiment, 'text,label\n"good, really",pos\ntoo,many,cells\n',
     r"t.csv:3: expected 2 columns \(text, label\), found 3"),
    ("t.tsv", sentiment, "text\tlabel\nok\tpos\n\nhas \"quotes\tneg\nnope\tNEG\n",
     r"t.tsv:5: label 'NEG' of task 'sent' is not in its label list"),
    ("t.jsonl", sentiment, '{"text": "a", "label": "pos"}\n\n{"text": "b", "label": 7}\n',
     r"t.jsonl:3: label '7' of task 'sent' is not in its label list"),
    ("t.jsonl", choice, '{"q": {"stem": "?"}, "c": ["x", "y"], "a": 1}\n'
     '{"q": {"stem": "?"}, "c": ["x", "y"], "a": 2}\n',
     r"t.jsonl:2: label '2' of task 'qa' must be a choice index 0..1"),
    ("t.jsonl", choice, '{"q": {"stem": "?"}, "c": ["x", "y"], "a": 1}\n{"q": {"stem": "?"}, "c": ["x"], "a": 0}\n',
     r"t.jsonl:2: column 'c.1' is missing"),
]


@pytest.mark.parametrize(("name", "make", "content", "message"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_the_first_bad_row_is_named_by_file_and_line_and_nothing_is_cached(tmp_path, name, make, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        arrow_split.read_local_split(make(path), str(path))
    assert cached_splits(tmp_path) == []


def test_a_field_over_the_csv_modules_limit_is_read(tmp_path):
    long = "word " * 40_000  # 200,000 characters; the csv module's default limit is 131,072
    for name, sep in (("long.csv", ","), ("long.tsv", "\t")):
        path = tmp_path / name
        path.write_text(f"text{sep}label\n{long}{sep}pos\nshort{sep}neg\n")
        task = sentiment(path)
        data = arrow_split.read_local_split(task, str(path))
        assert data.text_a == [long, "short"] and data.label == [1, 0]
        # the row reader (predict-file, and the fallback that names bad rows) takes it too
        assert [len(row["text"]) for _, row in iter_file_rows(task, str(path))] == [len(long), 5]


def test_column_wise_normalisation_equals_the_row_by_row_one(tmp_path):
    (tmp_path / "s.csv").write_text('text,label\n"a, b", pos \n"multi\nline",neg\n  spaced  ,pos\n')
    (tmp_path / "r.tsv").write_text('a\tb\tscore\n"x\t y \t1.5\nz\tw\t-2e1\n')
    (tmp_path / "q.jsonl").write_text('{"q": {"stem": "s"}, "c": ["x", "y"], "a": " 1"}\n'
                                      '{"q": {"stem": "t"}, "c": ["u", "v"], "a": "0 "}\n')
    tasks = [
        sentiment(tmp_path / "s.csv"),
        TaskSpec(name="sim", type="regression", train_file="", dev_file="",
                 options={"text_columns": ("a", "b"), "label_column": "score"}),
        choice(tmp_path / "q.jsonl"),
    ]
    for task, name in zip(tasks, ("s.csv", "r.tsv", "q.jsonl"), strict=True):
        path = str(tmp_path / name)
        schema = task.kind.features(task).arrow_schema
        fast = list(arrow_split._arrow_batches(task, path, "train"))
        assert fast and all(b is not None for b in fast), f"{name} did not take the column-wise path"
        row_by_row = pa.concat_tables(list(arrow_split._row_batches(task, path, "train")))
        assert pa.concat_tables([b.cast(schema) for b in fast]).equals(row_by_row), name


def test_what_arrow_cannot_read_the_row_reader_does(tmp_path):
    path = tmp_path / "mixed.jsonl"  # the label's JSON type changes between rows: Arrow's reader refuses it
    path.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": 0}\n{"text": "c", "label": "neg"}\n')
    assert list(arrow_split._arrow_batches(sentiment(path), str(path), "train")) == [None]
    assert arrow_split.read_local_split(sentiment(path), str(path)).label == [1, 0, 0]


def test_the_cache_is_keyed_on_the_files_content(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("text\tlabel\na\tpos\n")
    first = arrow_split.read_local_split(sentiment(path), str(path))
    again = arrow_split.read_local_split(sentiment(path), str(path))
    assert first.label == again.label == [1] and len(cached_splits(tmp_path)) == 1
    assert first.dataset._fingerprint == again.dataset._fingerprint
    path.write_text("text\tlabel\na\tneg\n")  # same size, other content
    changed = arrow_split.read_local_split(sentiment(path), str(path))
    assert changed.label == [0] and changed.dataset._fingerprint != first.dataset._fingerprint


_PEAK = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, {root!r})
    import datasets
    datasets.config.HF_DATASETS_CACHE = sys.argv[2]
    from trainer.tasks.spec import TaskSpec
    from trainer.data.arrow_split import read_local_split
    task = TaskSpec(name="big", type="classification", train_file=sys.argv[1], dev_file=sys.argv[1],
                    options={{"text_columns": ("text",), "label_column": "label", "labels": ("0", "1")}})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = read_local_split(task, sys.argv[1])
    print(len(rows), before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def _peak_growth_kb(tmp_path, rows: int) -> int:
    path = tmp_path / f"big-{rows}.tsv"
    line = "a fairly long sentence of about two hundred and fifty characters, " * 4
    with open(path, "w") as handle:
        handle.write("text\tlabel\n")
        handle.writelines(f"{i} {line}\t{i % 2}\n" for i in range(rows))
    out = subprocess.run([sys.executable, "-c", _PEAK.format(root=str(ROOT)), str(path), str(tmp_path / f"c{rows}")],
                         capture_output=True, text=True, check=True)
    count, before, after = map(int, out.stdout.split())
    assert count == rows
    return after - before


def test_memory_stays_flat_from_10k_to_200k_rows(tmp_path):
    """200k rows of ~280 characters are 56 MB of text: held as Python strings, the peak would grow by more."""
    small, large = _peak_growth_kb(tmp_path, 10_000), _peak_growth_kb(tmp_path, 200_000)
    assert large - small < 24 * 1024, json.dumps({"10k_growth_kb": small, "200k_growth_kb": large})
