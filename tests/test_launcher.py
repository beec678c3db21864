"""The launcher: which command it builds for each machine, and a real two-node run on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from trainer.cloud import launcher
from trainer.cloud.launcher import DISTRIBUTED_ENV, build_launch_command
from trainer.errors import UserError

from .gcs_emulator import free_port
from .tiny import ROOT

PY = "/opt/venv/bin/python"  # a python with no torchrun script beside it: the module form is used
TORCHRUN = [PY, "-m", "torch.distributed.run"]
TRAIN = ["-m", "trainer", "train"]
BASE_ENV = {"PATH": "/usr/bin", "TASKS": "stsb,rte", "HOME": "/home/trainer"}
VERTEX_NODE_ENV = {"MASTER_ADDR": "cmle-training-workerpool0-ab12-0", "MASTER_PORT": "23456"}


def cluster_spec(task_type: str, index: int, workers: int = 2) -> str:
    return json.dumps(
        {
            "cluster": {
                "workerpool0": ["cmle-training-workerpool0-ab12-0:2222"],
                "workerpool1": [f"cmle-training-workerpool1-ab12-{i}:2222" for i in range(workers)],
            },
            "environment": "cloud",
            "task": {"type": task_type, "index": index},
            "job": '{"python_module":"","package_uris":[],"job_args":[]}',
        }
    )


def assert_no_node_level_env(child_env: dict[str, str]) -> None:
    assert not set(DISTRIBUTED_ENV) & set(child_env), "node-level rank variables leaked into the child"
    assert child_env["TASKS"] == "stsb,rte"


def test_cpu_runs_one_process():
    argv, env = build_launch_command(BASE_ENV, gpu_count=0, train_args=["--max_steps=5"], python=PY)
    assert argv == [PY, *TRAIN, "--max_steps=5"]
    assert env == BASE_ENV


def test_one_gpu_runs_one_process_even_on_a_vertex_single_replica():
    environ = {**BASE_ENV, **VERTEX_NODE_ENV, "WORLD_SIZE": "1", "RANK": "0"}
    argv, env = build_launch_command(environ, gpu_count=1, python=PY)
    assert argv == [PY, *TRAIN]
    assert_no_node_level_env(env)


def test_several_gpus_use_torchrun_standalone():
    argv, env = build_launch_command(BASE_ENV, gpu_count=4, train_args=["--batch_size=16"], python=PY)
    assert argv == [*TORCHRUN, "--standalone", "--nproc_per_node=4", *TRAIN, "--batch_size=16"]
    assert_no_node_level_env(env)


def test_vertex_multi_node_env_describes_nodes():
    environ = {**BASE_ENV, **VERTEX_NODE_ENV, "WORLD_SIZE": "3", "RANK": "2", "CLUSTER_SPEC": cluster_spec("x", 9)}
    argv, env = build_launch_command(environ, gpu_count=8, python=PY)
    assert argv == [
        *TORCHRUN,
        "--nnodes=3",
        "--node_rank=2",
        "--master_addr=cmle-training-workerpool0-ab12-0",
        "--master_port=23456",
        "--nproc_per_node=8",
        *TRAIN,
    ]
    assert_no_node_level_env(env)


@pytest.mark.parametrize(("task_type", "index", "node_rank"), [("workerpool0", 0, 0), ("workerpool1", 1, 2)])
def test_cluster_spec_fallback(task_type: str, index: int, node_rank: int):
    environ = {**BASE_ENV, "CLUSTER_SPEC": cluster_spec(task_type, index)}
    argv, env = build_launch_command(environ, gpu_count=2, python=PY)
    assert argv == [
        *TORCHRUN,
        "--nnodes=3",
        f"--node_rank={node_rank}",
        "--master_addr=cmle-training-workerpool0-ab12-0",
        "--master_port=2222",
        "--nproc_per_node=2",
        *TRAIN,
    ]
    assert_no_node_level_env(env)
    with_port = build_launch_command({**environ, "MASTER_PORT": "23456"}, gpu_count=2, python=PY)[0]
    assert "--master_port=23456" in with_port


def test_cluster_spec_with_only_a_chief_is_one_node():
    environ = {**BASE_ENV, "CLUSTER_SPEC": cluster_spec("workerpool0", 0, workers=0)}
    assert build_launch_command(environ, gpu_count=0, python=PY)[0] == [PY, *TRAIN]


def test_nproc_per_node_override_for_cpu_processes():
    argv, _ = build_launch_command({**BASE_ENV, "NPROC_PER_NODE": "2"}, gpu_count=0, python=PY)
    assert argv[: len(TORCHRUN) + 2] == [*TORCHRUN, "--standalone", "--nproc_per_node=2"]


def test_inside_torchrun_already_the_ranks_are_left_alone():
    environ = {**BASE_ENV, "LOCAL_RANK": "1", "RANK": "5", "WORLD_SIZE": "8", "TORCHELASTIC_RUN_ID": "x"}
    argv, env = build_launch_command(environ, gpu_count=8, python=PY)
    assert argv == [PY, *TRAIN] and env == environ


def test_uses_the_torchrun_script_beside_python(tmp_path: Path):
    (tmp_path / "torchrun").write_text("#!/bin/sh\n")
    (tmp_path / "torchrun").chmod(0o755)
    argv, _ = build_launch_command(BASE_ENV, gpu_count=2, python=str(tmp_path / "python"))
    assert argv[0] == str(tmp_path / "torchrun")


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"WORLD_SIZE": "two", **VERTEX_NODE_ENV}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "2", "RANK": "2", **VERTEX_NODE_ENV}, "RANK"),
        ({"WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "RANK"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR"),
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "70000"}, "MASTER_PORT"),
        ({"CLUSTER_SPEC": "{not json"}, "CLUSTER_SPEC"),
        ({"CLUSTER_SPEC": cluster_spec("workerpool2", 0)}, "workerpool2"),
        ({"CLUSTER_SPEC": cluster_spec("workerpool1", 5)}, "workerpool1"),
    ],
)
def test_bad_topology_is_one_clear_error(environ: dict[str, str], named: str):
    with pytest.raises(UserError) as info:
        build_launch_command({**BASE_ENV, **environ}, gpu_count=1, python=PY)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_launch_prints_the_command_and_returns_its_exit_code(monkeypatch, capsys):
    seen = {}

    def fake_build(environ, gpu_count, train_args=(), python=sys.executable):
        seen["args"] = list(train_args)
        return [sys.executable, "-c", "import sys; sys.exit(3)"], dict(environ)

    monkeypatch.setattr(launcher, "build_launch_command", fake_build)
    monkeypatch.setattr(launcher, "detect_gpu_count", lambda: 0)
    assert launcher.launch(["--max_steps=2"]) == 3
    assert seen["args"] == ["--max_steps=2"]
    assert f"[launch] {sys.executable} -c 'import sys; sys.exit(3)'" in capsys.readouterr().out


# --- a real two-"node" run: two launchers, WORLD_SIZE=2 and RANK=0/1, gloo over loopback ----------------

# Loaded by every python started with this directory on PYTHONPATH; in torchrun's workers it saves the
# model's weights before and after Trainer.train, one file per rank.
DUMP_HOOK = textwrap.dedent(
    """
    import os

    if os.environ.get("DUMP_WEIGHTS_DIR") and os.environ.get("LOCAL_RANK") is not None:
        import torch
        import transformers

        _train = transformers.Trainer.train

        def _dump(trainer, stage):
            model = trainer.accelerator.unwrap_model(trainer.model)
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            rank = os.environ["RANK"]
            torch.save(state, os.path.join(os.environ["DUMP_WEIGHTS_DIR"], f"{stage}-rank{rank}.pt"))
            with open(os.path.join(os.environ["DUMP_WEIGHTS_DIR"], f"world-rank{rank}.txt"), "w") as f:
                f.write(f"{trainer.args.world_size} {trainer.args.process_index}")

        def train(self, *args, **kwargs):
            _dump(self, "before")
            result = _train(self, *args, **kwargs)
            _dump(self, "after")
            return result

        transformers.Trainer.train = train
    """
)


@pytest.mark.slow
def test_two_nodes_on_loopback_end_with_identical_encoder_weights(tmp_path: Path):
    hook_dir, dumps = tmp_path / "hook", tmp_path / "weights"
    hook_dir.mkdir()
    dumps.mkdir()
    (hook_dir / "sitecustomize.py").write_text(DUMP_HOOK)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV and k != "CLUSTER_SPEC"}
    procs = []
    for rank in (0, 1):
        node = tmp_path / f"node{rank}"  # each "machine" has its own working dir, outputs and caches
        node.mkdir()
        env = {
            **base,
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "MAX_STEPS": "6",
            "EVAL_STEPS": "6",
            "SAVE_STEPS": "6",
            "BATCH_SIZE": "8",
            "OUTPUT_DIR": str(node / "out"),
            "HF_HOME": str(node / "hf"),
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1",
            "GLOO_SOCKET_IFNAME": "lo",
            "DUMP_WEIGHTS_DIR": str(dumps),
            "PYTHONPATH": os.pathsep.join([str(hook_dir), str(ROOT)]),
        }
        log = (node / "launch.log").open("w")
        procs.append(
            (subprocess.Popen([sys.executable, "-m", "trainer", "launch"], cwd=node, env=env,
                              stdout=log, stderr=subprocess.STDOUT), log, node)
        )
    deadline = time.monotonic() + 420
    for proc, log, _ in procs:
        try:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other, _, _ in procs:
                other.kill()
        log.close()
    outputs = [(node / "launch.log").read_text() for _, _, node in procs]
    for rank, ((proc, _, _), out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"node {rank} failed:\n{out[-4000:]}"
        expected = f"--nnodes=2 --node_rank={rank} --master_addr=127.0.0.1 --master_port={port} --nproc_per_node=1"
        assert expected in out, out[:2000]
    assert (tmp_path / "node0" / "out" / "metrics.json").is_file()

    # One process group of two (so the nodes trained on different shards and synchronised gradients).
    assert [(dumps / f"world-rank{r}.txt").read_text() for r in (0, 1)] == ["2 0", "2 1"]
    before = [torch.load(dumps / f"before-rank{r}.pt") for r in (0, 1)]
    after = [torch.load(dumps / f"after-rank{r}.pt") for r in (0, 1)]
    encoder_keys = [k for k in after[0] if k.startswith("encoder.")]
    assert encoder_keys and set(after[0]) == set(after[1])
    for key in after[0]:
        assert torch.equal(after[0][key], after[1][key]), f"{key} differs between the nodes"
    assert any(not torch.equal(before[0][k], after[0][k]) for k in encoder_keys), "the encoder never changed"
