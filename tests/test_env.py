"""One parser for environment values and .env files: every command and the Makefile use trainer/env.py."""

import subprocess

import pytest

from trainer.config.env import parse_bool, parse_float, parse_int, read_dotenv
from trainer.errors import UserError

from .tiny import ROOT, cli_environ, run_cli


def test_dotenv_values_are_literal(tmp_path):
    path = tmp_path / ".env"
    path.write_text("# comment\nexport A=1\nB = \"two words # kept\" # dropped\nC='$(shell echo hi) literal'\n"
                    "PASSWORD=pa$$w0rd#1 # comment\nE=\"a\\\"b\\n\"\n\n")
    assert read_dotenv(path) == {"A": "1", "B": "two words # kept", "C": "$(shell echo hi) literal",
                                 "PASSWORD": "pa$$w0rd#1", "E": 'a"b\n'}
    path.write_text("EMPTY= # only a comment\n")
    assert read_dotenv(path) == {"EMPTY": ""}


@pytest.mark.parametrize(("line", "message"), [
    ("NOT A SETTING", r"\.env:1: expected NAME=value"),
    ("A='open", r"\.env:1: the value's ' is not closed"),
    ("1A=x", r"expected NAME=value"),
])
def test_bad_dotenv_lines_name_the_line(tmp_path, line, message):
    (tmp_path / ".env").write_text(line + "\n")
    with pytest.raises(UserError, match=message):
        read_dotenv(tmp_path / ".env")
    result = run_cli("settings", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "error: " in result.stderr


def test_make_never_runs_what_a_dotenv_value_says(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / ".env").write_text(f"EVIL=$(shell touch {marker})\nPROJECT_ID=pa$word\nX=`touch {marker}`'\"\n")
    (tmp_path / "show.mk").write_text("include $(MAKEFILE)\nshow:\n\t@echo '[$(EVIL)]'; $(DOTENV) get PROJECT_ID; "
                                      "x=$$($(DOTENV) get X); echo \"$$x\"\n")
    for target in ("help", "show"):
        result = subprocess.run(["make", "-s", "-f", str(tmp_path / "show.mk"), f"MAKEFILE={ROOT / 'Makefile'}",
                                 target], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert not marker.exists(), f"make {target} ran a command from .env"
    # make holds no .env value (no copy of .env is written); a recipe gets one, literally, as one word
    assert result.stdout.splitlines() == ["[]", "pa$word", f"`touch {marker}`'\""]
    assert not (tmp_path / ".make").exists()


@pytest.mark.parametrize(("parse", "raw", "message"), [
    (parse_bool, "ture", r"X='ture' is not a boolean; use true or false"),
    (parse_int, "3.5", r"X='3.5' is not an integer"),
    (parse_float, "inf", r"X='inf' must be a finite number"),
    (parse_float, "nan", r"X='nan' must be a finite number"),
])
def test_invalid_values_are_errors_naming_the_variable(parse, raw, message):
    with pytest.raises(UserError, match=message):
        parse("X", raw)


@pytest.mark.parametrize(("env", "message"), [
    ({"GROUP_BY_LENGTH": "ture"}, r"GROUP_BY_LENGTH='ture' is not a boolean"),
    ({"LEARNING_RATE": "inf"}, r"LEARNING_RATE='inf' must be a finite number"),
    ({"WEIGHT_DECAY": "nan"}, r"WEIGHT_DECAY='nan' must be a finite number"),
    ({"TASK_WEIGHTS": "demo_sentiment=inf"}, r"weight for 'demo_sentiment'='inf' must be a finite number"),
    ({"MAX_STEPS": "ten"}, r"MAX_STEPS='ten' is not an integer"),
])
def test_train_and_settings_refuse_invalid_values(tmp_path, forked_cli, env, message):
    import re

    for command in ("settings", "train") if "MAX_STEPS" in env else ("settings",):  # train parses as settings does
        result = forked_cli.run(command, env=cli_environ({**env, "OUTPUT_DIR": str(tmp_path / "out")}), cwd=ROOT)
        assert result.returncode == 2, result.stderr
        assert re.search(message, result.stderr.strip()), result.stderr
        assert not (tmp_path / "out").exists()


def test_job_spec_and_launcher_refuse_invalid_numbers_and_booleans(tmp_path):
    env = {"PROJECT_ID": "p-123456", "BUCKET_NAME": "b-test", "REGION": "us-central1", "SPOT": "maybe"}
    result = run_cli("job-spec", env=env, cwd=tmp_path)
    assert result.returncode == 2 and "SPOT='maybe' is not a boolean" in result.stderr, result.stderr
    result = run_cli("job-spec", env={**env, "SPOT": "true", "REPLICA_COUNT": "two"}, cwd=tmp_path)
    assert result.returncode == 2 and "REPLICA_COUNT='two' is not an integer" in result.stderr, result.stderr


def test_a_misspelt_dotenv_name_is_named_with_the_nearest_setting(tmp_path, forked_cli):
    """BACH_SIZE in .env would be ignored without a word: every command warns once, naming BATCH_SIZE; a name
    close to none of ours (another tool's) passes silently."""
    (tmp_path / ".env").write_text("BACH_SIZE=8\nMAX_STEP=3\nMY_TOOLS_HOME=/opt\nHF_TOKEN=x\nPROJECT_ID=p-123456\n")
    (tmp_path / "recipe.env").write_text("REGON=us-central1\nDOCKER_SHM_SIZE=8g\n")
    for command in ("settings", "tasks"):
        result = forked_cli.run(command, env=cli_environ({}), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stderr.splitlines() == [
            "warning: .env:1: BACH_SIZE is not a setting; did you mean BATCH_SIZE? (it is ignored)",
            "warning: .env:2: MAX_STEP is not a setting; did you mean MAX_STEPS? (it is ignored)"]
    result = forked_cli.run("settings", env=cli_environ({"ENV_FILE": "recipe.env"}), cwd=tmp_path)
    assert result.stderr.splitlines() == [
        "warning: recipe.env:1: REGON is not a setting; did you mean REGION? (it is ignored)",
        "warning: recipe.env:2: DOCKER_SHM_SIZE is make's own variable: give it on make's command line or in the "
        "environment (make DOCKER_SHM_SIZE=...); .env does not set it"], result.stderr
