"""Issue 20 §2: with an adapter, checkpoints hold only what trains.

A checkpoint (and `model/`, and each `best/` copy) holds the adapters, heads and learned weights, with their
optimizer state, the scheduler, RNG and trainer state, and no frozen base weight; it is rebuilt on the base that
MODEL_NAME names, which must be the one it was trained on (run.json and multitask.json record a fingerprint).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from trainer.checkpoints import remote
from trainer.errors import UserError
from trainer.layout import TASK_STATE_FILE
from trainer.model.modeling import MultitaskModel
from trainer.outputs.inference import load_task_model
from trainer.runs.identity import differences
from trainer.storage import gcs
from trainer.storage.gcs import GcsStore
from trainer.tasks.demo import build_demo_tokenizer
from trainer.train import train

from .test_bad_input import snapshot
from .test_run_guards import error_lines
from .tiny import ROOT, quick_env, save_tiny_pretrained, settings_of

TASKS = ("demo_sentiment", "demo_similarity", "demo_category")
BUCKET = "g-test-bucket"


def save_small_bert(directory: Path) -> Path:
    """A small random BERT (0.9 M parameters) whose weights, not the tokenizer and bookkeeping files, make up a
    full checkpoint, as in any real model."""
    torch.manual_seed(0)
    tokenizer = build_demo_tokenizer()
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4,
                                     num_attention_heads=2, intermediate_size=512, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def bytes_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 2-step runs of the same small model: ADAPTER=lora and full fine-tuning (ADAPTER=none)."""
    root = tmp_path_factory.mktemp("adapter-runs")
    model = save_small_bert(root / "base")
    found = {"base": model}
    for adapter in ("lora", "none"):
        out = root / adapter
        train(settings_of(output_dir=str(out), model_name=str(model), adapter=adapter, max_steps=2,
                                       save_steps=2, eval_steps=2, batch_size=8, max_train_samples=32,
                                       max_eval_samples=8, logging_steps=1, report_to="none"))
        found[adapter] = out
    return found


def test_an_adapter_checkpoint_holds_no_base_and_is_under_5_percent_of_a_full_one(runs):
    adapter, full = runs["lora"] / "checkpoint-2", runs["none"] / "checkpoint-2"
    saved = load_file(adapter / "model.safetensors")
    assert saved and all(".lora_" in k or k.startswith("task_models.") for k in saved), sorted(saved)
    assert not [k for k in load_file(full / "model.safetensors") if k.startswith("encoder.") and k in saved]
    # the optimizer holds exactly what is saved: every tensor in the checkpoint trains
    optimizer = torch.load(adapter / "optimizer.pt", weights_only=True)
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == len(saved)
    for name in ("scheduler.pt", "rng_state.pth", "trainer_state.json", "run.json"):
        assert (adapter / name).is_file(), name
    ratio = bytes_on_disk(adapter) / bytes_on_disk(full)
    print(f"adapter checkpoint {bytes_on_disk(adapter)} bytes, full {bytes_on_disk(full)} bytes: {ratio:.2%}")
    assert ratio < 0.05
    assert load_file(runs["lora"] / "model" / "model.safetensors").keys() == saved.keys()
    # the run identity records the adapter and the base: MODEL_NAME and its weights files' fingerprint
    defines = json.loads((runs["lora"] / "run.json").read_text())["defines"]
    assert defines["adapter"] == "lora"
    assert defines["base"]["model_name"] == str(runs["base"])
    assert set(defines["base"]["files"]) == {"model.safetensors"}


def test_best_keeps_only_each_tasks_adapter_and_head(runs):
    selection = json.loads((runs["lora"] / "best" / "selection.json").read_text())
    for task in TASKS:
        folder = runs["lora"] / "best" / selection["tasks"][task]["dir"]
        assert sorted(p.name for p in folder.iterdir()) == [TASK_STATE_FILE, "trainer_task.json"]
        keys = load_file(folder / TASK_STATE_FILE).keys()
        assert {k for k in keys if not k.startswith("encoder.")} == \
            {k for k in keys if k.startswith(f"task_models.{task}.")} != set()
        assert all(".lora_" in k for k in keys if k.startswith("encoder."))


def test_from_checkpoint_loads_the_base_again_and_matches_the_export(runs):
    model = MultitaskModel.from_checkpoint(runs["lora"] / "model")
    assert model.adapter.mode == "lora"
    trained = load_file(runs["lora"] / "model" / "model.safetensors")
    state = model.state_dict()
    assert state.keys() == trained.keys() and all(torch.equal(state[k], trained[k]) for k in state)
    base = transformers.BertModel.from_pretrained(runs["base"])
    loaded = dict(model.encoder.named_parameters())
    for name, param in base.named_parameters():
        assert torch.equal(loaded.get(name, loaded.get(name.replace(".weight", ".base_layer.weight").replace(
            ".bias", ".base_layer.bias"))), param), name
    # every task was selected at step 2, the last: its export (built from best/) predicts what the model does
    ids = torch.tensor([[2, 7, 8, 9, 3]])
    for task in ("demo_sentiment", "demo_similarity"):
        export = transformers.AutoModelForSequenceClassification.from_pretrained(runs["lora"] / "export" / task)
        with torch.no_grad():
            ours = model(task=task, input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            theirs = export.eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        assert torch.allclose(ours, theirs, atol=1e-5), task


def test_from_checkpoint_refuses_another_base(runs, tmp_path):
    copy = shutil.copytree(runs["lora"] / "model", tmp_path / "model")
    payload = json.loads((copy / "multitask.json").read_text())
    payload["base"]["fingerprint"]["files"]["model.safetensors"]["sha256"] = "0" * 64
    (copy / "multitask.json").write_text(json.dumps(payload))
    with pytest.raises(UserError, match=rf"base is MODEL_NAME={runs['base']} \(weights [0-9a-f]+\), but .* now has "
                                        "weights [0-9a-f]+"):
        MultitaskModel.from_checkpoint(copy)


def test_resume_refuses_another_base_and_a_changed_adapter_writing_nothing(tmp_path, cli):
    model = save_tiny_pretrained(tmp_path / "base", seed=0)
    out = tmp_path / "out"
    env = quick_env(out, MODEL_NAME=str(model), ADAPTER="lora", MAX_STEPS="2", SAVE_STEPS="2", EVAL_STEPS="2",
                    REPORT_TO="none")
    assert (first := cli("train", env=env)).returncode == 0, first.stderr[-3000:]
    weights = json.loads((out / "run.json").read_text())["defines"]["base"]["weights"]

    save_tiny_pretrained(model, seed=1)  # the same MODEL_NAME, other weights
    before = snapshot(out)
    refused = cli("train", env={**env, "RESUME": "auto", "MAX_STEPS": "4"})
    lines = error_lines(refused.stderr)
    assert refused.returncode != 0 and len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert f"the base differs: MODEL_NAME={model} (weights {weights}) -> MODEL_NAME={model} (weights " in lines[0]
    assert snapshot(out) == before

    save_tiny_pretrained(model, seed=0)  # the base back; now the adapter changes
    refused = cli("train", env={**env, "RESUME": "auto", "MAX_STEPS": "4", "ADAPTER": "none"})
    lines = error_lines(refused.stderr)
    assert refused.returncode != 0 and len(lines) == 1, refused.stderr[-3000:]
    assert "RESUME=auto" in lines[0] and "ADAPTER lora -> none" in lines[0], lines[0]
    assert "the base differs" not in lines[0], lines[0]
    assert snapshot(out) == before


def test_lora_per_task_resumes_from_local_disk_bit_equal_and_selects_each_tasks_own_adapter(tmp_path):
    flags = {"adapter": "lora_per_task", "max_steps": 4, "save_steps": 2, "eval_steps": 2, "batch_size": 8,
             "max_train_samples": 32, "max_eval_samples": 8, "logging_steps": 1, "report_to": "none"}
    train(settings_of(output_dir=str(tmp_path / "straight"), **flags))
    train(settings_of(output_dir=str(tmp_path / "killed"), **flags))
    for lost in ("checkpoint-4", "model", "export", "best"):  # as if killed after checkpoint-2
        shutil.rmtree(tmp_path / "killed" / lost)
    train(settings_of(output_dir=str(tmp_path / "killed"), resume="auto", **flags))
    a, b = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the resumed run diverged"
    assert all(".lora_" in k or k.startswith("task_models.") for k in a)
    # predicting one task from model/ runs through that task's adapter (not the first task's)
    _, task_model, _ = load_task_model(str(tmp_path / "killed"), str(tmp_path / "killed" / "model"), "demo_category")
    multitask = MultitaskModel.from_checkpoint(tmp_path / "killed" / "model")
    ids = torch.tensor([[2, 7, 8, 9, 3]])
    inputs = {"input_ids": ids.unsqueeze(1).expand(1, 4, 5), "attention_mask": torch.ones(1, 4, 5, dtype=torch.long)}
    with torch.no_grad():
        assert torch.equal(task_model(**inputs).logits, multitask(task="demo_category", **inputs).logits)
    selection = json.loads((tmp_path / "killed" / "best" / "selection.json").read_text())
    for task in TASKS:  # each best/ copy: the task's own adapter and head, nothing of another task
        keys = load_file(tmp_path / "killed" / "best" / selection["tasks"][task]["dir"] / TASK_STATE_FILE).keys()
        assert {k.split(".lora_")[1].split(".")[1] for k in keys if ".lora_" in k} == {task}
        assert {k.split(".")[1] for k in keys if k.startswith("task_models.")} == {task}


def test_the_base_counts_only_for_an_adapter_and_a_run_json_from_before_adapters_trained_in_full():
    a = {"model_name": "m", "weights": "aaaa", "files": {}}
    b = {"model_name": "m", "weights": "bbbb", "files": {}}
    assert differences({"adapter": "lora", "base": a}, {"adapter": "lora", "base": b}) == \
        ["the base differs: MODEL_NAME=m (weights aaaa) -> MODEL_NAME=m (weights bbbb)"]
    assert differences({"adapter": "none", "base": a}, {"adapter": "none", "base": b}) == []  # a full checkpoint
    assert differences({"seed": 1}, {"seed": 1, "adapter": "none", "base": b}) == []  # an older run.json
    assert differences({"seed": 1}, {"seed": 1, "adapter": "lora", "base": b, "lora_r": 8}) == \
        ["ADAPTER none -> lora"]


def _adapter_process(env: dict[str, str], log) -> subprocess.Popen:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "trainer", "train"], cwd=ROOT, env=full, stdout=log, stderr=log)


def _committed(client, job: str) -> list[int]:
    return [s for s, _ in remote.list_committed_checkpoints(GcsStore(client), gcs.parse_gcs_uri(f"{job}/checkpoints"))]


@pytest.mark.slow
def test_kill_9_then_resume_from_the_bucket_into_an_empty_output_dir_is_bit_equal(tmp_path, gcs_client, gcs_bucket):
    model = save_tiny_pretrained(tmp_path / "tiny")
    common = {"MODEL_NAME": str(model), "ADAPTER": "lora_per_task", "MAX_STEPS": "40", "SAVE_STEPS": "10",
              "EVAL_STEPS": "10", "BATCH_SIZE": "16", "MAX_TRAIN_SAMPLES": "200", "MAX_EVAL_SAMPLES": "16",
              "SEED": "5", "LOGGING_STEPS": "1", "REPORT_TO": "none"}
    with open(tmp_path / "straight.log", "w") as log:
        assert _adapter_process({**common, "OUTPUT_DIR": str(tmp_path / "straight")}, log).wait() == 0, \
            (tmp_path / "straight.log").read_text()[-3000:]

    job = f"gs://{BUCKET}/jobs/adapter"
    with open(tmp_path / "first.log", "w") as log:
        proc = _adapter_process({**common, "OUTPUT_DIR": str(tmp_path / "first"), "JOB_DIR": job}, log)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not [s for s in _committed(gcs_client, job)
                                                                        if s >= 10]:
            time.sleep(0.05)
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert running, (tmp_path / "first.log").read_text()[-3000:]
    last = max(_committed(gcs_client, job))
    assert 10 <= last < 40
    # the bucket's checkpoint holds no base weight either
    blob = gcs_client.bucket(BUCKET).blob(f"jobs/adapter/checkpoints/checkpoint-{last}/model.safetensors")
    blob.download_to_filename(str(tmp_path / "bucket.safetensors"))
    assert all(".lora_" in k or k.startswith("task_models.") for k in load_file(tmp_path / "bucket.safetensors"))

    with open(tmp_path / "second.log", "w") as log:
        resumed = _adapter_process({**common, "OUTPUT_DIR": str(tmp_path / "second"), "JOB_DIR": job,
                                    "RESUME": "auto"}, log).wait()
    text = (tmp_path / "second.log").read_text()
    assert resumed == 0 and f"downloaded checkpoint-{last}" in text, text[-3000:]
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "second" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the resumed run diverged"
    for task in TASKS:  # the selection (adapter and head per task) travelled through the bucket
        a, b = (load_file(tmp_path / run / "export" / task / "model.safetensors") for run in ("straight", "second"))
        assert all(torch.equal(a[k], b[k]) for k in a), f"export/{task} differs"
    print(f"killed after checkpoint-{last} was committed; resumed from the bucket, bit-equal")
