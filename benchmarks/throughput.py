"""Training throughput: the seed recipe vs the project, and the project's multitask overhead vs a stock Trainer.

Trains the MiniLM in ../shared/models/all-MiniLM-L6-v2 at batch 16 in one process, the modes in
alternating rounds (seed, project, seed, project, ...), so drift in machine load hits both alike:

- `seed`: a faithful copy of the original recipe: every example padded to 128 tokens, one DataLoader
  per task behind a shuffled, size-proportional list of tasks, one shared encoder with a stock
  `AutoModelFor...` per task, and the stock `Trainer` with that data loader;
- `project`: the project's own path with its default settings (`MultitaskTrainer`, its sampler,
  `TaskBatchCollator`), on STS-B + RTE + CommonsenseQA from DATA_DIR;
- overhead: `project` on RTE alone against a stock run_glue-style `Trainer` (`DataCollatorWithPadding`) on the
  same tokenised RTE, both without length grouping; the stock Trainer gets the project's TrainingArguments and
  draws the examples in the project's sampler's order, so both train the same batches. After a short warm-up of
  each, it compares microseconds per processed token over all steps and as the median of the paired steps.

The time of a step runs from the end of the step before to the end of this one (so it includes fetching
and collating its batch); the first step of each run is left out. Samples/s per task is batch / the task's
median step time; a mode's samples/s combines the tasks' medians with the proportional mix (each task's
share of the epoch's batches), so the random order of tasks in a short run can't skew the ratio.

    .venv/bin/python benchmarks/throughput.py [--steps 40] [--rounds 3] [--overhead_steps 30] [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from trainer.config.settings import Settings, load_settings  # noqa: E402
from trainer.data.dataset import MultitaskDataset, TaskBatchCollator, tokenize_split  # noqa: E402
from trainer.data.read import read_all_splits  # noqa: E402
from trainer.model.loading import load_encoder  # noqa: E402
from trainer.model.modeling import MultitaskModel  # noqa: E402
from trainer.sampling.sampler import MultitaskBatchSampler  # noqa: E402
from trainer.tasks.declare import resolve_tasks  # noqa: E402
from trainer.tasks.spec import TaskSpec  # noqa: E402
from trainer.training.arguments import training_arguments  # noqa: E402
from trainer.training.trainer import MultitaskTrainer  # noqa: E402

TASKS = ("stsb", "rte", "commonsense_qa")
SEED_MAX_LENGTH = 128
TARGETS = {"speedup": 5.0, "efficiency": 0.95, "overhead": 0.03}


# -- measuring ----------------------------------------------------------------------------------


class Counted:
    """A collate function that records each batch's task, processed tokens (padding included) and real tokens.

    `task` names the task of every batch (one loader per task); without it the batch's own `task` is read.
    """

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]], log: list | None = None,
                 task: str | None = None):
        self.collate = collate
        self.batches: list[tuple[str, int, int]] = [] if log is None else log
        self.task = task

    def __call__(self, features: list[Any]) -> dict[str, Any]:
        batch = self.collate(features)
        mask = batch["attention_mask"]
        self.batches.append((self.task or batch["task"], mask.numel(), int(mask.sum())))
        return batch


class StepTimes(TrainerCallback):
    """Seconds from the end of the step before to the end of each step (the first step has none)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = None

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self._last if self._last is not None else float("nan"))
        self._last = now


class Record:
    """Step times and tokens of one mode over all its rounds."""

    def __init__(self) -> None:
        self.per_task: dict[str, list[float]] = {}
        self.processed = self.real = 0
        self.seconds = 0.0
        self.rounds: list[float] = []  # microseconds per processed token, per round
        self.steps: list[list[float]] = []  # each round's step times, in order

    def add(self, counted: Counted, clock: StepTimes) -> None:
        seconds_before, processed_before = self.seconds, self.processed
        for (task, processed, real), seconds in zip(counted.batches[1:], clock.times[1:], strict=False):
            self.per_task.setdefault(task, []).append(seconds)
            self.processed += processed
            self.real += real
            self.seconds += seconds
        self.rounds.append((self.seconds - seconds_before) / (self.processed - processed_before) * 1e6)
        self.steps.append(clock.times[1:])

    def samples_per_s(self, batch: int, mix: dict[str, float]) -> float:
        return batch / sum(share * statistics.median(self.per_task[t]) for t, share in mix.items())

    @property
    def efficiency(self) -> float:
        return self.real / self.processed


def bench_args(out: str, steps: int, batch: int, seed: int) -> TrainingArguments:
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=3e-5,
                             report_to=[], seed=seed, use_cpu=True, remove_unused_columns=False, logging_steps=10**6,
                             dataloader_num_workers=0, disable_tqdm=True)
    args.set_save(strategy="no")
    args.set_evaluate(strategy="no")
    return args


# -- the seed recipe ----------------------------------------------------------------------------


class SeedMultitaskModel(torch.nn.Module):
    """The recipe's model: one stock model per task, all sharing the first one's encoder."""

    def __init__(self, model_name: str, heads: dict[str, tuple[type, int]]):
        super().__init__()
        shared = None
        models = {}
        for name, (model_class, num_labels) in heads.items():
            model = model_class.from_pretrained(model_name, config=AutoConfig.from_pretrained(model_name,
                                                                                            num_labels=num_labels))
            prefix = model.base_model_prefix
            if shared is None:
                shared = getattr(model, prefix)
            else:
                setattr(model, prefix, shared)
            models[name] = model
        self.taskmodels = torch.nn.ModuleDict(models)

    def forward(self, task_name: str, **inputs: Any) -> Any:
        return self.taskmodels[task_name](**inputs)


class TaskNameLoader:
    """One task's DataLoader whose batches say which task they are."""

    def __init__(self, name: str, loader: DataLoader):
        self.name, self.loader = name, loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            batch["task_name"] = self.name
            yield batch


class SeedMultitaskLoader:
    """The recipe's multitask data loader: a shuffled list with each task repeated once per batch it has."""

    def __init__(self, loaders: dict[str, DataLoader]):
        self.loaders = {name: TaskNameLoader(name, loader) for name, loader in loaders.items()}
        self.batch_size = next(iter(loaders.values())).batch_size

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        choices = np.concatenate([[name] * len(loader) for name, loader in self.loaders.items()])
        np.random.shuffle(choices)
        iterators = {name: iter(loader) for name, loader in self.loaders.items()}
        for name in choices:
            yield next(iterators[name])


class SeedTrainer(Trainer):
    """The stock Trainer, handed the recipe's multitask data loader."""

    def __init__(self, *args: Any, loader: SeedMultitaskLoader, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.loader = loader

    def get_train_dataloader(self) -> SeedMultitaskLoader:
        return self.loader


def seed_features(task: TaskSpec, columns: dict[str, list[Any]], tokenizer) -> list[dict[str, torch.Tensor]]:
    """Every example tokenised and padded to 128, as the recipe's `convert_to_features` does."""
    pad = {"truncation": True, "max_length": SEED_MAX_LENGTH, "padding": "max_length", "return_tensors": "pt"}
    if task.type == "multiple_choice":
        width = len(columns["choices"][0])
        firsts = [q for q in columns["text_a"] for _ in range(width)]
        seconds = [c for choices in columns["choices"] for c in choices]
        encoded = {k: v.view(-1, width, SEED_MAX_LENGTH) for k, v in tokenizer(firsts, seconds, **pad).items()}
        labels = torch.tensor(columns["label"])
    else:
        pairs = columns["text_b"] if any(columns["text_b"]) else None
        encoded = dict(tokenizer(columns["text_a"], pairs, **pad))
        labels = torch.tensor(columns["label"], dtype=torch.float if task.type == "regression" else torch.long)
    return [{**{k: v[i] for k, v in encoded.items()}, "labels": labels[i]} for i in range(len(labels))]


def stack(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([f[k] for f in features]) for k in features[0]}


def seed_run(opts: argparse.Namespace, tasks: list[TaskSpec], features: dict[str, list], out: str,
             record: Record) -> None:
    heads = {t.name: (AutoModelForMultipleChoice, 1) if t.type == "multiple_choice" else
             (AutoModelForSequenceClassification, 1 if t.type == "regression" else t.num_labels) for t in tasks}
    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed)
    model = SeedMultitaskModel(opts.model, heads)
    counted = Counted(stack)
    loaders = {name: DataLoader(data, batch_size=opts.batch_size, shuffle=True,
                                collate_fn=Counted(stack, counted.batches, name)) for name, data in features.items()}
    clock = StepTimes()
    trainer = SeedTrainer(model=model, args=bench_args(out, opts.steps, opts.batch_size, opts.seed),
                          loader=SeedMultitaskLoader(loaders), callbacks=[clock])
    trainer.train()
    record.add(counted, clock)


# -- the project --------------------------------------------------------------------------------


def project_settings(opts: argparse.Namespace, tasks: tuple[str, ...], out: str, **extra: Any) -> Settings:
    flags = {"model_name": opts.model, "data_dir": opts.data_dir, "tasks": ",".join(tasks), "batch_size":
             opts.batch_size, "seed": opts.seed, "output_dir": out, "report_to": "none", **extra}
    return load_settings(flags, environ={}, dotenv_path=None)[0]


def project_data(settings: Settings) -> tuple[list[TaskSpec], dict[str, Any], dict[str, Any], Any]:
    """The tasks, their tokenised train splits (the project's cached `datasets.map`), their rows, the tokenizer."""
    tasks = resolve_tasks(settings.tasks, settings.tasks_file, settings.task_weights)
    tasks, rows = read_all_splits(tasks, settings)
    tokenizer = AutoTokenizer.from_pretrained(settings.model_name)
    train = {t.name: tokenize_split(t, rows[t.name]["train"], tokenizer, settings.max_seq_length) for t in tasks}
    return tasks, train, rows, tokenizer


def quiet_args(settings: Settings, steps: int) -> TrainingArguments:
    """The project's TrainingArguments for these settings (optimizer, schedule, weight decay), for `steps` steps
    with saving, evaluation, logging and progress bars off."""
    args = training_arguments(settings)
    args.max_steps = steps
    args.disable_tqdm = True
    args.logging_steps = 10**6
    args.set_save(strategy="no")
    args.set_evaluate(strategy="no")
    return args


def project_run(settings: Settings, steps: int, tasks: list[TaskSpec], train: dict[str, Any], record: Record) -> None:
    """The project's trainer as `trainer.train.train` builds it, with the settings' defaults; no saving or eval."""
    tokenizer, encoder = load_encoder(settings.model_name, tasks)
    args = quiet_args(settings, steps)
    collator = Counted(TaskBatchCollator(tokenizer, tasks, pad_to_multiple_of=8 if not args.use_cpu else None))
    clock = StepTimes()
    trainer = MultitaskTrainer(
        model=MultitaskModel(encoder, tasks, settings.task_weighting, settings.task_weights), args=args,
        train_dataset=MultitaskDataset(train), processing_class=tokenizer, data_collator=collator, callbacks=[clock],
        tasks=tasks, sampling=settings.sampling, sampling_temperature=settings.sampling_temperature,
        sampling_cap=settings.sampling_cap, group_by_length=settings.group_by_length,
        weighting_learning_rate=settings.task_weighting_lr)
    trainer.train()
    record.add(collator, clock)


# -- the stock single-task Trainer ---------------------------------------------------------------


class SameOrderTrainer(Trainer):
    """The stock Trainer, drawing the examples in the order it is given instead of its own random order."""

    def __init__(self, *args: Any, order: list[int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.order = order

    def _get_train_sampler(self, train_dataset: Any = None) -> list[int]:
        return self.order


def stock_run(opts: argparse.Namespace, settings: Settings, task: TaskSpec, split: Any, tokenizer: Any,
              record: Record) -> None:
    """run_glue.py's way: the stock model and Trainer, DataCollatorWithPadding.

    It gets the project's TrainingArguments (the same optimizer, weight decay and schedule) and draws the
    examples in the order the project's sampler does, so both train on the same batches and the comparison
    measures what the multitask machinery adds, not a difference in hyperparameters or batch shapes."""
    torch.manual_seed(opts.seed)
    config = AutoConfig.from_pretrained(opts.model, num_labels=task.num_labels)
    model = AutoModelForSequenceClassification.from_pretrained(opts.model, config=config)
    collator = Counted(DataCollatorWithPadding(tokenizer), task=task.name)
    clock = StepTimes()
    args = quiet_args(settings, opts.overhead_steps)
    args.remove_unused_columns = True
    order = [i for batch in MultitaskBatchSampler([len(split)], opts.batch_size, seed=settings.seed) for i in batch]
    trainer = SameOrderTrainer(model=model, args=args, train_dataset=split, data_collator=collator, callbacks=[clock],
                               order=order)
    trainer.train()
    record.add(collator, clock)


# -- the report ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=40, help="steps per mode per round (seed vs project)")
    parser.add_argument("--overhead_steps", type=int, default=30, help="steps per mode per round (overhead)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default (every core)")
    parser.add_argument("--skip", choices=("none", "seed", "overhead"), default="none", help="leave one part out")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    print(f"torch threads: {torch.get_num_threads()}; batch {opts.batch_size}; {opts.rounds} rounds", flush=True)
    with tempfile.TemporaryDirectory() as out:
        settings = project_settings(opts, TASKS, out)
        tasks, train, rows, tokenizer = project_data(settings)
        sizes = {t.name: -(-len(train[t.name]) // opts.batch_size) for t in tasks}
        mix = {name: n / sum(sizes.values()) for name, n in sizes.items()}
        records = {"seed": Record(), "project": Record(), "stock": Record(), "project-1": Record()}
        if opts.skip != "seed":
            features = {t.name: seed_features(t, rows[t.name]["train"].columns, tokenizer) for t in tasks}
            for r in range(opts.rounds):
                print(f"round {r + 1}: seed recipe, {opts.steps} steps", flush=True)
                seed_run(opts, tasks, features, out, records["seed"])
                print(f"round {r + 1}: project, {opts.steps} steps", flush=True)
                project_run(settings, opts.steps, tasks, train, records["project"])
        if opts.skip != "overhead":
            single = project_settings(opts, ("rte",), out, group_by_length=False)
            rte = [t for t in tasks if t.name == "rte"]
            print("warm-up (not timed): 5 steps of each", flush=True)  # the first run in a process pays for warm-up
            warm = argparse.Namespace(**{**vars(opts), "overhead_steps": 5})
            stock_run(warm, single, rte[0], train["rte"], tokenizer, Record())
            project_run(single, 5, rte, {"rte": train["rte"]}, Record())
            for r in range(opts.rounds):
                print(f"round {r + 1}: stock Trainer on rte, {opts.overhead_steps} steps", flush=True)
                stock_run(opts, single, rte[0], train["rte"], tokenizer, records["stock"])
                print(f"round {r + 1}: project on rte, {opts.overhead_steps} steps", flush=True)
                project_run(single, opts.overhead_steps, rte, {"rte": train["rte"]}, records["project-1"])
    print(report(records, mix, opts, settings))


def report(records: dict[str, Record], mix: dict[str, float], opts: argparse.Namespace, settings: Settings) -> str:
    lines = [f"\nproject defaults: GROUP_BY_LENGTH={settings.group_by_length}, SAMPLING={settings.sampling}; "
             f"mix (share of batches): " + ", ".join(f"{t} {m:.2f}" for t, m in mix.items())]
    seed, project = records["seed"], records["project"]
    if any(t not in rec.per_task for rec in (seed, project) for t in mix) and seed.per_task:
        lines.append("\nsome task got no timed step: run more --steps")
    elif seed.per_task:
        lines.append(f"\n{'mode':<9} " + " ".join(f"{t + ' s/step':>21}" for t in mix)
                     + f" {'samples/s':>10} {'processed tok':>14} {'real tok':>10} {'real/processed':>15}")
        for name, rec in (("seed", seed), ("project", project)):
            cells = [f"{statistics.median(rec.per_task[t]):>9.3f} ({len(rec.per_task[t]):>3} steps)" for t in mix]
            lines.append(f"{name:<9} " + " ".join(f"{c:>21}" for c in cells)
                         + f" {rec.samples_per_s(opts.batch_size, mix):>10.2f} {rec.processed:>14} {rec.real:>10}"
                         f" {rec.efficiency:>15.3f}")
        per_task = ", ".join(f"{t} {statistics.median(seed.per_task[t]) / statistics.median(project.per_task[t]):.2f}x"
                             for t in mix)
        speedup = project.samples_per_s(opts.batch_size, mix) / seed.samples_per_s(opts.batch_size, mix)
        lines += [f"speedup project/seed (samples/s)       = {speedup:.2f}x  (target >= {TARGETS['speedup']:g}x; "
                  f"per task: {per_task})",
                  f"padding efficiency project (defaults)  = {project.efficiency:.3f}  (target >= "
                  f"{TARGETS['efficiency']}); seed recipe {seed.efficiency:.3f}"]
    stock, single = records["stock"], records["project-1"]
    if stock.per_task:
        per_token = {name: rec.seconds / rec.processed * 1e6 for name, rec in (("stock", stock), ("project", single))}
        overhead = per_token["project"] / per_token["stock"] - 1
        # both modes train the same batches in the same order: step i of a project round against step i of a
        # stock round is a like-for-like pair, and the median of those ratios shrugs off a stalled step or round
        paired = statistics.median(p / q for ps, qs in zip(single.steps, stock.steps, strict=True)
                                   for p, q in zip(ps, qs, strict=True)) - 1
        lines += ["\noverhead, rte alone, no length grouping, the same batches in the same order in both modes: "
                  "microseconds per processed token",
                  f"  stock Trainer {per_token['stock']:.2f} ({stock.processed} tokens, efficiency "
                  f"{stock.efficiency:.3f}); project {per_token['project']:.2f} ({single.processed} tokens, "
                  f"efficiency {single.efficiency:.3f})",
                  "  per round: stock " + ", ".join(f"{r:.1f}" for r in stock.rounds) + "; project "
                  + ", ".join(f"{r:.1f}" for r in single.rounds),
                  f"multitask overhead per processed token = {overhead:+.1%} over all steps, {paired:+.1%} as the "
                  f"median of the paired steps  (target <= {TARGETS['overhead']:.0%})"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
