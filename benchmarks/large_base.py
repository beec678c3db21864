"""Large shared bases: full fine-tuning vs one LoRA adapter vs one adapter per task, each with and without
gradient checkpointing, on a Llama-architecture base with random weights.

For each mode it prints the trainable parameters, the peak memory of training and of the whole run (with the
exports and the commit; RSS on CPU, `max_memory_allocated` on a GPU), the bytes of one checkpoint on disk, the
seconds to upload and commit that checkpoint to a local gcp-storage-emulator, and steps/s; then the ratios against
full fine-tuning. Targets: a `lora_per_task` checkpoint at most 1 % of the full one and committed at least 50x
faster; training's peak memory at most 60 % of full fine-tuning's; steps/s at least full fine-tuning's.

    .venv/bin/python benchmarks/large_base.py [--steps 6] [--config cpu|1b|8b|FILE.json] [--batch_size 4]

Three tasks at real lengths: STS-B (regression) and RTE (classification) from ../shared/data, and a causal LM on
WikiText-2 (its lines packed into MAX_SEQ_LENGTH blocks). Each mode trains in its own process (so its peak memory
is its own) through `python -m trainer train`'s code path, with the tokenizer of ../shared/models/all-MiniLM-L6-v2
(any tokenizer does for random weights). The first step of each run (allocation, warm-up) is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"
TOKENIZER = SHARED / "models" / "all-MiniLM-L6-v2"
MODES = [(adapter, checkpointing) for adapter in ("none", "lora", "lora_per_task") for checkpointing in (False, True)]

# Llama shapes. cpu: about 300 M parameters, what 2 cores and 24 GB train in minutes (but the emulator takes
# many minutes to take in its ~6 GB full checkpoint); cpu-small: about 100 M; 1b and 8b: Llama 3.2 1B and
# Llama 3.1 8B (for a GPU). The LM head is tied to the embeddings, as in Llama 3.2, so it stays frozen with LoRA.
CONFIGS = {
    "cpu": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 20, "num_attention_heads": 16,
            "num_key_value_heads": 8},
    "cpu-small": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "num_key_value_heads": 4},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8},
}

TASKS_YAML = """\
tasks:
  - name: wikitext_lm
    type: causal_lm
    train_file: {data}/wikitext2/valid.txt
    dev_file: {data}/wikitext2/test.txt
"""


def build_base(directory: Path, config_name: str) -> int:
    """A Llama base with random weights and a real tokenizer, saved as a model directory; its parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    shape = CONFIGS.get(config_name) or json.loads(Path(config_name).read_text())
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id, **shape)
    torch.manual_seed(0)
    model = LlamaModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def peak_memory() -> int:
    """The process's peak so far: `max_memory_allocated` on a GPU, else the peak RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(opts: argparse.Namespace) -> None:
    """One mode's run, in this process: train, then upload and commit the last checkpoint; print one JSON line."""
    from transformers import TrainerCallback

    from trainer.checkpoints import remote
    from trainer.config.env import VertexDirs
    from trainer.config.settings import load_settings
    from trainer.layout import BucketDirs, RunDirs
    from trainer.storage import gcs
    from trainer.storage.gcs import GcsStore
    from trainer.train import train

    class Probe(TrainerCallback):
        """Step times after the first step, and the trainable parameters the Trainer's model holds."""

        def __init__(self) -> None:
            self.first = self.last = None
            self.steps = 0
            self.trainable = 0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

        def on_train_end(self, args, state, control, **kwargs):
            self.train_peak = peak_memory()  # training's peak, before the exports and the commit below

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.first = self.first or now
            self.last = now
            self.steps += 1

    out = Path(opts.work) / f"{opts.adapter}-{int(opts.checkpointing)}"
    flags = {"model_name": opts.base, "data_dir": str(SHARED / "data"), "tasks_file": opts.tasks_file,
             "tasks": "stsb,rte,wikitext_lm", "output_dir": str(out), "max_steps": opts.steps,
             "save_steps": opts.steps, "eval_steps": 10**6, "batch_size": opts.batch_size,
             "max_seq_length": opts.max_seq_length, "max_train_samples": 64 * opts.steps, "max_eval_samples": 8,
             "sampling": "round_robin", "adapter": opts.adapter,
             "gradient_checkpointing": opts.checkpointing, "save_total_limit": 1, "export_merged": False}
    settings, _ = load_settings(flags, environ={}, dotenv_path=None)
    probe = Probe()
    train(settings, callbacks=[probe])
    checkpoint = RunDirs(out).checkpoint(opts.steps)
    files = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in checkpoint.rglob("*") if p.is_file()}
    size = sum(files.values())  # on disk: best/ holds hard links to the selected steps' files
    upload = None  # gradient checkpointing changes no byte of a checkpoint: its commit is timed without it
    if not opts.checkpointing:
        dirs = BucketDirs.resolve(f"gs://bench-bucket/{out.name}", VertexDirs())
        started = time.perf_counter()
        remote.upload_checkpoint(GcsStore(gcs.make_client()), checkpoint, dirs.checkpoints, opts.steps)
        upload = time.perf_counter() - started
    print("RESULT " + json.dumps({"trainable": probe.trainable, "peak": probe.train_peak, "run_peak": peak_memory(),
                                  "checkpoint": size, "upload": upload,
                                  "steps_per_s": (probe.steps - 1) / (probe.last - probe.first)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu",
                        help="cpu (~300 M), cpu-small (~100 M), 1b, 8b, or a JSON file of LlamaConfig shapes")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_seq_length", type=int, default=256)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("base", "work", "tasks_file", "adapter"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", type=int, default=0, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        return child(opts)

    from tests.gcs_emulator import GcsEmulator
    from trainer.storage import gcs

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params = build_base(work / "base", opts.config)
        tasks_file = work / "tasks.yaml"
        tasks_file.write_text(TASKS_YAML.format(data=SHARED / "data"), encoding="utf-8")
        emulator = GcsEmulator(work / "gcs")
        emulator.start()
        env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator.url, "TRANSFORMERS_VERBOSITY": "error"}
        results = {}
        try:
            os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
            gcs.make_client().create_bucket("bench-bucket")
            for adapter, checkpointing in MODES:
                command = [sys.executable, __file__, "--child", "--base", str(work / "base"), "--work", str(work),
                           "--tasks_file", str(tasks_file), "--adapter", adapter,
                           "--checkpointing", str(int(checkpointing)), "--steps", str(opts.steps),
                           "--batch_size", str(opts.batch_size), "--max_seq_length", str(opts.max_seq_length)]
                done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
                line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if done.returncode or not line:
                    sys.exit(f"{adapter} (checkpointing={checkpointing}) failed:\n{done.stderr[-3000:]}")
                results[(adapter, checkpointing)] = json.loads(line[-1][len("RESULT "):])
        finally:
            emulator.stop()

    print(f"\nLlama base '{opts.config}': {params / 1e6:.0f} M parameters; {opts.steps} steps per mode (first not "
          f"timed), batch {opts.batch_size}, up to {opts.max_seq_length} tokens; tasks stsb, rte, wikitext_lm")
    print(f"{'mode':<24} {'trainable':>12} {'train peak MB':>14} {'run peak MB':>12} {'ckpt MB':>9} "
          f"{'commit s':>9} {'steps/s':>8}")
    for (adapter, checkpointing), r in results.items():
        mode = adapter + (" + grad ckpt" if checkpointing else "")
        commit = "as above" if r["upload"] is None else f"{r['upload']:.2f}"
        print(f"{mode:<24} {r['trainable']:>12,} {r['peak'] / 2**20:>14.0f} {r['run_peak'] / 2**20:>12.0f} "
              f"{r['checkpoint'] / 1e6:>9.2f} {commit:>9} {r['steps_per_s']:>8.3f}")
    full = results[("none", False)]
    for adapter in ("lora", "lora_per_task"):
        r = results[(adapter, False)]
        speed = r["steps_per_s"] / full["steps_per_s"]
        print(f"{adapter}: checkpoint {r['checkpoint'] / full['checkpoint']:.4f} of full (target <= 0.01 for "
              f"lora_per_task); commit {full['upload'] / r['upload']:.0f}x faster (target >= 50); peak memory "
              f"{r['peak'] / full['peak']:.2f} of full (target <= 0.60); steps/s {speed:.2f}x full (target >= 1)")


if __name__ == "__main__":
    main()
