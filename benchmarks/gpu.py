"""The GPU path: a roberta-base-sized encoder on STS-B + RTE + CommonsenseQA, padded, grouped, packed and compiled.

The model is RobertaConfig's defaults (125 M parameters) with random weights: FLOPs don't depend on them. The
examples are the real train splits from ../shared/data, tokenised with the MiniLM tokenizer from
../shared/models (so the lengths are real), batched by the project's own sampler and collator, and trained
with the project's MultitaskModel in bf16 with fused AdamW. Each mode trains `--steps` steps after
`--warmup` unmeasured ones, and prints:

- samples/s (a CommonsenseQA question with its 5 choices is one sample),
- real tokens/s (tokens of the examples, no padding) and the padding efficiency (real / processed tokens),
- MFU = 6 * parameters * real tokens / time / the GPU's peak dense bf16 FLOPS (H100 SXM and H200: 989 TFLOPS;
  --peak-tflops for another GPU).

    .venv/bin/python benchmarks/gpu.py                      # needs CUDA; target: real-token MFU >= 45 % (H100)
    .venv/bin/python benchmarks/gpu.py --smoke              # CPU: a tiny config, 200 rows per task, 3 steps

Modes: padded (random batches of one task, padded to their longest), grouped (GROUP_BY_LENGTH), packed
(PACKING=1: CommonsenseQA still pads, its kind can't pack), compiled (grouped + TORCH_COMPILE=1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer, RobertaConfig  # noqa: E402

from trainer.data.dataset import MultitaskDataset, TaskBatchCollator  # noqa: E402
from trainer.data.packing import packer_for  # noqa: E402
from trainer.data.read import read_split  # noqa: E402
from trainer.model.gpu import compile_encoder  # noqa: E402
from trainer.model.modeling import MultitaskModel  # noqa: E402
from trainer.sampling.sampler import MultitaskBatchSampler  # noqa: E402
from trainer.tasks.declare import resolve_tasks  # noqa: E402

SHARED = ROOT.parent / "shared"
TASKS = ("stsb", "rte", "commonsense_qa")
MODES = ("padded", "grouped", "packed", "compiled")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}  # dense, SXM where it varies


def peak_tflops(given: float | None) -> float | None:
    if given:
        return given
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def tokenized_tasks(tokenizer, rows: int | None, max_length: int):
    tasks = resolve_tasks(TASKS, None)
    splits = {}
    for task in tasks:
        data = read_split(task, "train", str(SHARED / "data")).limit(rows, seed=0)
        encoded = task.kind.tokenize(data.columns, task, tokenizer, max_length)
        splits[task.name] = datasets.Dataset.from_dict(encoded)
    return tasks, MultitaskDataset(splits)


def real_tokens(batch: dict) -> tuple[int, int, int]:
    """(samples, real tokens, processed tokens) of one collated batch."""
    ids = batch["input_ids"]
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
    return len(batch["labels"]), real, ids.numel()


def run_mode(mode: str, config: RobertaConfig, tasks, dataset, tokenizer, args, device) -> dict[str, float]:
    torch.manual_seed(0)
    encoder = AutoModel.from_config(config)
    packer = packer_for(encoder, tasks) if mode == "packed" else None
    if mode == "compiled":
        compile_encoder(encoder)
    model = MultitaskModel(encoder, tasks).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    collate = TaskBatchCollator(tokenizer, tasks, pad_to_multiple_of=8 if device.type == "cuda" and not packer
                                else None, packer=packer)
    sampler = MultitaskBatchSampler(dataset.task_sizes(), args.batch_size, seed=0,
                                    lengths=dataset.lengths() if mode in ("grouped", "compiled") else None)
    batches = iter(sampler)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    totals = [0, 0, 0]
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = collate(dataset.__getitems__(next(batches)))
        if step >= args.warmup:
            totals = [t + n for t, n in zip(totals, real_tokens(batch), strict=True)]
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    samples, real, processed = totals
    params = sum(p.numel() for p in model.parameters())
    return {"samples/s": samples / seconds, "real tok/s": real / seconds, "efficiency": real / processed,
            "flops/s": 6 * params * real / seconds, "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU check: tiny config, few rows and steps")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per mode (default 100; smoke 3)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured steps first (default 20; smoke 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rows", type=int, default=None, help="train rows per task (default all; smoke 200)")
    parser.add_argument("--modes", default=None, help=f"comma-separated, from {', '.join(MODES)} (default all; "
                        "smoke: all but compiled, which takes minutes to compile on a CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOPS of the GPU")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("error: benchmarks/gpu.py needs a CUDA GPU; use --smoke for the CPU check")
    modes = [m.strip() for m in (args.modes or ",".join(MODES[:3] if args.smoke else MODES)).split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        sys.exit(f"error: --modes {unknown[0]!r} is not a mode; choose from {', '.join(MODES)}")
    args.steps = args.steps or (3 if args.smoke else 100)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 20)
    args.rows = args.rows or (200 if args.smoke else None)
    if args.smoke:
        config = RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                               max_position_embeddings=args.max_length + 2)
        args.batch_size = min(args.batch_size, 8)
    else:
        config = RobertaConfig(max_position_embeddings=args.max_length + 2)  # roberta-base: 12 x 768
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(SHARED / "models" / "all-MiniLM-L6-v2")
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    tasks, dataset = tokenized_tasks(tokenizer, args.rows, args.max_length)
    peak = peak_tflops(args.peak_tflops)
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"
    print(f"{where}; {', '.join(TASKS)}: {len(dataset)} examples; batch {args.batch_size}, {args.steps} steps "
          f"after {args.warmup}; peak {peak or '?'} TFLOPS")
    print(f"{'mode':<10} {'samples/s':>10} {'real tok/s':>11} {'efficiency':>10} {'MFU':>7}")
    for mode in modes:
        r = run_mode(mode, config, tasks, dataset, tokenizer, args, device)
        mfu = f"{r['flops/s'] / (peak * 1e12):.1%}" if peak else "n/a"
        print(f"{mode:<10} {r['samples/s']:>10.1f} {r['real tok/s']:>11.0f} {r['efficiency']:>10.3f} {mfu:>7}",
              flush=True)
    print(f"parameters: {r['params'] / 1e6:.1f} M")


if __name__ == "__main__":
    main()
