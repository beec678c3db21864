"""The first hour on your own data, through the real CLI: encodings, TASKS_FILE alone, --help, one final
evaluation, --model_dir, predict from stdin, label names, `check` and `settings`."""

import json
import re

import pytest

from .tiny import ROOT, cli_environ, quick_env, run_cli


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


# ---- 1. files that are not UTF-8 --------------------------------------------------------------------

LATIN1 = {  # one reader each; the last line holds 'é' as the single Latin-1 byte 0xe9
    "csv": ("text,label\ngood,pos\nbad,neg\ncaf\xe9 ok,pos\n", "type: classification, text_columns: [text], "
            "label_column: label, labels: [neg, pos]"),
    "tsv": ("text\tlabel\ngood\tpos\nbad\tneg\ncaf\xe9 ok\tpos\n", "type: classification, text_columns: [text], "
            "label_column: label, labels: [neg, pos]"),
    "jsonl": ('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n'
              '{"text": "caf\xe9", "label": "pos"}\n', "type: classification, text_columns: [text], "
              "label_column: label, labels: [neg, pos]"),
    "txt": ("one line\nanother line\ncaf\xe9 line\n", "type: masked_lm"),
    "conll": ("good\tO\n\nbad\tO\ncaf\xe9\tB-X\n", "type: token_classification, labels: [O, B-X]"),
}


@pytest.mark.parametrize("fmt", sorted(LATIN1))
def test_a_latin1_file_gets_one_line_naming_file_line_and_the_fix(tmp_path, fmt, cli):
    content, fields = LATIN1[fmt]
    (tmp_path / f"data.{fmt}").write_bytes(content.encode("latin-1"))
    entry = f"{{name: mine, {fields}, train_file: data.{fmt}, dev_file: data.{fmt}}}"
    (tmp_path / "tasks.yaml").write_text(f"tasks:\n  - {entry}\n")
    expected = rf"data\.{fmt}:{content.count(chr(10))}: not valid utf-8 .*set 'encoding:' on task 'mine' " \
        r"\(e\.g\. latin-1\)"
    if fmt != "tsv":  # every reader in-process; the CLI once (below), as a user meets it
        from trainer.data.read import read_split
        from trainer.errors import UserError
        from trainer.tasks.declare import load_tasks_file

        with pytest.raises(UserError, match=expected):
            read_split(load_tasks_file(str(tmp_path / "tasks.yaml"))["mine"], "train", None)
        (tmp_path / "tasks.yaml").write_text(f"tasks:\n  - {entry[:-1]}, encoding: latin-1}}\n")
        assert len(read_split(load_tasks_file(str(tmp_path / "tasks.yaml"))["mine"], "train", None)) >= 2
        return
    env = {"TASKS_FILE": str(tmp_path / "tasks.yaml"), "OUTPUT_DIR": str(tmp_path / "out"), "MAX_STEPS": "1"}
    line = one_error_line(cli("train", env=env))
    assert re.search(expected, line), line
    (tmp_path / "tasks.yaml").write_text(f"tasks:\n  - {entry[:-1]}, encoding: latin-1}}\n")
    result = cli("check", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok: every task reads and validates" in result.stdout
    assert not (tmp_path / "out").exists()


# ---- 2. TASKS_FILE without TASKS ---------------------------------------------------------------------

def test_tasks_file_without_tasks_trains_every_declared_task_and_says_so(tmp_path, cli):
    (tmp_path / "a.csv").write_text("text,label\n" + "good,pos\nbad,neg\n" * 8)
    (tmp_path / "b.txt").write_text("some text to model\nmore text here\n" * 8)
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - {name: mine, type: classification, text_columns: [text], label_column: label,"
        " labels: [neg, pos], train_file: a.csv, dev_file: a.csv}\n"
        "  - {name: text, type: masked_lm, train_file: b.txt, dev_file: b.txt}\n")
    out = tmp_path / "out"
    result = cli("train", env=quick_env(out, TASKS_FILE=str(tmp_path / "tasks.yaml"), MAX_STEPS="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    log_lines = [line for line in result.stderr.splitlines() if " INFO " in line]
    assert "training every task declared in TASKS_FILE" in log_lines[0] and "mine (classification)" in log_lines[0]
    assert set(json.loads((out / "metrics.json").read_text())["tasks"]) == {"mine", "text"}
    settings = cli("settings", env={"TASKS_FILE": str(tmp_path / "tasks.yaml")})
    assert "every task of TASKS_FILE (auto)" in settings.stdout and "text (masked_lm)" in settings.stdout


def test_settings_validates_the_tasks_file_and_tasks(tmp_path, cli):
    (tmp_path / "tasks.yaml").write_text("tasks:\n  - {name: t, type: regression, text_columns: [a],"
                                         " label_column: y, main_metric: pearsn, train_file: a.csv, dev_file: a.csv}\n")
    line = one_error_line(cli("settings", env={"TASKS_FILE": str(tmp_path / "tasks.yaml")}))
    assert "main_metric 'pearsn' is not a metric of this regression task" in line
    line = one_error_line(cli("settings", env={"TASKS": "rte,nope"}))
    assert "unknown task(s) nope in TASKS" in line


# ---- 3. --help ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "export", "predict", "check", "settings", "launch", "job-spec"])
def test_help_on_every_command_lists_its_flags(command, cli):
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: python -m trainer {command}" in result.stdout
    if command not in ("job-spec",):
        assert re.search(r"--batch_size\s+BATCH_SIZE\s+default 32", result.stdout), result.stdout[:2000]
        assert "Examples per training batch per device" in result.stdout
    if command == "predict":
        assert "--model_dir" in result.stdout and "- for stdin" in result.stdout


# ---- 4-7. one trained run: evaluation once, --model_dir, predict from stdin, label names ----------------

@pytest.fixture(scope="module")
def named_run(tmp_path_factory, forked_cli):
    """The demo tasks plus a pair task whose file holds integer labels with `label_names`."""
    root = tmp_path_factory.mktemp("named")
    rows = "".join("the cat sat\tthe cat sat\t1\nthe dog ran\tthe bird flew\t0\n" for _ in range(40))
    (root / "pairs.tsv").write_text("a\tb\tlabel\n" + rows)
    (root / "tasks.yaml").write_text(
        "tasks:\n  - {name: same, type: classification, text_columns: [a, b], label_column: label,"
        " label_names: [different, same], train_file: pairs.tsv, dev_file: pairs.tsv}\n")
    out = root / "out"
    env = quick_env(out, TASKS_FILE=str(root / "tasks.yaml"), TASKS="demo_sentiment,same", MAX_STEPS="8",
                    EVAL_STEPS="4", SAVE_STEPS="4")
    result = forked_cli.run("train", env=cli_environ(env), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, env, result


def test_dev_sets_are_evaluated_once_at_the_end(named_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, result = named_run
    files = list((out / "logs").rglob("events.out.tfevents.*"))
    assert len(files) == 1, files  # no second event file repeating the final points
    events = EventAccumulator(str(files[0])).Reload()
    assert [e.step for e in events.Scalars("eval/average")] == [4, 8]
    assert "\x1b[A" not in result.stderr  # no nested-bar escapes in a log file


def test_label_names_reach_the_export_and_predict(named_run, cli):
    out, env, _ = named_run
    config = json.loads((out / "export" / "same" / "config.json").read_text())
    assert config["id2label"] == {"0": "different", "1": "same"}
    result = cli("predict", "--task=same", "--text=the cat sat", "--text_pair=the cat sat", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    output = json.loads(result.stdout)
    assert set(output["scores"]) == {"different", "same"} and output["label"] in output["scores"]
    assert output["input"] == {"text": "the cat sat", "text_pair": "the cat sat"}


def test_evaluate_takes_the_current_tasks_files_test_file_and_prints_every_metric(named_run, forked_cli, tmp_path):
    """Trained without a test_file; one added to TASKS_FILE afterwards is scored without retraining."""
    from .tiny import cli_environ

    out, env, _ = named_run
    (tmp_path / "test.tsv").write_text("a\tb\tlabel\n" + "the cat sat\tthe cat sat\t1\nthe dog ran\tthe bird\t0\n" * 3)
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - {name: same, type: classification, text_columns: [a, b], label_column: label,"
        " label_names: [different, same], train_file: pairs.tsv, dev_file: pairs.tsv, test_file: test.tsv}\n")
    env = {**env, "TASKS_FILE": str(tmp_path / "tasks.yaml"), "OUTPUT_DIR": str(tmp_path / "scores")}
    result = forked_cli.run("evaluate", "--tasks=same", f"--model_dir={out}", env=cli_environ(env), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"note: evaluate: task same's test split is TASKS_FILE {tmp_path / 'tasks.yaml'}'s: " \
        f"{tmp_path / 'test.tsv'} (the export recorded none)" in result.stderr
    report = json.loads((tmp_path / "scores" / "metrics_test.json").read_text())
    assert report["examples"] == {"same": 6}
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["same", "accuracy", f"{report['tasks']['same']['accuracy']:.4f}", "6", "(main)"] in rows, result.stdout
    assert {row[1] for row in rows if row[0] == "same"} == {"accuracy", "mcc", "f1", "loss"}, result.stdout


def test_a_pair_task_without_text_pair_is_refused(named_run, cli):
    _, env, _ = named_run
    line = one_error_line(cli("predict", "--task=same", "--text=the cat sat", env=env))
    assert "task 'same' takes sentence pairs: give --text_pair" in line


@pytest.mark.slow
def test_model_dir_takes_an_output_dir_a_checkpoint_or_an_export(named_run, tmp_path, cli):
    out, env, _ = named_run
    base = {k: v for k, v in env.items() if k != "OUTPUT_DIR"}
    results = {}
    for where in (out, out / "model", out / "checkpoint-4", out / "export" / "demo_sentiment", out / "export"):
        result = cli("predict", "--task=demo_sentiment", "--text=what a wonderful film", f"--model_dir={where}",
                     env={**base, "OUTPUT_DIR": str(tmp_path / "elsewhere")})
        assert result.returncode == 0, (where, result.stderr[-2000:])
        results[where.name] = json.loads(result.stdout)["label"]
    assert results[out.name] == results["model"] == results["demo_sentiment"]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    line = one_error_line(cli("predict", "--task=demo_sentiment", "--text=x", f"--model_dir={tmp_path / 'junk'}",
                              env=base))
    assert "junk holds notes.txt" in line and "--model_dir takes an OUTPUT_DIR" in line


def test_predict_reads_stdin_text_lines_and_json_lines(named_run, cli):
    out, env, _ = named_run
    texts = [f"what a wonderful film number {i}" if i % 2 else f"the plot was dull {i}" for i in range(300)]
    result = cli("predict", "--task=demo_sentiment", "--text=-", stdin="\n".join(texts) + "\n", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"]["text"] for line in lines] == texts
    assert {line["label"] for line in lines} <= {"positive", "negative"}
    assert set(lines[0]["scores"]) == {"negative", "positive"}
    pairs = json.dumps({"text": "the cat sat", "text_pair": "the cat sat"}) + "\n"
    result = cli("predict", "--task=same", "--text=-", stdin=pairs, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["input"]["text_pair"] == "the cat sat"
    result = cli("predict", "--task=same", "--text=-", stdin=pairs + "{not json\n", env=env)
    assert result.returncode == 2 and result.stderr.strip() == "error: stdin line 2: not valid JSON (Expecting " \
        "property name enclosed in double quotes)", result.stderr


# ---- check ------------------------------------------------------------------------------------------------

def test_check_reports_counts_labels_lengths_and_writes_nothing(tmp_path):
    cache = tmp_path / "hf-cache"
    result = run_cli("check", "--tasks=demo_sentiment,demo_category", "--max_seq_length=8",
                     env={"OUTPUT_DIR": str(tmp_path / "out"), "HF_DATASETS_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"demo_sentiment \(classification, main metric accuracy\):\n  train\s+4000 rows; tokens p50 \d+",
                     result.stdout), result.stdout
    assert re.search(r"truncated at 8: \d+\.\d%", result.stdout)
    assert re.search(r"labels: negative: \d+, positive: \d+", result.stdout)
    assert not (tmp_path / "out").exists() and not cache.exists()
