"""End-to-end runs on CPU: the demo, resume equivalence, half-written checkpoints, predict and export."""

import json
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from trainer.checkpoints.local import latest_complete_checkpoint
from trainer.layout import COMPLETE_MARKER
from trainer.tasks.catalog import DEMO_TASKS
from trainer.train import train

from .tiny import ROOT, save_tiny_pretrained, settings_of


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`make run-local` with no settings except where to write."""
    out = tmp_path_factory.mktemp("demo") / "run"
    # no setting; OMP_NUM_THREADS is the xdist worker's share of the cores (tests/conftest.py), not a setting
    env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG", "OMP_NUM_THREADS")}
    env.update({"OUTPUT_DIR": str(out), "HF_HUB_OFFLINE": "1"})
    result = subprocess.run(["make", "run-local"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_demo_learns_every_task_well_above_chance(demo_run):
    out, result = demo_run
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["tasks"]) == set(DEMO_TASKS)
    for name, task in DEMO_TASKS.items():
        score = report["tasks"][name][task.metric]
        assert score > task.kind.chance_level(task) + 0.25, f"{name}: {task.metric}={score:.3f}"
    assert report["average"] == pytest.approx(
        sum(report["tasks"][n][t.metric] for n, t in DEMO_TASKS.items()) / 3)
    assert "final: demo_sentiment accuracy=" in result.stdout
    assert any((out / "logs").iterdir()), "no TensorBoard logs"
    assert latest_complete_checkpoint(out).name == f"checkpoint-{report['global_step']}"  # the last step is saved


@pytest.mark.slow
def test_predict_and_export_from_the_command_line(demo_run, tmp_path, cli):
    out, _ = demo_run
    env = {"OUTPUT_DIR": str(out)}
    result = cli("predict", "--task=demo_sentiment", "--text=[\"what a wonderful film\",\"the plot was dull\"]",
                 env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert labels == ["positive", "negative"]
    result = cli("predict", "--task=demo_category", "--text=which word is a fruit ?",
                 "--choices=[\"hammer\",\"mango\",\"bus\",\"red\"]", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["label"] == "mango"
    result = cli("export", f"--export_dir={tmp_path / 'exp'}", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "exp").iterdir() if p.is_dir()) == sorted(DEMO_TASKS)
    result = cli("predict", "--task=nope", "--text=x", env=env)
    assert result.returncode == 2 and "task 'nope' is not in this model" in result.stderr


class StopAt(TrainerCallback):
    """Stop (with a checkpoint) after `step` steps, as an interrupted job would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


def straight_and_resumed(root, stop: int, **common) -> tuple[dict, dict]:
    """The final weights of a run straight through (root/a) and of the same run stopped after `stop` steps and
    resumed (root/b), for the bit-exact resume checks of each kind."""
    train(settings_of(**common, output_dir=str(root / "a")))
    interrupted = settings_of(**common, output_dir=str(root / "b"), resume="auto")
    train(interrupted, callbacks=[StopAt(stop)])
    train(interrupted)
    return (load_file(root / "a" / "model" / "model.safetensors"),
            load_file(root / "b" / "model" / "model.safetensors"))


def test_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path):
    model_dir = save_tiny_pretrained(tmp_path / "tiny")  # dropout 0.1: the RNG state must be restored too
    common = {"model_name": str(model_dir), "max_steps": 16, "batch_size": 8, "max_train_samples": 80,
              "max_eval_samples": 16, "save_steps": 5, "eval_steps": 100, "seed": 3, "sampling": "temperature"}
    straight = settings_of(**common, output_dir=str(tmp_path / "a"))
    train(straight)
    interrupted = settings_of(**common, output_dir=str(tmp_path / "b"), resume="auto")
    train(interrupted, callbacks=[StopAt(8)])
    # A half-written newer checkpoint (no marker, a file missing) must be skipped on resume.
    half = tmp_path / "b" / "checkpoint-12"
    shutil.copytree(tmp_path / "b" / "checkpoint-8", half)
    (half / COMPLETE_MARKER).unlink()
    (half / "optimizer.pt").unlink()
    assert latest_complete_checkpoint(tmp_path / "b").name == "checkpoint-8"
    train(interrupted)
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    state = json.loads((tmp_path / "b" / "checkpoint-16" / "trainer_state.json").read_text())
    assert state["global_step"] == 16
