"""Training throughput while checkpoints (and logs) upload to GCS: none vs our async upload, with and
without TensorBoard log streaming, vs a blocking one.

Runs three short trainings of a real encoder (default: ../shared/models/all-MiniLM-L6-v2, 22.7 M
parameters, so each checkpoint with its AdamW state is ~270 MB) in one process against a local
gcp-storage-emulator, and prints steps/s side by side with the ratios. Targets: async/none >= 0.95, and
logs/async within noise of 1 (`logs` streams the event files every second, logging every step: far more
often than the default LOG_UPLOAD_SECONDS=60).

    .venv/bin/python benchmarks/checkpoint_upload.py [--steps 60] [--save_steps 20] [--rounds 2]

The modes run interleaved (none, async, logs, blocking, none, ...) after an unmeasured warm-up run,
so drift in machine load hits all three alike; steps/s is total steps over total step time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from tests.gcs_emulator import GcsEmulator  # noqa: E402
from trainer.checkpoints import remote  # noqa: E402
from trainer.checkpoints.mirror import CloudSyncCallback  # noqa: E402
from trainer.config.env import VertexDirs  # noqa: E402
from trainer.config.settings import load_settings  # noqa: E402
from trainer.layout import BucketDirs, RunDirs  # noqa: E402
from trainer.storage import gcs  # noqa: E402
from trainer.storage.gcs import GcsStore  # noqa: E402
from trainer.train import train  # noqa: E402


class StepClock(TrainerCallback):
    """Wall time from the first to the last optimizer step (excludes the final wait for uploads)."""

    def __init__(self):
        self.first = self.last = None
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.first = self.first or now
        self.last = now
        self.steps += 1


class BlockingUpload(TrainerCallback):
    """The seed's way: upload the checkpoint inside on_save, so training waits for it."""

    def __init__(self, dirs: BucketDirs):
        self.dirs = dirs
        self.client = gcs.make_client()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            local = RunDirs(args.output_dir).checkpoint(state.global_step)
            remote.upload_checkpoint(GcsStore(self.client), local, self.dirs.checkpoints, state.global_step)


def run(mode: str, base: dict, work: Path) -> tuple[int, float]:
    out = work / mode
    dirs = BucketDirs.resolve(f"gs://bench-bucket/{mode}", VertexDirs())
    clock = StepClock()
    streaming = CloudSyncCallback(dirs, log_dir=out / "logs", log_upload_seconds=1.0) if mode == "logs" else None
    extra = {"none": [], "async": [CloudSyncCallback(dirs)], "logs": [streaming],
             "blocking": [BlockingUpload(dirs)]}[mode]
    settings, _ = load_settings({**base, "output_dir": str(out), "logging_steps": 1}, environ={}, dotenv_path=None)
    train(settings, callbacks=[clock, *extra])
    shutil.rmtree(out, ignore_errors=True)
    return clock.steps - 1, clock.last - clock.first


def isolate_server(server_pid: int, cores: str) -> None:
    """Model a remote storage server on a small machine.

    In production GCS is another machine; here the emulator would take CPU from training
    and measure *its* cost, not ours. With `--cores split` (the default on machines with
    2+ cores) training and our upload thread share the first core and the emulator gets the
    rest, so what the ratio shows is the cost on the training side only.
    """
    available = sorted(os.sched_getaffinity(0))
    if cores != "split" or len(available) < 2:
        return
    os.sched_setaffinity(0, {available[0]})
    os.sched_setaffinity(server_pid, set(available[1:]))
    torch.set_num_threads(1)
    print(f"training + upload thread on core {available[0]}, storage server on {available[1:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--save_steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cores", choices=("split", "shared"), default="split",
                        help="split: the storage server gets its own core(s); shared: it competes with training")
    opts = parser.parse_args()
    base = {"model_name": opts.model, "data_dir": opts.data_dir, "tasks": "stsb,rte", "max_steps": opts.steps,
            "save_steps": opts.save_steps, "eval_steps": 10**6, "batch_size": opts.batch_size,
            "max_train_samples": 2000, "max_eval_samples": 32, "save_total_limit": 2,
            "max_seq_length": opts.max_seq_length}
    with tempfile.TemporaryDirectory() as tmp:
        emulator = GcsEmulator(Path(tmp) / "gcs")
        emulator.start()
        isolate_server(emulator._proc.pid, opts.cores)
        os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
        try:
            gcs.make_client().create_bucket("bench-bucket")
            run("none", {**base, "max_steps": opts.save_steps}, Path(tmp) / "warmup")
            totals = {mode: [0, 0.0] for mode in ("none", "async", "logs", "blocking")}
            for _ in range(opts.rounds):
                for mode, total in totals.items():
                    steps, seconds = run(mode, base, Path(tmp))
                    total[0] += steps
                    total[1] += seconds
            rates = {mode: steps / seconds for mode, (steps, seconds) in totals.items()}
        finally:
            emulator.stop()
    ckpt_note = (f"cores {opts.cores}; {opts.rounds} x {opts.steps} steps per mode, "
                 f"a checkpoint every {opts.save_steps}, batch {opts.batch_size}, {opts.max_seq_length} tokens")
    print(f"\nsteps/s ({ckpt_note}):")
    for mode, rate in rates.items():
        print(f"  {mode:<9} {rate:7.3f}")
    print(f"ratio async/none    = {rates['async'] / rates['none']:.3f}  (target >= 0.95)")
    print(f"ratio logs/async    = {rates['logs'] / rates['async']:.3f}  (target: within noise of 1)")
    print(f"ratio blocking/none = {rates['blocking'] / rates['none']:.3f}")


if __name__ == "__main__":
    main()
