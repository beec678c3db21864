"""Run by `torchrun` in test_fsdp.py: train with the settings of the environment. With FSDP_WORKER_KILL=<step>:<saved>,
rank 0 waits at the end of step <step> until checkpoint-<saved> is committed to JOB_DIR, then kill -9s the whole
launch (torchrun and both ranks: the test starts torchrun in its own process group), as a lost spot VM would be.

Every rank appends, for each step, the step's task and the heads whose local shard changed to `heads.rank<N>` in
the working directory (test code: it wraps the Trainer's `compute_loss` in this process only).
"""

import os
import signal
import time

import torch
from transformers import TrainerCallback

from trainer.checkpoints import remote
from trainer.config.env import VertexDirs
from trainer.config.settings import load_settings
from trainer.layout import BucketDirs
from trainer.storage.base import open_store
from trainer.train import train
from trainer.training.trainer import MultitaskTrainer

STEP_TASKS: list[str] = []
_compute_loss = MultitaskTrainer.compute_loss


def _logging_compute_loss(self, model, inputs, *args, **kwargs):
    if model.training:
        STEP_TASKS.append(inputs["task"])
    return _compute_loss(self, model, inputs, *args, **kwargs)


MultitaskTrainer.compute_loss = _logging_compute_loss


class HeadWatch(TrainerCallback):
    """Which task heads' local shards a step changed (the shared encoder is no parameter of a task model)."""

    def __init__(self, path: str):
        self.path, self.before = path, {}

    def _local(self, model):
        return {task: [getattr(p, "_local_tensor", p).detach().clone() for p in head.parameters()]
                for task, head in model.task_models.items()}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.before = self._local(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        after = self._local(model)
        changed = [t for t in after
                   if not all(torch.equal(a, b) for a, b in zip(after[t], self.before[t], strict=True))]
        with open(self.path, "a", encoding="utf-8") as log:
            log.write(f"{STEP_TASKS[-1]} {','.join(changed)}\n")


class KillAfterCommit(TrainerCallback):
    def __init__(self, step: int, saved: int, job_dir: str):
        self.step, self.saved = step, saved
        self.checkpoints = BucketDirs.resolve(job_dir, VertexDirs()).checkpoints

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != self.step:
            return
        store = open_store(self.checkpoints)
        deadline = time.time() + 120
        while time.time() < deadline:
            if any(s >= self.saved for s, _ in remote.list_committed_checkpoints(store, self.checkpoints)):
                break
            time.sleep(0.1)
        os.killpg(os.getpgid(0), signal.SIGKILL)


def main() -> None:
    settings, _ = load_settings(dotenv_path=None)
    callbacks = [HeadWatch(f"heads.rank{os.environ['RANK']}")]
    step, _, saved = os.environ.get("FSDP_WORKER_KILL", "").partition(":")
    if step and os.environ["RANK"] == "0":
        callbacks.append(KillAfterCommit(int(step), int(saved), settings.job_dir))
    train(settings, callbacks=callbacks)


if __name__ == "__main__":
    main()
