"""Large shared bases: full fine-tuning vs one LoRA adapter vs one adapter per task, each with and without
gradient checkpointing, on a Llama-architecture base with random weights.

For each mode it prints the trainable parameters, the peak memory of training and of the whole run (with the
exports and the commit; RSS on CPU, `max_memory_allocated` on a GPU), on CPU also the peak of the tensors alone
(what `max_memory_allocated` counts on a GPU: weights, gradients, optimizer state, activations; not the interpreter,
the libraries or the allocator's cached free memory), the bytes of one checkpoint on disk, the seconds to upload and
commit that checkpoint to a local gcp-storage-emulator, and steps/s; then the ratios against full fine-tuning.
Targets: a `lora_per_task` checkpoint at most 1 % of the full one and committed at least 50x faster; training's
peak memory at most 60 % of full fine-tuning's; steps/s at least full fine-tuning's.

    .venv/bin/python benchmarks/large_base.py [--steps 6] [--config cpu|1b|8b|FILE.json] [--batch_size 4]

The first three steps (one of each task, round robin; AdamW's state is made in the first) are the ones whose tensors
are counted on CPU (`LiveTensors`), and are not timed; steps/s is timed over the steps after them.

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
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"
TOKENIZER = SHARED / "models" / "all-MiniLM-L6-v2"
ADAPTERS = ("none", "lora", "lora_per_task")
CHECKPOINTING = {"both": (False, True), "off": (False,), "on": (True,)}

# Llama shapes. cpu: about 300 M parameters, what 2 cores and 24 GB train in minutes (but the emulator takes
# many minutes to take in its ~6 GB full checkpoint); cpu-small: about 100 M; 1b and 8b: Llama 3.2 1B and
# Llama 3.1 8B (for a GPU). The LM head is tied to the embeddings, as in Llama 3.2, so it stays frozen with LoRA.
CONFIGS = {
    "cpu": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 20, "num_attention_heads": 16,
            "num_key_value_heads": 8},
    "cpu-large": {"hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 20, "num_attention_heads": 12,
                  "num_key_value_heads": 4},
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


TRACKED_STEPS = 3  # one step of each of the three tasks: the peak's step (the causal LM's) is among them


def live_tensors_mode(existing):
    """A dispatch mode that counts the bytes of every tensor storage made while it is active, until it is freed,
    and keeps the peak: CPU's `max_memory_allocated`, less the `existing` tensors (the model's: count those apart),
    whose views (a weight's transpose in every matmul) are no new memory."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveTensors(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, int] = {}
            self.existing = {t.untyped_storage()._cdata for t in existing}
            self.now = self.peak = 0

        def _freed(self, key: int) -> None:
            self.now -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                    storage = tensor.untyped_storage()
                    key = storage._cdata  # a view or an in-place result is no new memory
                    if key not in self.live and key not in self.existing:
                        self.live[key] = storage.nbytes()
                        self.now += storage.nbytes()
                        weakref.finalize(storage, self._freed, key)
            self.peak = max(self.peak, self.now)
            return out

    return LiveTensors()


def tensor_bytes(tensors) -> int:
    """The bytes of `tensors`, each storage once (tied weights share one)."""
    return sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}.values())


def peak_memory() -> int:
    """The process's peak so far: `max_memory_allocated` on a GPU, else the peak RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(opts: argparse.Namespace) -> None:
    """One mode's run, in this process: train, then upload and commit the last checkpoint; print one JSON line."""
    import torch
    from transformers import TrainerCallback

    from trainer.checkpoints import remote
    from trainer.config.env import VertexDirs
    from trainer.config.settings import load_settings
    from trainer.layout import BucketDirs, RunDirs
    from trainer.storage import gcs
    from trainer.storage.gcs import GcsStore
    from trainer.train import train

    class Probe(TrainerCallback):
        """The trainable parameters the Trainer's model holds; on CPU the peak of the tensors of the first
        TRACKED_STEPS steps (the model's weights, and what those steps make); the step times after them."""

        def __init__(self) -> None:
            self.first = self.last = None
            self.steps = 0
            self.trainable = self.tensor_peak = 0
            self.tracker = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            weights = [*model.parameters(), *model.buffers()]
            self.weights = tensor_bytes(weights)
            if not torch.cuda.is_available():
                self.tracker = live_tensors_mode(weights)
                self.tracker.__enter__()

        def on_train_end(self, args, state, control, **kwargs):
            self.train_peak = peak_memory()  # training's peak, before the exports and the commit below

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1
            if self.steps == TRACKED_STEPS and self.tracker:
                self.tracker.__exit__(None, None, None)
                self.tensor_peak = self.weights + self.tracker.peak
            now = time.perf_counter()
            if self.steps >= TRACKED_STEPS:
                self.first = self.first or now
                self.last = now

    out = Path(opts.work) / f"{opts.adapter}-{int(opts.gradient_checkpointing)}"
    flags = {"model_name": opts.base, "data_dir": str(SHARED / "data"), "tasks_file": opts.tasks_file,
             "tasks": "stsb,rte,wikitext_lm", "output_dir": str(out), "max_steps": opts.steps,
             "save_steps": opts.steps, "eval_steps": 10**6, "batch_size": opts.batch_size,
             "max_seq_length": opts.max_seq_length, "max_train_samples": 64 * opts.steps, "max_eval_samples": 8,
             "sampling": "round_robin", "adapter": opts.adapter,
             "gradient_checkpointing": opts.gradient_checkpointing, "save_total_limit": 1, "export_merged": False}
    settings, _ = load_settings(flags, environ={}, dotenv_path=None)
    probe = Probe()
    train(settings, callbacks=[probe])
    checkpoint = RunDirs(out).checkpoint(opts.steps)
    files = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in checkpoint.rglob("*") if p.is_file()}
    size = sum(files.values())  # on disk: best/ holds hard links to the selected steps' files
    upload = None  # gradient checkpointing changes no byte of a checkpoint: its commit is timed without it
    if not opts.gradient_checkpointing and opts.commit:
        dirs = BucketDirs.resolve(f"gs://bench-bucket/{out.name}", VertexDirs())
        started = time.perf_counter()
        remote.upload_checkpoint(GcsStore(gcs.make_client()), checkpoint, dirs.checkpoints, opts.steps)
        upload = time.perf_counter() - started
    print("RESULT " + json.dumps({"trainable": probe.trainable, "peak": probe.train_peak, "run_peak": peak_memory(),
                                  "tensor_peak": probe.tensor_peak, "checkpoint": size, "upload": upload,
                                  "steps_per_s": (probe.steps - TRACKED_STEPS) / (probe.last - probe.first)}),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu",
                        help="cpu (~270 M), cpu-small (~100 M), cpu-large (~550 M), 1b, 8b, or a JSON file of "
                             "LlamaConfig shapes")
    parser.add_argument("--adapters", default=",".join(ADAPTERS), help="the ADAPTER modes to run, comma-separated")
    parser.add_argument("--checkpointing", default="both", choices=CHECKPOINTING,
                        help="each mode without and with GRADIENT_CHECKPOINTING, or only one of them")
    parser.add_argument("--commit", action=argparse.BooleanOptionalAction, default=True,
                        help="upload and commit each checkpoint to the emulator (--no-commit: a full checkpoint of "
                             "a large base takes many minutes)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_seq_length", type=int, default=256)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("base", "work", "tasks_file", "adapter"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--gradient_checkpointing", type=int, default=0, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.steps <= TRACKED_STEPS:
        parser.error(f"--steps must be more than {TRACKED_STEPS}: the steps after the first {TRACKED_STEPS} are timed")
    if unknown := set(opts.adapters.split(",")) - set(ADAPTERS):
        parser.error(f"--adapters: {', '.join(sorted(unknown))} is none of {', '.join(ADAPTERS)}")
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
            modes = [(adapter, checkpointing) for adapter in opts.adapters.split(",")
                     for checkpointing in CHECKPOINTING[opts.checkpointing]]
            for adapter, checkpointing in modes:
                command = [sys.executable, __file__, "--child", "--base", str(work / "base"), "--work", str(work),
                           "--tasks_file", str(tasks_file), "--adapter", adapter,
                           "--gradient_checkpointing", str(int(checkpointing)), "--steps", str(opts.steps),
                           "--commit" if opts.commit else "--no-commit",
                           "--batch_size", str(opts.batch_size), "--max_seq_length", str(opts.max_seq_length)]
                done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
                line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if done.returncode or not line:
                    sys.exit(f"{adapter} (checkpointing={checkpointing}) failed:\n{done.stderr[-3000:]}")
                results[(adapter, checkpointing)] = json.loads(line[-1][len("RESULT "):])
        finally:
            emulator.stop()

    print(f"\nLlama base '{opts.config}': {params / 1e6:.0f} M parameters; {opts.steps} steps per mode (the first "
          f"{TRACKED_STEPS} not timed), batch {opts.batch_size}, up to {opts.max_seq_length} tokens; tasks stsb, rte, "
          "wikitext_lm")
    print(f"{'mode':<24} {'trainable':>12} {'train peak MB':>14} {'run peak MB':>12} {'tensors MB':>11} "
          f"{'ckpt MB':>9} {'commit s':>9} {'steps/s':>8}")
    for (adapter, checkpointing), r in results.items():
        mode = adapter + (" + grad ckpt" if checkpointing else "")
        commit = "-" if r["upload"] is None else f"{r['upload']:.2f}"
        tensors = f"{r['tensor_peak'] / 2**20:.0f}" if r["tensor_peak"] else "-"
        print(f"{mode:<24} {r['trainable']:>12,} {r['peak'] / 2**20:>14.0f} {r['run_peak'] / 2**20:>12.0f} "
              f"{tensors:>11} {r['checkpoint'] / 1e6:>9.2f} {commit:>9} {r['steps_per_s']:>8.3f}")
    for (adapter, checkpointing), r in results.items():
        full = results.get(("none", checkpointing))
        if adapter == "none" or not full:
            continue
        tensors = (f", tensors {r['tensor_peak'] / full['tensor_peak']:.2f}" if r["tensor_peak"] else "")
        with_gc = " + grad ckpt" if checkpointing else ""
        print(f"{adapter}{with_gc} vs none{with_gc}: peak memory {r['peak'] / full['peak']:.2f} of full{tensors} "
              f"(target <= 0.60); steps/s {r['steps_per_s'] / full['steps_per_s']:.2f}x full (target >= 1)")
    full = results.get(("none", False))
    for adapter in ("lora", "lora_per_task"):
        r = results.get((adapter, False))
        if not (full and r and r["upload"] and full["upload"]):
            continue
        print(f"{adapter}: checkpoint {r['checkpoint'] / full['checkpoint']:.4f} of full (target <= 0.01 for "
              f"lora_per_task); commit {full['upload'] / r['upload']:.0f}x faster (target >= 50)")


if __name__ == "__main__":
    main()
