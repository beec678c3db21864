"""Run by `torchrun` in test_ddp.py: train, then dump this rank's encoder weights and the task of every step.

The task log is test code: it wraps the Trainer's `compute_loss` in this process only. With
DDP_WORKER_SIGTERM=<rank>:<step>, that rank sends itself SIGTERM at the end of that step (a preemption that
reaches one rank only); the worker then records the step each rank stopped at. With DDP_WORKER_OWNERS=1 it also
records, after every step, a digest of each owner's parameters (each task's adapter and head, the base: `owner`).
"""

import hashlib
import json
import logging
import os
import signal
import sys

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from trainer.config.settings import load_settings
from trainer.train import train
from trainer.training.preemption import Preempted
from trainer.training.trainer import MultitaskTrainer

STEP_TASKS: list[str] = []
FIND_UNUSED: set = set()  # the DDP wrapper's find_unused_parameters, as seen in every step
_compute_loss = MultitaskTrainer.compute_loss


def _logging_compute_loss(self, model, inputs, *args, **kwargs):
    if model.training:
        STEP_TASKS.append("+".join(inputs["batches"]) if "batches" in inputs else inputs["task"])
        FIND_UNUSED.add(getattr(model, "find_unused_parameters", None))
    return _compute_loss(self, model, inputs, *args, **kwargs)


MultitaskTrainer.compute_loss = _logging_compute_loss


class KeepEncoder(TrainerCallback):
    """Keep copies of the shared encoder's weights at the start and the end of training."""

    def __init__(self):
        self.states = {}

    def _copy(self, key, model):
        self.states[key] = {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._copy("initial", model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._copy("final", model)
        self.states["world_size"] = dist.get_world_size() if dist.is_initialized() else 1


def owner(name: str) -> str:
    """Whose a parameter is: a task (its LoRA adapter, named after it, or its head), the base, or the weighting."""
    parts = name.split(".")
    for kind in ("lora_A", "lora_B"):
        if kind in parts:
            return parts[parts.index(kind) + 1]
    if parts[0] == "task_models":
        return parts[1]
    return "base" if parts[0] == "encoder" else parts[0]


class OwnerDigests(TrainerCallback):
    """At the start and after every step, a digest of each owner's parameters (bytes, in parameter order)."""

    def __init__(self):
        self.steps: list[dict[str, str]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.on_step_end(args, state, control, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        digests: dict[str, hashlib._Hash] = {}
        for name, param in model.named_parameters():
            data = param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            digests.setdefault(owner(name), hashlib.sha256()).update(data)
        self.steps.append({k: v.hexdigest() for k, v in digests.items()})


class SigtermAt(TrainerCallback):
    """Send this process SIGTERM at the end of one step (after the preemption check of that step)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def main(out_dir: str) -> None:
    logging.basicConfig(level=logging.INFO)  # as `python -m trainer` does: the epoch's steps per task are a log line
    keep = KeepEncoder()
    settings, _ = load_settings(dotenv_path=None)
    callbacks = [keep]
    rank, _, step = os.environ.get("DDP_WORKER_SIGTERM", "").partition(":")
    if rank == os.environ["RANK"]:
        callbacks.append(SigtermAt(int(step)))
    digests = OwnerDigests()
    if os.environ.get("DDP_WORKER_OWNERS"):
        callbacks.append(digests)
    try:
        train(settings, callbacks=callbacks)
    except Preempted as stopped:
        with open(os.path.join(out_dir, f"preempted.rank{os.environ['RANK']}"), "w", encoding="utf-8") as log:
            log.write(str(stopped))
    torch.save(keep.states, os.path.join(out_dir, f"encoder.rank{os.environ['RANK']}.pt"))
    with open(os.path.join(out_dir, f"tasks.rank{os.environ['RANK']}"), "w", encoding="utf-8") as log:
        log.write("\n".join(STEP_TASKS) + "\n")
    with open(os.path.join(out_dir, f"find_unused.rank{os.environ['RANK']}"), "w", encoding="utf-8") as log:
        log.write(",".join(map(str, sorted(FIND_UNUSED, key=str))))
    if digests.steps:
        with open(os.path.join(out_dir, f"owners.rank{os.environ['RANK']}.json"), "w", encoding="utf-8") as log:
            json.dump(digests.steps, log)


if __name__ == "__main__":
    main(sys.argv[1])
