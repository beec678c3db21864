"""The first hour's data shapes, through the real CLI (`forked_cli`): parallel text and label files, a label
taken from a line (TREC), one file split into train/dev/test, non-0-based labels with names, `check` reading
the test split, `evaluate` taking the current TASKS_FILE's test file, and a one-task run's card and cadence."""

import json
import re
from pathlib import Path

import pytest

from .tiny import cli_environ, quick_env

POSITIVE = ["a great film", "wonderful acting", "I loved it", "superb and moving", "a joy to watch"]
NEGATIVE = ["a dull film", "terrible acting", "I hated it", "boring and slow", "a chore to watch"]


def rows(n: int) -> list[tuple[str, str]]:
    """(text, label) pairs, about a third positive, each text different."""
    return [(f"{POSITIVE[i % 5]} {i}", "pos") if i % 3 == 0 else (f"{NEGATIVE[i % 5]} {i}", "neg") for i in range(n)]


def write_parallel(root: Path, name: str, pairs: list[tuple[str, str]], labels: int | None = None) -> None:
    (root / f"{name}_text.txt").write_text("".join(f"{t}\n" for t, _ in pairs))
    (root / f"{name}_labels.txt").write_text("".join(f"{y}\n" for _, y in pairs[:labels]))


def tasks_file(root: Path, *entries: str) -> Path:
    path = root / "tasks.yaml"
    path.write_text("tasks:\n" + "".join(f"  - {{{e}}}\n" for e in entries))
    return path


def cli(forked_cli, root: Path, *args: str, **env: str):
    environ = {"OUTPUT_DIR": str(root / "out"), "TASKS_FILE": str(root / "tasks.yaml"), **env}
    return forked_cli.run(*args, env=cli_environ(environ), cwd=root)


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


PARALLEL = ("name: tw, type: classification, labels: [neg, pos], train_file: train_text.txt, "
            "train_labels_file: train_labels.txt, dev_file: dev_text.txt, dev_labels_file: dev_labels.txt")


# ---- 1. parallel text and label files -------------------------------------------------------------------------

def test_parallel_text_and_labels_files_are_read_line_by_line(forked_cli, tmp_path):
    write_parallel(tmp_path, "train", rows(30))
    write_parallel(tmp_path, "dev", rows(9))
    tasks_file(tmp_path, PARALLEL)
    result = cli(forked_cli, tmp_path, "check")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"train +30 rows;.*\n +labels: neg: 20, pos: 10", result.stdout), result.stdout
    assert re.search(r"dev +9 rows;.*\n +labels: neg: 6, pos: 3", result.stdout), result.stdout


# ---- 2. a label taken from the line: TREC ---------------------------------------------------------------------

TREC = r"name: trec, type: classification, labels: [DESC, NUM], train_file: train.label, dev_file: dev.label, " \
    r"label_from: {regex: '(?P<label>\w+):\S+ (?P<text>.*)'}"


def test_trec_lines_are_cut_by_the_label_from_regex(forked_cli, tmp_path):
    trec = "DESC:manner How did serfdom develop in and then leave Russia ?\nNUM:date When was Ozzy born ?\n\n"
    (tmp_path / "train.label").write_bytes((trec * 5).encode("latin-1"))
    (tmp_path / "dev.label").write_text("NUM:count How many people live in Chile ?\n" + trec)
    tasks_file(tmp_path, TREC)
    result = cli(forked_cli, tmp_path, "check")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"train +10 rows;.*\n +labels: DESC: 5, NUM: 5", result.stdout), result.stdout
    assert re.search(r"dev +3 rows;.*\n +labels: DESC: 1, NUM: 2", result.stdout), result.stdout


# ---- 3. one file split into train, dev and test ---------------------------------------------------------------

SPLIT = ("name: one, type: classification, labels: [neg, pos], train_file: all.csv, text_columns: [text], "
         "label_column: label, split: {dev: 0.2, test: 0.1, seed: 7}")


def test_split_draws_dev_and_test_from_train_file_stratified_and_the_same_every_time(forked_cli, tmp_path):
    (tmp_path / "all.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows(90)))
    tasks_file(tmp_path, SPLIT)
    result = cli(forked_cli, tmp_path, "check")
    assert result.returncode == 0, result.stderr[-2000:]
    # 60 neg / 30 pos: dev 18 rows at 2:1, test 9 at 2:1, train the other 63
    assert re.search(r"train +63 rows;.*\n +labels: neg: 42, pos: 21", result.stdout), result.stdout
    assert re.search(r"dev +18 rows;.*\n +labels: neg: 12, pos: 6", result.stdout), result.stdout
    assert re.search(r"test +9 rows;.*\n +labels: neg: 6, pos: 3", result.stdout), result.stdout

    from trainer.data.read import read_split
    from trainer.tasks.declare import load_tasks_file

    task = load_tasks_file(str(tmp_path / "tasks.yaml"))["one"]
    splits = {s: read_split(task, s, None).text_a for s in ("train", "dev", "test")}
    assert splits == {s: read_split(task, s, None).text_a for s in ("train", "dev", "test")}
    assert sorted(sum(splits.values(), [])) == sorted(t for t, _ in rows(90))  # disjoint, nothing lost


# ---- 4. labels that are not 0-based, with names ---------------------------------------------------------------

def test_label_names_name_the_labels_in_order_whatever_their_values(forked_cli, tmp_path):
    news = [("stocks fell today", "3"), ("the match ended", "2"), ("new chip released", "4"), ("talks in Geneva", "1")]
    (tmp_path / "news.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in news * 3))
    tasks_file(tmp_path, "name: news, type: classification, text_columns: [text], label_column: label, "
               "labels: ['1', '2', '3', '4'], label_names: [World, Sports, Business, Sci/Tech], "
               "train_file: news.csv, dev_file: news.csv")
    result = cli(forked_cli, tmp_path, "check")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "labels: World: 3, Sports: 3, Business: 3, Sci/Tech: 3" in result.stdout


# ---- 5. check reads the test split too ------------------------------------------------------------------------

def test_check_reads_every_declared_split_and_a_missing_test_file_fails(forked_cli, tmp_path):
    write_parallel(tmp_path, "train", rows(12))
    write_parallel(tmp_path, "dev", rows(6))
    tasks_file(tmp_path, PARALLEL + ", test_file: test_text.txt, test_labels_file: test_labels.txt")
    line = one_error_line(cli(forked_cli, tmp_path, "check"))
    assert line == f"error: task 'tw': data file {tmp_path / 'test_text.txt'} not found"
    write_parallel(tmp_path, "test", rows(4))
    result = cli(forked_cli, tmp_path, "check")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"test +4 rows;.*\n +labels: neg: 2, pos: 2", result.stdout), result.stdout


# ---- 8, 9. a one-task run on a local source folder: its card, and the default evaluation cadence ------------

@pytest.fixture(scope="module")
def local_source_run(tmp_path_factory, forked_cli):
    root = tmp_path_factory.mktemp("local_source")
    (root / "ag_news").mkdir()
    for split in ("train", "validation"):
        (root / "ag_news" / f"{split}.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows(24)))
    tasks_file(root, "name: news, type: classification, source: {dataset: ag_news}, text_columns: [text], "
               "label_column: label, labels: [neg, pos]")
    env = quick_env(root / "out", TASKS_FILE=str(root / "tasks.yaml"), MAX_STEPS="20", LOGGING_STEPS="20")
    result = forked_cli.run("train", env=cli_environ(env), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "out"


def test_a_one_task_card_has_no_other_tasks_and_names_a_local_source_by_its_files(local_source_run):
    card = (local_source_run / "export" / "news" / "README.md").read_text()
    assert "together with 0 other tasks" not in card and "on its own (a run of this one task)" in card
    assert "datasets:" not in card and "ag_news\n" not in card.split("---")[1]  # not the Hub's ag_news
    assert "- Dataset: news (local files ag_news/: train.csv, validation.csv)" in card


def test_the_default_cadence_evaluates_about_ten_times_a_run(local_source_run):
    metrics = json.loads((local_source_run / "metrics.json").read_text())
    steps = sorted({int(p.name.split("-")[1]) for p in local_source_run.glob("checkpoint-*")})
    # 24 rows in batches of 8: 3 steps an epoch; 20 steps: every 2 steps (not every 3, once an epoch)
    assert steps == [16, 18, 20], steps  # SAVE_TOTAL_LIMIT=3 keeps the newest
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = [EventAccumulator(str(f)).Reload() for f in (local_source_run / "logs").rglob("events.out.*")]
    assert [e.step for e in events.Scalars("eval/average")] == list(range(2, 21, 2)), metrics


# ---- predict-file on plain questions for a label_from task, and evaluate's progress ---------------------------

TREC_LINES = "DESC:manner How did serfdom develop in Russia ?\nNUM:date When was Ozzy born ?\n"


@pytest.fixture(scope="module")
def trec_run(tmp_path_factory, forked_cli):
    """A 2-step run of a TREC-style task with a test file (labelled lines)."""
    root = tmp_path_factory.mktemp("trec")
    for name in ("train.label", "dev.label", "test.label"):
        (root / name).write_text(TREC_LINES * 4)
    tasks_file(root, TREC + ", test_file: test.label")
    env = quick_env(root / "out", TASKS_FILE=str(root / "tasks.yaml"), MAX_STEPS="2", EVAL_STEPS="2",
                    SAVE_STEPS="2", LOGGING_STEPS="2")
    result = forked_cli.run("train", env=cli_environ(env), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_predict_file_takes_plain_lines_for_a_label_from_task_and_evaluate_still_cuts_them(forked_cli, trec_run):
    (trec_run / "plain.txt").write_text("How far is Mars ?\nWhat is a serf ?\n")
    result = cli(forked_cli, trec_run, "predict-file", "--task=trec", "--input=plain.txt", "--output=plain.tsv")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (trec_run / "plain.tsv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("0\t") and lines[2].startswith("1\t"), lines
    assert all(line.split("\t")[1] in ("DESC", "NUM") for line in lines[1:]), lines
    # labelled lines are still cut by the regex: evaluate scores 8 rows of the test file
    result = cli(forked_cli, trec_run, "evaluate")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((trec_run / "out" / "metrics_test.json").read_text())["examples"] == {"trec": 8}
    # and a labelled file with a plain line is refused by its line, pointing to predict-file
    (trec_run / "test.label").write_text("How far is Mars ?\n" + TREC_LINES)
    line = one_error_line(cli(forked_cli, trec_run, "evaluate"))
    assert "test.label:1: the line does not match task 'trec''s label_from regex" in line
    assert line.endswith("lines without labels are predicted with predict-file")
    (trec_run / "test.label").write_text(TREC_LINES * 4)


def run_in_a_terminal(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """`args` with stderr on a pseudo-terminal of 100 columns (tqdm draws nothing on a 0-column one), stdout
    on a pipe: (exit code, stdout, what the terminal showed)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    shown = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        shown.append(data)
    os.close(master)
    stdout = process.stdout.read().decode()
    return process.wait(timeout=300), stdout, b"".join(shown).decode(errors="replace")


def test_evaluate_shows_a_bar_per_task_on_a_terminal_and_none_in_a_log(trec_run, tmp_path):
    import subprocess
    import sys

    (trec_run / "test.label").write_text(TREC_LINES * 5)
    env = cli_environ({"OUTPUT_DIR": str(trec_run / "out"), "TASKS_FILE": str(trec_run / "tasks.yaml"),
                       "HF_DATASETS_CACHE": str(tmp_path / "cache")})  # nothing tokenised before: all of it runs
    command = [sys.executable, "-m", "trainer", "evaluate"]
    code, stdout, shown = run_in_a_terminal(command, env, trec_run)
    assert code == 0, shown[-3000:]
    assert "evaluate: reading task trec's test split" in shown, shown[-3000:]
    assert re.search(r"Tokenizing trec.*10/10", shown), shown[-3000:]
    assert re.search(r"eval trec: 100%.*\| 1/1", shown), shown[-3000:]
    assert "trec                 accuracy" in stdout
    (trec_run / "test.label").write_text(TREC_LINES * 6)
    logged = subprocess.run(command, env=env, cwd=trec_run, capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0, logged.stderr[-3000:]
    assert "\x1b[A" not in logged.stderr and "%|" not in logged.stderr, logged.stderr[-3000:]
    assert "trec                 accuracy" in logged.stdout
    (trec_run / "test.label").write_text(TREC_LINES * 4)
