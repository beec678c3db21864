"""What stops a run, or says there is nothing to do, with one line: a loss that becomes NaN or inf, a full disk at
save, truncated model weights, a run that already finished. And what every run's files share: a deterministic
demo tokenizer, modes that follow the umask."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.files import current_umask
from trainer.layout import LOCK_FILE

from .tiny import ROOT, quick_env, save_tiny_pretrained


def error_lines(stderr: str) -> list[str]:
    """The `error:` lines; under torchrun one rank's line may follow another rank's progress bar on its line, or
    the blanks with which that bar was cleared."""
    found = (re.search(r"(?:^|[\s\]])(error: .*)", line) for line in stderr.splitlines())
    return [match.group(1) for match in found if match]


def huge_target_task(tmp_path) -> str:
    """A regression task whose targets are 1e30: its squared error overflows float32 to inf at its first step."""
    rows = [f"text number {i}\t1e30\n" for i in range(40)]
    (tmp_path / "train.tsv").write_text("text\tscore\n" + "".join(rows))
    (tmp_path / "dev.tsv").write_text("text\tscore\n" + "".join(rows[:8]))
    path = tmp_path / "tasks.yaml"
    path.write_text("tasks:\n  - {name: huge, type: regression, text_columns: [text], label_column: score, "
                    "train_file: train.tsv, dev_file: dev.tsv}\n")
    return str(path)


def test_a_loss_that_becomes_inf_stops_the_run_with_one_line(tmp_path, cli):
    out = tmp_path / "out"
    # round robin: step 1 is demo_sentiment (finite, checkpoint-1 saved), step 2 is the first `huge` step
    env = quick_env(out, TASKS="demo_sentiment,huge", TASKS_FILE=huge_target_task(tmp_path), SAMPLING="round_robin",
                    SAVE_STEPS="1", EVAL_STEPS="100", LOGGING_STEPS="4", MAX_STEPS="8")
    result = cli("train", env=env)
    assert result.returncode != 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: the training loss of huge became nan or inf at step 2 (stopped at step 2, "), \
        lines[0]
    assert f"the last finite checkpoint is {out / 'checkpoint-1'}" in lines[0]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # nothing saved from inf weights
    assert not (out / "model").exists() and not (out / "metrics.json").exists()


def test_the_loss_is_checked_at_the_first_logging_step_at_the_latest(tmp_path, cli):
    out = tmp_path / "out"
    env = quick_env(out, TASKS="demo_sentiment,huge", TASKS_FILE=huge_target_task(tmp_path), SAMPLING="round_robin",
                    SAVE_STEPS="100", EVAL_STEPS="100", LOGGING_STEPS="3", MAX_STEPS="8")
    result = cli("train", env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert "became nan or inf at step 2 (stopped at step 3, " in lines[0]
    assert "no checkpoint was saved before it" in lines[0]
    assert not list(out.glob("checkpoint-*"))


def test_resuming_a_finished_run_says_so_and_trains_nothing(exported_run, tmp_path, cli):
    out, env, _ = exported_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    def files() -> dict[Path, tuple[int, int]]:  # but the lock, which names the run holding OUTPUT_DIR now
        return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in copy.rglob("*") if p.name != LOCK_FILE}

    before = files()
    result = cli("train", env={**env, "OUTPUT_DIR": str(copy), "RESUME": "auto"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"the run in {copy} already finished at step 12; nothing to do" in result.stdout
    assert sorted(p.name for p in copy.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    assert files() == before  # nothing written, replaced or added: no checkpoint, model, metrics or selection


def test_the_demo_tokenizer_is_the_same_in_every_process():
    code = ("import json; from trainer.tasks.demo import build_demo_tokenizer; "
            "print(json.dumps(build_demo_tokenizer().get_vocab()))")
    vocabs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed}
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        vocabs.append(json.loads(result.stdout))
    assert len(vocabs[0]) > 100
    assert vocabs[0] == vocabs[1]


def test_every_file_of_a_run_follows_the_umask(exported_run):
    out, _, _ = exported_run
    expected = 0o666 & ~current_umask()  # the test's umask is the run's: the subprocess inherits it
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert any(name.endswith("model.safetensors") for name in modes)
    assert {name: oct(mode) for name, mode in modes.items() if mode != expected} == {}
    folders = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_dir()}
    assert "export" in folders
    assert {name: oct(mode) for name, mode in folders.items() if mode != 0o777 & ~current_umask()} == {}


def test_truncated_model_weights_are_one_line(tmp_path, cli):
    model = save_tiny_pretrained(tmp_path / "tiny")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "out"
    result = cli("train", env={"MODEL_NAME": str(model), "OUTPUT_DIR": str(out), "MAX_STEPS": "2"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"MODEL_NAME='{model}' can't be loaded" in lines[0], result.stderr[-3000:]
    assert "incomplete metadata" in lines[0]
    assert not out.exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs (a real full disk): needs root to mount; skipped otherwise."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_at_save_is_one_line_and_leaves_no_partial_checkpoint(tiny_disk, tmp_path, cli):
    out = tiny_disk / "run"
    # the demo's first checkpoint (weights 0.4 MB + AdamW state 0.8 MB) does not fit in 1 MB
    env = quick_env(out, SAVE_STEPS="4", EVAL_STEPS="100", LOG_DIR=str(tmp_path / "logs"))
    result = cli("train", env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"error: no space left on the disk of {out} to save checkpoint-4: a checkpoint needs "
                               "about "), lines[0]
    assert " MB are free" in lines[0]
    assert not (out / "checkpoint-4").exists()


def test_under_ddp_every_rank_stops_at_the_same_step(tmp_path):
    """Two gloo ranks (torchrun, the CLI): the gathered check stops both at once, no rank is left waiting."""
    from .gcs_emulator import free_port

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           **quick_env(out, TASKS="demo_sentiment,huge", TASKS_FILE=huge_target_task(tmp_path),
                       SAMPLING="round_robin", SAVE_STEPS="1", EVAL_STEPS="100", LOGGING_STEPS="4", MAX_STEPS="8")}
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run([str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1",
                             f"--master_port={free_port()}", "-m", "trainer", "train"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 2, result.stderr[-3000:]  # one per rank, the same
    assert all("the training loss of huge became nan or inf at step 2 (stopped at step 2, " in line
               for line in lines), lines
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
