"""Run by `torchrun` in test_fsdp.py: train with the settings of the environment. With FSDP_WORKER_KILL=<step>:<saved>,
rank 0 waits at the end of step <step> until checkpoint-<saved> is committed to JOB_DIR, then kill -9s the whole
launch (torchrun and both ranks: the test starts torchrun in its own process group), as a lost spot VM would be.
"""

import os
import signal
import time

from transformers import TrainerCallback

from trainer.checkpoints import remote
from trainer.config.env import VertexDirs
from trainer.config.settings import load_settings
from trainer.layout import BucketDirs
from trainer.storage.base import open_store
from trainer.train import train


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
    callbacks = []
    step, _, saved = os.environ.get("FSDP_WORKER_KILL", "").partition(":")
    if step and os.environ["RANK"] == "0":
        callbacks.append(KillAfterCommit(int(step), int(saved), settings.job_dir))
    train(settings, callbacks=callbacks)


if __name__ == "__main__":
    main()
