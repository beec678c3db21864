"""The command line as a user meets it: settings precedence and one-line errors for bad input."""

import re

import pytest

from .tiny import ROOT, cli_environ


def test_settings_precedence_default_dotenv_env_flag(tmp_path, cli):
    (tmp_path / ".env").write_text("BATCH_SIZE=7\nSEED=3\nSAMPLING=uniform\nLEARNING_RATE=0.01\n")
    result = cli("settings", "--sampling=round_robin", env={"SEED": "11", "SAMPLING": "temperature"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert rows["BATCH_SIZE"].split()[1:] == ["7", "[.env]"]
    assert rows["SEED"].split()[1:] == ["11", "[env]"]  # .env never overrides the environment
    assert rows["SAMPLING"].split()[1:] == ["round_robin", "[flag]"]
    assert rows["NUM_EPOCHS"].split()[1:] == ["3.0", "[default]"]
    assert set(rows) >= {"MODEL_NAME", "TASKS", "DATA_DIR", "TASKS_FILE", "OUTPUT_DIR", "MAX_STEPS", "EVAL_STEPS",
                         "SAVE_STEPS", "SAVE_TOTAL_LIMIT", "RESUME", "MAX_TRAIN_SAMPLES", "MAX_EVAL_SAMPLES",
                         "LOG_DIR", "TASK_WEIGHTS", "SAMPLING_TEMPERATURE", "SAMPLING_CAP",
                         "MAX_SEQ_LENGTH"}


def _tasks_file(tmp_path, rows: str, extra: str = "") -> str:
    (tmp_path / "train.tsv").write_text(rows)
    (tmp_path / "dev.tsv").write_text("text\tlabel\nfine\tyes\n")
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - {name: mine, type: classification, text_columns: [text], label_column: label, "
        f"labels: [yes, no], train_file: train.tsv, dev_file: dev.tsv{extra}}}\n"
    )
    return str(tmp_path / "tasks.yaml")


BAD_INPUT = {
    "unknown task": ({"TASKS": "rte,nope"}, r"unknown task\(s\) nope in TASKS; available: "),
    "missing data file": ({"TASKS": "rte", "DATA_DIR": "{tmp}/nodata"}, r"data file .*/rte/train.tsv not found"),
    "wrong column count": ({"TASKS": "mine", "TASKS_FILE": "tasks:text\tlabel\na\tyes\nb\tno\textra\n"},
                           r"train.tsv:3: expected 2 columns \(text, label\), found 3"),
    "label outside the list": ({"TASKS": "mine", "TASKS_FILE": "tasks:text\tlabel\na\tmaybe\n"},
                               r"label 'maybe' of task 'mine' is not in its label list \(yes, no\)"),
    "empty split": ({"TASKS": "mine", "TASKS_FILE": "tasks:text\tlabel\n"}, r"has no rows"),
    "non-numeric regression target": (
        {"TASKS": "stsb", "DATA_DIR": "{tmp}/glue"}, r"regression target 'high' of task 'stsb' is not a finite number"),
    "unknown SAMPLING": ({"SAMPLING": "random"}, r"SAMPLING='random' is not allowed; choose one of: proportional"),
    "non-positive BATCH_SIZE": ({"BATCH_SIZE": "0"}, r"BATCH_SIZE=0 must be a positive integer"),
    "malformed TASK_WEIGHTS": ({"TASK_WEIGHTS": "demo_sentiment:2"},
                               r"TASK_WEIGHTS entry 'demo_sentiment:2' is malformed"),
    "unloadable MODEL_NAME": ({"MODEL_NAME": "no-such-org/no-such-model"},
                              r"MODEL_NAME='no-such-org/no-such-model' can't be loaded"),
    "TASKS_FILE missing a field": ({"TASKS": "mine", "TASKS_FILE": "missing"},
                                   r"is missing the field\(s\) label_column; required: "),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_gets_one_line_and_writes_nothing(tmp_path, forked_cli, case):
    env, message = BAD_INPUT[case]
    env = {k: v.replace("{tmp}", str(tmp_path)) for k, v in env.items()}
    if env.get("TASKS_FILE", "").startswith("tasks:"):
        env["TASKS_FILE"] = _tasks_file(tmp_path, env["TASKS_FILE"].removeprefix("tasks:"))
    elif env.get("TASKS_FILE") == "missing":
        path = tmp_path / "tasks.yaml"
        path.write_text("tasks:\n  - {name: mine, type: regression, text_columns: [a], "
                        "train_file: t.tsv, dev_file: d.tsv}\n")
        env["TASKS_FILE"] = str(path)
    if case == "non-numeric regression target":
        stsb = tmp_path / "glue" / "stsb"
        stsb.mkdir(parents=True)
        header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        (stsb / "train.tsv").write_text(header + "0\tg\tf\ty\t0\ts\ts\ta\tb\thigh\n")
        (stsb / "dev.tsv").write_text(header + "0\tg\tf\ty\t0\ts\ts\ta\tb\t1.0\n")
    output = tmp_path / "out"
    result = forked_cli.run("train", env=cli_environ({**env, "OUTPUT_DIR": str(output), "MAX_STEPS": "2"}), cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in result.stderr
    assert not output.exists(), "bad input must not leave checkpoints or exports behind"


def test_unknown_flag_lists_the_allowed_ones(cli):
    result = cli("settings", "--batchsize=3")
    assert result.returncode == 2
    assert "unknown flag(s) --batchsize; allowed: --model_name" in result.stderr
