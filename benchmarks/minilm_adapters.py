"""Full fine-tuning vs one LoRA adapter vs one adapter per task, on a real pretrained encoder and real data.

STS-B + RTE + MRPC (../shared/data) on ../shared/models/all-MiniLM-L6-v2 (22.7 M parameters), with the same steps,
batches and examples in every run. Each mode is trained at each of three learning rates (a short sweep); the table
shows each mode at its best rate (by the final eval_average), per task: the dev metric of the final weights and of
the step SELECT_BEST=per_task chose.

    .venv/bin/python benchmarks/minilm_adapters.py [--steps 600] [--batch_size 16]

Prints a Markdown table (the README's "Adapters (LoRA)" section holds the one recorded).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import TrainerCallback  # noqa: E402

from trainer.config.settings import load_settings  # noqa: E402
from trainer.train import train  # noqa: E402
from trainer.training.metrics import RunMetrics, read_run_metrics  # noqa: E402

SHARED = ROOT.parent / "shared"
TASKS = ("stsb", "rte", "mrpc")
# Full fine-tuning's usual range for a small BERT, and LoRA's (which trains few weights from zero: about 10x).
SWEEP = {"none": (3e-5, 1e-4, 3e-4), "lora": (3e-4, 1e-3, 3e-3), "lora_per_task": (3e-4, 1e-3, 3e-3)}


class CountTrainable(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)


def run(adapter: str, rate: float, opts: argparse.Namespace, out: Path) -> tuple[RunMetrics, int, float]:
    flags = {"model_name": opts.model, "data_dir": str(SHARED / "data"), "tasks": ",".join(TASKS),
             "output_dir": str(out), "max_steps": opts.steps, "batch_size": opts.batch_size,
             "max_seq_length": opts.max_seq_length, "eval_steps": opts.steps // 6, "save_steps": opts.steps // 6,
             "sampling": "proportional", "adapter": adapter, "seed": opts.seed,
             "save_total_limit": 1, "select_best": "per_task", "max_eval_samples": opts.max_eval_samples}
    flags["adapter_learning_rate" if adapter != "none" else "learning_rate"] = rate
    settings, _ = load_settings(flags, environ={}, dotenv_path=None)
    started = time.perf_counter()
    count = CountTrainable()
    train(settings, callbacks=[count])
    return read_run_metrics(out / "metrics.json"), count.trainable, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max_eval_samples", type=int, default=None, help="cap each dev split (default: all of it)")
    opts = parser.parse_args()
    best: dict[str, tuple[float, RunMetrics, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for adapter, rates in SWEEP.items():
            for rate in rates:
                metrics, trainable, seconds = run(adapter, rate, opts, Path(tmp) / f"{adapter}-{rate:g}")
                print(f"{adapter:<14} lr {rate:<7g} eval_average {metrics.average:.4f} ({seconds:.0f} s)", flush=True)
                if adapter not in best or metrics.average > best[adapter][1].average:
                    best[adapter] = (rate, metrics, trainable)

    print(f"\n{opts.steps} steps, batch {opts.batch_size}, {opts.max_seq_length} tokens, seed {opts.seed}; each mode "
          "at its best learning rate of three; dev = final weights, selected = the step SELECT_BEST=per_task chose\n")
    header = " | ".join(f"{t} ({best['none'][1].main_metric[t]}) dev / selected" for t in TASKS)
    print(f"| mode | learning rate | trainable | {header} | eval_average |")
    print("|---|---|---|" + "---|" * len(TASKS) + "---|")
    for adapter, (rate, metrics, trainable) in best.items():
        cells = []
        for task in TASKS:
            key = metrics.main_metric[task]
            cells.append(f"{metrics.tasks[task][key]:.4f} / {metrics.selected[task].metrics[key]:.4f}")
        print(f"| {adapter} | {rate:g} | {trainable:,} | {' | '.join(cells)} | {metrics.average:.4f} |")


if __name__ == "__main__":
    main()
