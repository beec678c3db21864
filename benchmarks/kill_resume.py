"""kill -9 at random points, resume with RESUME=auto from the bucket: steps lost per kill, and whether the final
model is bit-equal to an uninterrupted run.

One training job (`python -m trainer train`, a tiny BERT with dropout, so the RNG state must be restored too)
with JOB_DIR on a local gcp-storage-emulator is SIGKILLed at `--kills` steps drawn with `--seed`. After each
kill it is started again on a fresh, empty OUTPUT_DIR (a new machine: everything comes from the bucket) with
RESUME=auto, and the last start runs to the end. Its model is compared with an uninterrupted run's.

    .venv/bin/python benchmarks/kill_resume.py [--kills 5] [--seed 0] [--steps 60] [--save_steps 10]

Per kill it prints the step trained when the kill landed, the checkpoint the next start resumed from, and the
difference (steps lost: those since the newest *committed* checkpoint).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tests.gcs_emulator import GcsEmulator  # noqa: E402
from tests.test_gcs_training import _steps_done, _train_process  # noqa: E402
from tests.tiny import run_cli, save_tiny_pretrained  # noqa: E402

BUCKET = "kill-bench"


def resumed_from(log: Path) -> int:
    """The step the start resumed from (0: from scratch), from its log."""
    found = re.findall(r"resuming from \S*checkpoint-(\d+)", log.read_text(errors="replace"))
    return int(found[-1]) if found else 0


def bit_equal(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--save_steps", type=int, default=10)
    opts = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    emulator = GcsEmulator(work / "gcs")
    emulator.start()
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    try:
        from trainer.storage.gcs import make_client

        make_client().create_bucket(BUCKET)
        model = save_tiny_pretrained(work / "tiny")
        common = {"MODEL_NAME": str(model), "MAX_STEPS": str(opts.steps), "SAVE_STEPS": str(opts.save_steps),
                  "BATCH_SIZE": "16", "MAX_TRAIN_SAMPLES": "400", "MAX_EVAL_SAMPLES": "16", "EVAL_STEPS": "30",
                  "SEED": "5", "LOGGING_STEPS": "1", "LOG_UPLOAD_SECONDS": "5", "STORAGE_EMULATOR_HOST": emulator.url}
        straight = run_cli("train", env={**common, "OUTPUT_DIR": str(work / "straight")})
        assert straight.returncode == 0, straight.stderr[-3000:]

        rng = random.Random(opts.seed)
        kill_at = sorted(rng.sample(range(3, opts.steps - 2), opts.kills))
        job = f"gs://{BUCKET}/job"
        rows = []
        for attempt in range(opts.kills + 1):
            out, log_path = work / f"start{attempt}", work / f"start{attempt}.log"
            env = {**common, "OUTPUT_DIR": str(out), "JOB_DIR": job, "RESUME": "auto", "PYTHONUNBUFFERED": "1"}
            with open(log_path, "w") as log:
                proc = _train_process(env, log)
                if attempt < opts.kills:
                    while proc.poll() is None and resumed_from(log_path) + _steps_done(log_path) < kill_at[attempt]:
                        time.sleep(0.02)
                    proc.send_signal(signal.SIGKILL)
                rc = proc.wait()
            start = resumed_from(log_path)
            if attempt:
                rows[-1]["resumed"] = start
            if attempt < opts.kills:
                rows.append({"kill": attempt + 1, "at": start + _steps_done(log_path), "rc": rc})
            else:
                assert rc == 0, log_path.read_text()[-3000:]
                final = out
        print(f"{opts.kills} kills at steps {kill_at} of {opts.steps} (SAVE_STEPS={opts.save_steps}, seed {opts.seed})")
        print("| kill | killed at step | resumed from | steps lost |")
        print("|---|---|---|---|")
        for row in rows:
            start = f"checkpoint-{row['resumed']}" if row["resumed"] else "the start (none committed yet)"
            print(f"| {row['kill']} | {row['at']} | {start} | {row['at'] - row['resumed']} |")
        print(f"final model bit-equal to the uninterrupted run: {bit_equal(work / 'straight', final)}")
    finally:
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
