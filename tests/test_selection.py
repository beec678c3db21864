"""Per-task model selection (SELECT_BEST), learned loss weights and summed-loss steps, end to end.

The constructed run: task `early` is trained on sentiment but its dev labels are flipped, so the more
the model learns, the worse its dev accuracy gets (it peaks early); task `late` has true dev labels
and peaks late. Each task's export must hold the weights of its own best step.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from trainer.tasks.demo import demo_columns
from trainer.train import train

from .tiny import settings_of

pytestmark = pytest.mark.slow

TASKS_YAML = """
tasks:
  - {name: early, type: classification, train_file: early_train.tsv, dev_file: early_dev.tsv,
     text_columns: [text], label_column: label, labels: ["0", "1"]}
  - {name: late, type: classification, train_file: late_train.tsv, dev_file: late_dev.tsv,
     text_columns: [text], label_column: label, labels: ["0", "1"]}
"""


def write_tasks(directory):
    train, dev = demo_columns("demo_sentiment", "train"), demo_columns("demo_sentiment", "dev")

    def tsv(name, columns, rows, flip=False):
        lines = ["text\tlabel"] + [f"{t}\t{(1 - y) if flip else y}" for t, y in
                                   list(zip(columns["text_a"], columns["label"], strict=True))[rows]]
        (directory / name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    tsv("early_train.tsv", train, slice(0, 160))
    tsv("early_dev.tsv", dev, slice(0, 64), flip=True)
    tsv("late_train.tsv", train, slice(160, 320))
    tsv("late_dev.tsv", dev, slice(64, 128))
    (directory / "tasks.yaml").write_text(TASKS_YAML, encoding="utf-8")
    return directory / "tasks.yaml"


class StopWithoutSaving(TrainerCallback):
    """Stop after `step` steps without a checkpoint, as a killed job would: the evaluations after the
    last checkpoint have already changed OUTPUT_DIR/best/ when the run is resumed."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def settings(tmp_path, out, **extra):
    flags = {"tasks_file": str(write_tasks(tmp_path)), "output_dir": str(tmp_path / out), "max_steps": 48,
             "batch_size": 32, "eval_steps": 6, "save_steps": 6, "save_total_limit": 100, "learning_rate": 2e-3,
             "seed": 1, **extra}
    return settings_of(**flags)


def history(run_dir, step):
    """eval_<task>_accuracy per evaluated step, from the Trainer's own log."""
    state = json.loads((run_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return {task: {e["step"]: e[f"eval_{task}_accuracy"] for e in state["log_history"]
                   if f"eval_{task}_accuracy" in e} for task in ("early", "late")}


def task_weights(directory, task):
    """An export's weights, or a checkpoint's encoder + one head, under the export's names."""
    weights = load_file(directory / "model.safetensors")
    if "bert.embeddings.word_embeddings.weight" in weights:
        return weights
    encoder = {f"bert.{k.removeprefix('encoder.')}": v for k, v in weights.items() if k.startswith("encoder.")}
    head = {k.removeprefix(f"task_models.{task}."): v for k, v in weights.items()
            if k.startswith(f"task_models.{task}.")}
    return {**encoder, **head}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("select")
    return tmp, train(settings(tmp, "straight"))


def test_each_tasks_export_holds_the_weights_of_its_own_best_step(straight):
    tmp, report = straight
    run = tmp / "straight"
    curves = history(run, 48)
    steps = {task: report["selected"][task]["step"] for task in ("early", "late")}
    for task, curve in curves.items():
        best = max(curve.values())
        assert steps[task] == min(s for s, v in curve.items() if v == best), (task, curve)  # its first best
        assert report["selected"][task]["metrics"]["accuracy"] == best
    assert steps["early"] < steps["late"], curves  # the construction worked: they peak at different times
    assert report["select_best"] == "per_task" and report["global_step"] == 48
    assert report["tasks"]["early"]["accuracy"] == curves["early"][48]  # the final metrics are kept too
    for task, step in steps.items():
        exported, at_step = task_weights(run / "export" / task, task), task_weights(run / f"checkpoint-{step}", task)
        assert exported.keys() == at_step.keys()
        assert all(torch.equal(exported[k], at_step[k]) for k in exported), f"export/{task} is not step {step}"
    # bounded disk: one copy per task, and the checkpoints hold hard links to it, not copies
    best = sorted(p.name for p in (run / "best").iterdir())
    assert best == [f"early-step{steps['early']}", f"late-step{steps['late']}", "selection.json"]
    linked = run / "checkpoint-48" / "best" / f"late-step{steps['late']}" / "model.safetensors"
    assert linked.stat().st_ino == (run / "best" / f"late-step{steps['late']}" / "model.safetensors").stat().st_ino


def test_the_selection_survives_an_interruption_and_a_resume(straight):
    tmp, report = straight
    train(settings(tmp, "resumed"), callbacks=[StopWithoutSaving(33)])  # ends after step 33, newest checkpoint 30
    resumed = train(settings(tmp, "resumed", resume="auto"))
    assert resumed["selected"] == report["selected"]
    for task in ("early", "late"):
        a = task_weights(tmp / "straight" / "export" / task, task)
        b = task_weights(tmp / "resumed" / "export" / task, task)
        assert all(torch.equal(a[k], b[k]) for k in a), task


@pytest.mark.parametrize("mode", ["average", "last"])
def test_average_and_last_selection(straight, mode):
    tmp, report = straight
    result = train(settings(tmp, mode, select_best=mode))
    run = tmp / mode
    if mode == "last":
        assert all(s["step"] == 48 for s in result["selected"].values())
        assert not (run / "best").exists()
    else:
        step = result["best_average"]["step"]
        assert {s["step"] for s in result["selected"].values()} == {step}
        assert result["selected_average"] == result["best_average"]["value"] == max(
            (a + b) / 2 for a, b in zip(history(run, 48)["early"].values(), history(run, 48)["late"].values(),
                                         strict=True))
    chosen = result["selected"]["late"]["step"]
    exported, at_step = task_weights(run / "export" / "late", "late"), task_weights(run / f"checkpoint-{chosen}",
                                                                                       "late")
    assert all(torch.equal(exported[k], at_step[k]) for k in exported)


def test_uncertainty_weighting_with_all_tasks_steps_resumes_exactly(tmp_path):
    common = {"sampling": "all_tasks", "task_weighting": "uncertainty", "max_steps": 16, "eval_steps": 8,
              "save_steps": 5, "select_best": "last"}
    a = train(settings(tmp_path, "a", **common))
    train(settings(tmp_path, "b", **common), callbacks=[StopWithoutSaving(12)])
    b = train(settings(tmp_path, "b", resume="auto", **common))
    assert {t: m["loss"] for t, m in a["tasks"].items()} == {t: m["loss"] for t, m in b["tasks"].items()}
    first, second = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("a", "b"))
    assert all(torch.equal(first[k], second[k]) for k in first), "the resumed run diverged"
    learned = load_file(tmp_path / "b" / "checkpoint-10" / "model.safetensors")["loss_weighting.log_variance"]
    assert learned.shape == (2,) and learned.abs().min() > 0  # trained, and saved in the checkpoint
    assert not torch.equal(learned, first["loss_weighting.log_variance"])
    state = json.loads((tmp_path / "a" / "checkpoint-16" / "trainer_state.json").read_text())
    logged = [e for e in state["log_history"] if "early_loss" in e]
    assert logged and all("late_loss" in e and "early_weight" in e for e in logged)
