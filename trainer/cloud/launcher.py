"""Start training the right way for this machine: one process, torchrun on one node, or torchrun on many.

`python -m trainer launch [train flags...]` is the container's entrypoint. It picks:

- one process (`python -m trainer train`) on a CPU or a single GPU;
- `torchrun --standalone --nproc_per_node=<gpus>` on one machine with several GPUs;
- `torchrun --nnodes/--node_rank/--master_addr/--master_port` on a Vertex AI job with several replicas.

On Vertex AI PyTorch jobs MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK describe the *nodes*
(WORLD_SIZE = replicas, RANK = this replica's index). Without them the topology comes from CLUSTER_SPEC:
workerpool0 is the chief (node 0) and workerpool1 index i is node i + 1. The child never sees the node-level
WORLD_SIZE/RANK: torchrun sets the per-process values, and a single process gets none, so neither
HF Trainer nor accelerate can mistake the node count for the process count.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainer.config.env import parse_int
from trainer.errors import UserError

DEFAULT_MASTER_PORT = 29500
TRAIN_MODULE_ARGS = ("-m", "trainer", "train")

# Rendezvous and rank variables that must not leak from the node level into a training process.
DISTRIBUTED_ENV = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


@dataclass(frozen=True)
class NodeTopology:
    """Where this machine sits in a multi-node job."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    source: str  # "env" or "CLUSTER_SPEC"


def _int_env(environ: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = environ.get(name, "").strip()
    return parse_int(name, raw, minimum) if raw else None


def _parse_cluster_spec(raw: str) -> tuple[int, int, str, int | None]:
    """(nnodes, node_rank, chief host, chief port) from Vertex AI's CLUSTER_SPEC JSON."""
    try:
        spec = json.loads(raw)
        cluster = spec["cluster"]
        task = spec["task"]
        chief = list(cluster["workerpool0"])
        workers = list(cluster.get("workerpool1", []))
        task_type, index = str(task["type"]), int(task.get("index", 0))
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"CLUSTER_SPEC is not valid Vertex AI cluster JSON ({err!s}); expected "
            '{"cluster": {"workerpool0": ["host:port"], ...}, "task": {"type": "workerpool0", "index": 0}}'
        ) from None
    if len(chief) != 1:
        raise UserError(f"CLUSTER_SPEC workerpool0 has {len(chief)} replicas; the chief pool must have exactly 1")
    if task_type == "workerpool0":
        node_rank = 0
    elif task_type == "workerpool1" and 0 <= index < len(workers):
        node_rank = index + 1
    else:
        raise UserError(
            f"CLUSTER_SPEC task {task_type}[{index}] is not a training node; "
            "this launcher runs on workerpool0 (chief) and workerpool1 (workers)"
        )
    host, _, port = chief[0].rpartition(":")
    if not host:
        host, port = chief[0], ""
    return 1 + len(workers), node_rank, host, int(port) if port.isdigit() else None


def node_topology(environ: Mapping[str, str]) -> NodeTopology | None:
    """The multi-node layout from MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK, else CLUSTER_SPEC; None for one node.

    WORLD_SIZE and RANK here count nodes (Vertex AI's meaning), not processes.
    """
    nnodes = _int_env(environ, "WORLD_SIZE", 1)
    node_rank = _int_env(environ, "RANK", 0)
    master_addr = environ.get("MASTER_ADDR", "").strip()
    master_port = _int_env(environ, "MASTER_PORT", 1)
    source = "env"
    if nnodes is None and environ.get("CLUSTER_SPEC", "").strip():
        nnodes, node_rank, chief_host, chief_port = _parse_cluster_spec(environ["CLUSTER_SPEC"])
        master_addr = master_addr or chief_host
        master_port = master_port or chief_port
        source = "CLUSTER_SPEC"
    if nnodes is None or nnodes == 1:
        return None
    if node_rank is None:
        raise UserError(f"WORLD_SIZE={nnodes} nodes but RANK (this node's index, 0..{nnodes - 1}) is not set")
    if node_rank >= nnodes:
        raise UserError(f"RANK={node_rank} is out of range for WORLD_SIZE={nnodes} nodes; use 0..{nnodes - 1}")
    if not master_addr:
        raise UserError(f"WORLD_SIZE={nnodes} nodes but MASTER_ADDR (the chief's address) is not set")
    if master_port is not None and master_port > 65535:
        raise UserError(f"MASTER_PORT={master_port} is not a TCP port (1..65535)")
    return NodeTopology(nnodes, node_rank, master_addr, master_port or DEFAULT_MASTER_PORT, source)


def _torchrun(python: str) -> list[str]:
    """The torchrun script next to `python`, else `python -m torch.distributed.run` (the same program).

    Never a torchrun found elsewhere on PATH: it may belong to another interpreter (the CUDA image's conda
    Python), and its workers would start without this environment's packages.
    """
    sibling = Path(python).parent / "torchrun"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return [str(sibling)]
    return [python, "-m", "torch.distributed.run"]


def build_launch_command(
    environ: Mapping[str, str],
    gpu_count: int,
    train_args: Sequence[str] = (),
    python: str = sys.executable,
) -> tuple[list[str], dict[str, str]]:
    """The command that starts training here, and the environment to start it with.

    `gpu_count` is the number of visible GPUs (0 on CPU). NPROC_PER_NODE, when set, overrides the
    processes per node (e.g. 2 CPU processes with gloo).
    """
    child_env = {k: v for k, v in environ.items() if k not in DISTRIBUTED_ENV}
    train = [*TRAIN_MODULE_ARGS, *train_args]
    if environ.get("TORCHELASTIC_RUN_ID") or environ.get("LOCAL_RANK"):
        # Already a torchrun worker (someone ran torchrun ... -m trainer launch): its ranks are per process.
        return [python, *train], dict(environ)
    nproc = _int_env(environ, "NPROC_PER_NODE", 1) or max(1, gpu_count)
    topology = node_topology(environ)
    if topology is None and nproc == 1:
        return [python, *train], child_env
    argv = _torchrun(python)
    if topology is None:
        argv += ["--standalone", f"--nproc_per_node={nproc}"]
    else:
        argv += [
            f"--nnodes={topology.nnodes}",
            f"--node_rank={topology.node_rank}",
            f"--master_addr={topology.master_addr}",
            f"--master_port={topology.master_port}",
            f"--nproc_per_node={nproc}",
        ]
    return [*argv, *train], child_env


def describe_launch(environ: Mapping[str, str], gpu_count: int) -> str:
    """One line saying which case applies, for the log."""
    devices = f"{gpu_count} GPU(s)" if gpu_count else "CPU"
    topology = node_topology(environ)
    if topology is None:
        return f"1 node, {devices}"
    return (
        f"node {topology.node_rank} of {topology.nnodes} (from {topology.source}), {devices}, "
        f"rendezvous {topology.master_addr}:{topology.master_port}"
    )


def detect_gpu_count() -> int:
    """Visible CUDA devices (honours CUDA_VISIBLE_DEVICES); 0 without torch or CUDA."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver must not stop a CPU run
        return 0


def launch(extra_args: Sequence[str] = ()) -> int:
    """Print the command, run it, forward SIGTERM/SIGINT (Vertex preemption) and return its exit code.

    `extra_args` are passed on to `python -m trainer train` unchanged, e.g. ["--max_steps=10"].
    """
    environ = dict(os.environ)
    gpus = detect_gpu_count()
    argv, child_env = build_launch_command(environ, gpus, [str(a) for a in extra_args])
    print(f"[launch] {describe_launch(environ, gpus)}", flush=True)
    print(f"[launch] {shlex.join(argv)}", flush=True)
    process = subprocess.Popen(argv, env=child_env)

    def forward(signum: int, _frame: object) -> None:
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
