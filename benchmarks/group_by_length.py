"""Does length grouping cost accuracy? GROUP_BY_LENGTH on vs off, the same steps, several seeds.

Trains the MiniLM in ../shared/models/all-MiniLM-L6-v2 on STS-B + RTE + MRPC through the project's
`train()`, once grouped and once not per seed (the pairs share the seed: the same head init, the same
MAX_TRAIN_SAMPLES rows, the same task order), and prints each task's main dev metric as mean ± std over
the seeds, the average, and the wall time per run:

    .venv/bin/python benchmarks/group_by_length.py [--seeds 1,2,3] [--steps 250] [--train_samples 0] [--threads 1]

Every finished run is appended to --results (JSON lines), so a long comparison can be read while it goes,
and `--table_only` prints the table from that file without training. `--window F` sorts within windows of
F global batches instead of the sampler's MEGABATCH_FACTOR (for finding a window that costs nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from trainer.config.settings import load_settings  # noqa: E402
from trainer.sampling import sampler  # noqa: E402
from trainer.train import train  # noqa: E402
from trainer.training.metrics import RunMetrics  # noqa: E402

TASKS = ("stsb", "rte", "mrpc")


class StepClock(TrainerCallback):
    """Wall time spent in training steps (evaluation and saving excluded)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._start


def run(grouped: bool, seed: int, opts: argparse.Namespace, work: Path) -> dict:
    flags = {"model_name": opts.model, "data_dir": opts.data_dir, "tasks": ",".join(TASKS), "seed": seed,
             "group_by_length": grouped, "max_steps": opts.steps, "eval_steps": opts.steps,
             "save_steps": opts.steps, "batch_size": opts.batch_size, "learning_rate": opts.learning_rate,
             "max_train_samples": opts.train_samples or None, "max_eval_samples": opts.eval_samples,
             "output_dir": str(work / f"{'grouped' if grouped else 'plain'}-{seed}"), "report_to": "none",
             "save_total_limit": 1}
    settings, _ = load_settings(flags, environ={}, dotenv_path=None)
    clock = StepClock()
    start = time.perf_counter()
    run_metrics = RunMetrics.from_dict(train(settings, callbacks=[clock]))
    wall = time.perf_counter() - start
    main = {t: run_metrics.tasks[t][run_metrics.main_metric[t]] for t in TASKS}
    return {"grouped": grouped, "seed": seed, "steps": opts.steps, "window": sampler.MEGABATCH_FACTOR,
            "main": main, "average": run_metrics.average, "wall_s": round(wall, 1), "train_s": round(clock.seconds, 1)}


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def table(results: list[dict]) -> str:
    lines = ["| mode | runs | " + " | ".join(TASKS) + " | average | train s/run | wall s/run |",
             "|---|---|" + "---|" * (len(TASKS) + 3)]
    for grouped in (False, True):
        rows = [r for r in results if r["grouped"] == grouped]
        if not rows:
            continue
        mode = f"grouped (window {rows[0]['window']})" if grouped else "not grouped"
        cells = [mean_std([r["main"][t] for r in rows]) for t in TASKS] + [mean_std([r["average"] for r in rows])]
        cells += [f"{statistics.mean(r[k] for r in rows):.0f}" for k in ("train_s", "wall_s")]
        lines.append(f"| {mode} | {len(rows)} | " + " | ".join(cells) + " |")
    pairs = {(r["seed"], r["grouped"]): r for r in results}
    diffs = [pairs[(s, True)]["average"] - pairs[(s, False)]["average"] for s, g in pairs if g and (s, False) in pairs]
    if diffs:
        lines.append(f"\npaired difference of the average (grouped - not), per seed: "
                     f"{', '.join(f'{d:+.4f}' for d in diffs)}; mean {statistics.mean(diffs):+.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--train_samples", type=int, default=0,
                        help="MAX_TRAIN_SAMPLES per task (0: the whole split)")
    parser.add_argument("--eval_samples", type=int, default=500, help="MAX_EVAL_SAMPLES per task")
    parser.add_argument("--window", type=int, default=None, help="global batches per sorting window")
    parser.add_argument("--results", default=str(ROOT / "outputs" / "group_by_length.jsonl"))
    parser.add_argument("--table_only", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 keeps a shared machine's load from stalling every step)")
    opts = parser.parse_args()
    results_file = Path(opts.results)
    torch.set_num_threads(opts.threads)
    if opts.window:
        sampler.MEGABATCH_FACTOR = opts.window
    if not opts.table_only:
        results_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            for seed in (int(s) for s in opts.seeds.split(",")):
                for grouped in (True, False):
                    result = run(grouped, seed, opts, Path(tmp))
                    print("result:", json.dumps(result), flush=True)
                    with results_file.open("a") as f:
                        f.write(json.dumps(result) + "\n")
    results = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
    print(f"\n{opts.steps} steps, batch {opts.batch_size}, LR {opts.learning_rate:g}, MAX_TRAIN_SAMPLES "
          f"{opts.train_samples}, MAX_EVAL_SAMPLES {opts.eval_samples}; main dev metric mean ± std over seeds:\n")
    print(table(results))


if __name__ == "__main__":
    main()
