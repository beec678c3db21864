"""A storage outage during training, then SIGTERM while storage is down: what the bucket holds, what waits
on disk, and how the run ends.

Trains the offline demo (`python -m trainer train`, batch 8, a checkpoint every `--save_steps` steps) against a local
gcp-storage-emulator, with the production retry policy. Once a first checkpoint is committed, the emulator is
stopped for `--outage` seconds and started again (same port, same data). Reports:

- the newest committed step in the bucket vs the training step, `--after` seconds after recovery;
- the staging peak over the whole run: checkpoint folders under OUTPUT_DIR/.gcs-staging, their bytes, and the
  bytes only staging still holds (files whose local checkpoint rotation already deleted: st_nlink == 1);
- the emulator is then stopped again and the run gets SIGTERM: its exit code, the seconds from SIGTERM to
  exit, and its last line.

    .venv/bin/python benchmarks/outage.py [--outage 30] [--after 10] [--save_steps 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gcs_emulator import GcsEmulator  # noqa: E402
from tests.tiny import _SETTING_NAMES  # noqa: E402
from trainer.checkpoints import remote  # noqa: E402
from trainer.layout import STAGING_DIR  # noqa: E402
from trainer.storage import gcs  # noqa: E402

BUCKET = "outage-bench"


class StagingProbe(threading.Thread):
    """Samples OUTPUT_DIR/.gcs-staging every 20 ms; keeps the peaks."""

    def __init__(self, staging: Path) -> None:
        super().__init__(daemon=True)
        self.staging, self.stop = staging, threading.Event()
        self.folders = self.bytes = self.held = 0

    def run(self) -> None:
        while not self.stop.is_set():
            folders = bytes_ = held = 0
            try:
                for folder in self.staging.iterdir():
                    if not folder.is_dir():
                        continue
                    folders += 1
                    for path in folder.rglob("*"):
                        if path.is_file():
                            st = path.stat()
                            bytes_ += st.st_size
                            held += st.st_size if st.st_nlink == 1 else 0
            except OSError:  # a folder removed while we looked
                pass
            self.folders, self.bytes, self.held = (max(self.folders, folders), max(self.bytes, bytes_),
                                                   max(self.held, held))
            time.sleep(0.02)


def steps_done(log: Path) -> int:
    return log.read_text(errors="replace").count("'loss':")


def newest_committed(store: gcs.GcsStore, job: str) -> int | None:
    committed = remote.list_committed_checkpoints(store, gcs.parse_gcs_uri(f"{job}/checkpoints"))
    return committed[-1][0] if committed else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=30.0, help="seconds without storage")
    parser.add_argument("--after", type=float, default=10.0, help="seconds after recovery to compare")
    parser.add_argument("--save_steps", type=int, default=2)
    opts = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="outage-bench-"))
    emulator = GcsEmulator(work / "emulator")
    emulator.start()
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    client = gcs.make_client()
    client.create_bucket(BUCKET)
    store = gcs.GcsStore(client, gcs.GCS_RETRY.with_timeout(5.0))
    job, out, log_path = f"gs://{BUCKET}/job", work / "out", work / "train.log"
    env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OUTPUT_DIR": str(out),
                "JOB_DIR": job, "MAX_STEPS": "1000000", "SAVE_STEPS": str(opts.save_steps), "EVAL_STEPS": "1000000",
                "BATCH_SIZE": "8", "MAX_TRAIN_SAMPLES": "2000", "MAX_EVAL_SAMPLES": "16", "LOGGING_STEPS": "1",
                "SAVE_TOTAL_LIMIT": "3"})
    probe = StagingProbe(out / STAGING_DIR)
    probe.start()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "trainer", "train"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while newest_committed(store, job) is None and time.time() < deadline and proc.poll() is None:
                time.sleep(0.2)
            emulator.stop()
            down_at = steps_done(log_path)
            time.sleep(opts.outage)
            emulator.start()
            up_at = steps_done(log_path)
            time.sleep(opts.after)
            trained, committed = steps_done(log_path), newest_committed(store, job)

            emulator.stop()
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
            seconds = time.monotonic() - signalled
        finally:
            if proc.poll() is None:
                proc.kill()
    probe.stop.set()
    probe.join()
    emulator.start()
    text = log_path.read_text(errors="replace")
    last = [line for line in text.splitlines() if line.startswith(("preempted:", "error:"))]
    print(f"outage of {opts.outage:.0f} s from step {down_at} to step {up_at}, a checkpoint every {opts.save_steps} "
          f"steps")
    print(f"{opts.after:.0f} s after recovery: newest committed step {committed}, training at step {trained}")
    print(f"staging peak: {probe.folders} folders, {probe.bytes / 1e6:.1f} MB "
          f"({probe.held / 1e6:.1f} MB held only by staging)")
    print(f"warnings: {text.count('requests are failing')} 'requests are failing', "
          f"{text.count('reachable again')} 'reachable again'")
    print(f"SIGTERM with storage down: exit {rc} after {seconds:.1f} s")
    print(f"  {last[-1] if last else '(no last line)'}")
    print(f"  newest committed in the bucket afterwards: {newest_committed(store, job)}")
    emulator.stop()


if __name__ == "__main__":
    main()
