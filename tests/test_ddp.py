"""A real two-process DDP run (torchrun, gloo, CPU): ranks stay in step on the same task."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .gcs_emulator import free_port
from .tiny import ROOT, quick_env, write_ner_and_text_tasks


def run_torchrun(tmp_path, worker_env: dict[str, str] | None = None, **settings: str) -> None:
    """Train with two gloo ranks via tests/ddp_worker.py."""
    env = {**os.environ, **quick_env(tmp_path / "out", MAX_STEPS="16", MAX_TRAIN_SAMPLES="96", **settings),
           "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(worker_env or {})}
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
         str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (tmp_path / "torchrun.stderr").write_text(result.stderr)  # both ranks' log lines


def torchrun_worker(tmp_path, worker_env: dict[str, str] | None = None,
                    **settings: str) -> tuple[list[list[str]], list[dict]]:
    """Train with two gloo ranks; each rank's step tasks and encoder states."""
    run_torchrun(tmp_path, worker_env, **settings)
    tasks = [(tmp_path / f"tasks.rank{r}").read_text().split() for r in (0, 1)]
    assert len(tasks[0]) == 16 and tasks[0] == tasks[1], "ranks trained different tasks in the same step"
    ranks = [torch.load(tmp_path / f"encoder.rank{r}.pt") for r in (0, 1)]
    final0, final1 = ranks[0]["final"], ranks[1]["final"]
    assert all(torch.equal(final0[k], final1[k]) for k in final0), "encoder weights differ between ranks"
    assert not all(torch.equal(final0[k], ranks[0]["initial"][k]) for k in final0), "the encoder never trained"
    return tasks, ranks


def test_torchrun_two_ranks_train_the_same_task_each_step(tmp_path):
    tasks, ranks = torchrun_worker(tmp_path, SAMPLING="temperature")
    assert len(set(tasks[0])) == 3
    assert (tmp_path / "find_unused.rank0").read_text() == "True"  # one head per step: the others get no grad
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert (tmp_path / "out" / "checkpoint-16" / "checkpoint_complete.json").is_file()
    # the epoch's steps per task: logged once (rank 0), and what the ranks trained (16 of the 18 steps of epoch 1)
    lines = re.findall(r"epoch 1 \(16 of 18 steps\): steps per task: (.*)", (tmp_path / "torchrun.stderr").read_text())
    assert len(lines) == 1, lines
    logged = dict(re.findall(r"(\w+) ([\d.]+) % \(expected [\d.]+ %\)", lines[0]))
    assert logged == {t: f"{100 * tasks[0].count(t) / 16:.1f}" for t in set(tasks[0])}


@pytest.mark.slow
def test_torchrun_mixes_classification_masked_lm_and_token_classification(tmp_path):
    write_ner_and_text_tasks(tmp_path)
    tasks, _ = torchrun_worker(tmp_path, SAMPLING="uniform", TASKS="demo_sentiment,ner,text",
                               TASKS_FILE=str(tmp_path / "tasks.yaml"), MAX_SEQ_LENGTH="32")
    assert set(tasks[0]) == {"demo_sentiment", "ner", "text"}
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "f1" in report["tasks"]["ner"] and "perplexity" in report["tasks"]["text"]


@pytest.mark.slow
def test_torchrun_all_tasks_steps_run_ddp_without_finding_unused_parameters(tmp_path):
    """Token classification and masked LM leave BERT's pooler unused: it is frozen before DDP is built,
    so every parameter that DDP reduces gets a gradient in every step."""
    write_ner_and_text_tasks(tmp_path)
    tasks, ranks = torchrun_worker(tmp_path, SAMPLING="all_tasks", TASK_WEIGHTING="uncertainty",
                                   TASKS_FILE=str(tmp_path / "tasks.yaml"), MAX_SEQ_LENGTH="32")
    assert set(tasks[0]) == {"ner+text"}  # every step: one batch of each task
    assert [(tmp_path / f"find_unused.rank{r}").read_text() for r in (0, 1)] == ["False", "False"]
    final, initial = ranks[0]["final"], ranks[0]["initial"]
    assert torch.equal(final["pooler.dense.weight"], initial["pooler.dense.weight"])  # frozen: no task uses it


def test_sigterm_on_one_rank_stops_both_ranks_on_the_same_step(tmp_path):
    """The preemption flag goes over a gloo group (no device sync): rank 1 alone gets SIGTERM at the end of
    step 5, and both ranks save and stop at the end of step 6, the next check."""
    run_torchrun(tmp_path, {"DDP_WORKER_SIGTERM": "1:5"}, SAVE_STEPS="100", EVAL_STEPS="100")
    tasks = [(tmp_path / f"tasks.rank{r}").read_text().split() for r in (0, 1)]
    assert len(tasks[0]) == len(tasks[1]) == 6 and tasks[0] == tasks[1]
    stopped = [(tmp_path / f"preempted.rank{r}").read_text() for r in (0, 1)]
    assert all(re.search(r"\bstep 6\b", text) for text in stopped), stopped
    assert (tmp_path / "out" / "checkpoint-6" / "checkpoint_complete.json").is_file()
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_torchrun_lora_per_task_trains_each_task_adapter_in_its_own_steps_only(tmp_path):
    """ADAPTER=lora_per_task on a tiny Llama, classification, token classification and causal LM, two gloo ranks:
    the ranks end bit-equal, the base is bit-equal to the pretrained weights, and after every step exactly the
    step's task's adapter and head have changed (DDP leaves the other adapters' gradients None)."""
    from safetensors.torch import load_file

    from .tiny import save_tiny_llama

    write_ner_and_text_tasks(tmp_path, text_kind="causal_lm")
    model_dir = save_tiny_llama(tmp_path / "llama")
    tasks, ranks = torchrun_worker(tmp_path, {"DDP_WORKER_OWNERS": "1"}, MODEL_NAME=str(model_dir),
                                   ADAPTER="lora_per_task", SAMPLING="uniform", TASKS="demo_sentiment,ner,text",
                                   TASKS_FILE=str(tmp_path / "tasks.yaml"), MAX_SEQ_LENGTH="32")
    assert set(tasks[0]) == {"demo_sentiment", "ner", "text"}
    final, initial = ranks[0]["final"], ranks[0]["initial"]
    pretrained = load_file(model_dir / "model.safetensors")
    base = {k.replace(".base_layer.", "."): v for k, v in final.items() if ".lora_" not in k}
    assert base.keys() == pretrained.keys()
    assert all(torch.equal(base[k], pretrained[k]) for k in base), "the frozen base changed"
    assert all(torch.equal(final[k], initial[k]) for k in final if ".lora_" not in k)
    owners = [json.loads((tmp_path / f"owners.rank{r}.json").read_text()) for r in (0, 1)]
    assert owners[0] == owners[1], "the ranks' adapters or heads differ"
    assert len(owners[0]) == len(tasks[0]) + 1  # at the start, then after each step
    for step, task in enumerate(tasks[0], start=1):
        before, after = owners[0][step - 1], owners[0][step]
        changed = {name for name in after if after[name] != before[name]}
        # the step's task alone; all of it after step 1, whose learning rate warm-up makes 0
        assert changed == {task} or (step == 1 and not changed), f"step {step} ({task}) changed {sorted(changed)}"
