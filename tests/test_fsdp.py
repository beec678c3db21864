"""FSDP=true on CPU: two gloo processes shard full fine-tuning (FSDP2, one unit per transformer block) of two task
kinds, one task's head per step; kill -9 after a checkpoint is committed to the emulated bucket, a resume on a
"new machine" (an empty OUTPUT_DIR, two processes again) from the bucket, and weights bit-equal to an uninterrupted
run's (FSDP=true in one process is a row of tests/test_bad_input.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .gcs_emulator import free_port
from .test_gcs_training import committed_steps
from .tiny import ROOT, cli_environ, quick_env, write_ner_and_text_tasks

STEPS = 16


def torchrun(tmp_path: Path, output_dir: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m trainer train` under torchrun with two processes, in a process group of its own; with
    FSDP_WORKER_KILL, tests/fsdp_worker.py, which kill -9s the group (see there)."""
    settings = quick_env(tmp_path / output_dir, TASKS="demo_sentiment,ner", TASKS_FILE=str(tmp_path / "tasks.yaml"),
                         FSDP="true", MAX_STEPS=str(STEPS), SAVE_STEPS="4", EVAL_STEPS="8", MAX_SEQ_LENGTH="32",
                         MAX_TRAIN_SAMPLES="96", SEED="3", WARMUP_RATIO="0", **env)  # no step at rate 0
    command = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}",
               *([str(ROOT / "tests" / "fsdp_worker.py")] if "FSDP_WORKER_KILL" in env else ["-m", "trainer", "train"])]
    return subprocess.run(command, env=cli_environ({**settings, "PYTHONUNBUFFERED": "1"}), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, start_new_session=True)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


@pytest.mark.slow
def test_fsdp_kill_9_then_resume_from_the_bucket_on_a_new_machine_matches_an_uninterrupted_run(
        tmp_path, gcs_client, gcs_bucket):
    write_ner_and_text_tasks(tmp_path)
    straight = torchrun(tmp_path, "straight")
    assert straight.returncode == 0, straight.stderr[-4000:]
    assert "FSDP=true: FSDP2, one unit per BertLayer" in straight.stderr
    checkpoint = tmp_path / "straight" / "checkpoint-8"
    # the Trainer's FSDP files (written on its FSDP path only), beside the gathered model.safetensors
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "optimizer.bin").is_file()
    assert not (checkpoint / "optimizer.pt").exists()
    first, final = weights(checkpoint), weights(tmp_path / "straight" / "model")
    assert not all(torch.equal(first[k], final[k]) for k in first), "the model never trained"

    job = f"gs://{gcs_bucket}/jobs/fsdp"
    killed = torchrun(tmp_path, "first", JOB_DIR=job, FSDP_WORKER_KILL="10:8")
    assert killed.returncode != 0 and not (tmp_path / "first" / "metrics.json").exists(), killed.stderr[-3000:]
    assert max(committed_steps(gcs_client, job)) == 8, killed.stderr[-3000:]
    # one task's head per step: under FSDP too, a step leaves every other task's head (its shard) unchanged
    steps = [[line.split(" ") for line in (tmp_path / f"heads.rank{r}").read_text().splitlines()] for r in (0, 1)]
    assert len(steps[0]) == len(steps[1]) == 10 and [t for t, _ in steps[0]] == [t for t, _ in steps[1]]
    assert {t for t, _ in steps[0]} == {"demo_sentiment", "ner"}
    for (task, changed0), (_, changed1) in zip(*steps, strict=True):
        changed = set(changed0.split(",") + changed1.split(",")) - {""}
        assert changed == {task}, f"a {task} step changed the heads of {changed}"

    resumed = torchrun(tmp_path, "second", JOB_DIR=job, RESUME="auto")  # another machine: an empty OUTPUT_DIR
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "downloaded checkpoint-8" in resumed.stderr
    a, b = weights(tmp_path / "straight" / "model"), weights(tmp_path / "second" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the resumed run diverged"
    for task in ("demo_sentiment", "ner"):
        a, b = (weights(tmp_path / run / "export" / task) for run in ("straight", "second"))
        assert all(torch.equal(a[k], b[k]) for k in a), f"export/{task} differs"


def test_a_checkpoint_resumes_only_with_the_fsdp_setting_that_wrote_it(tmp_path):
    from trainer.errors import UserError
    from trainer.model.sharding import FSDP_WEIGHTS_FILE, check_resume_format

    ddp, fsdp = tmp_path / "checkpoint-4", tmp_path / "checkpoint-8"
    ddp.mkdir()
    fsdp.mkdir()
    (fsdp / FSDP_WEIGHTS_FILE).write_bytes(b"")
    check_resume_format(None, True)
    check_resume_format(ddp, False)
    check_resume_format(fsdp, True)
    with pytest.raises(UserError, match=r"^checkpoint-8 was written with FSDP=true and this run has FSDP=false; "
                                        r"resume it with FSDP=true"):
        check_resume_format(fsdp, False)
    with pytest.raises(UserError, match=r"^checkpoint-4 was written with FSDP=false and this run has FSDP=true"):
        check_resume_format(ddp, True)


@pytest.mark.parametrize(("arch", "block"), [("bert", "BertLayer"), ("distilbert", "TransformerBlock"),
                                             ("llama", "LlamaDecoderLayer")])
def test_one_fsdp_unit_per_transformer_block_of_the_base(arch, block):
    import transformers

    from trainer.training.arguments import training_arguments

    from .tiny import decoder_configs, encoder_configs, settings_of

    encoder = transformers.AutoModel.from_config({**encoder_configs(), **decoder_configs()}[arch])
    args = training_arguments(settings_of(fsdp=True, output_dir="unused"), encoder)
    assert args.fsdp_plugin_args == {
        "fsdp_version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_cls_names_to_wrap": block,
        "cpu_ram_efficient_loading": False, "state_dict_type": "FULL_STATE_DICT", "reshard_after_forward": True}
    assert training_arguments(settings_of(output_dir="unused"), encoder).fsdp_plugin_args is None
