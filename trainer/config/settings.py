"""Typed settings from defaults, `.env`, the environment and command-line flags.

Precedence, lowest to highest: default < `.env` < environment variable < flag.
`.env` never overrides a variable that is really set in the environment.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainer.config.env import parse_bool, parse_float, parse_int, read_dotenv, vertex_dirs
from trainer.errors import UserError
from trainer.layout import LOGS_DIR
from trainer.sampling import STRATEGIES
from trainer.storage import base as storage

SamplingStrategy = Literal[tuple(STRATEGIES)]  # one module per strategy in trainer/sampling/
Precision = Literal["auto", "fp32", "bf16", "fp16"]
TaskWeighting = Literal["static", "uncertainty"]  # trainer.model.weighting.WEIGHTINGS
SelectBest = Literal["per_task", "average", "last"]  # trainer.outputs.selection
AdapterMode = Literal["none", "lora", "lora_per_task"]  # trainer.model.adapters.ADAPTERS
Quantize = Literal["4bit", "8bit"]  # QLoRA's base, with bitsandbytes (CUDA only)
TRACKERS = ("tensorboard", "wandb", "mlflow", "none")  # REPORT_TO: what TrainingArguments(report_to=...) gets

DEMO_MODEL = "demo"
DEMO_UNMERGED = ("EXPORT_MERGED=false with MODEL_NAME=demo: the unmerged export names its base by MODEL_NAME, and "
                 "the demo base is built in memory; set EXPORT_MERGED=true (or empty) for the demo")

ResumeKind = Literal["never", "auto", "local", "bucket"]


@dataclass(frozen=True)
class Resume:
    """RESUME, parsed: start over (`never`), continue from the newest intact checkpoint (`auto`), or from one named
    checkpoint, a directory on this machine (`local`) or in a bucket (`bucket`). `text` is RESUME as given (the
    effective value when empty): what `settings` shows, metrics.json records and messages quote."""

    kind: ResumeKind
    text: str

    def __str__(self) -> str:
        return self.text

    @property
    def path(self) -> Path:
        """The named local checkpoint."""
        if self.kind != "local":
            raise ValueError(f"RESUME={self.text} names no local checkpoint")
        return Path(self.text)

    @property
    def uri(self) -> Any:
        """The named bucket checkpoint, as a URI of its backend (one line when malformed)."""
        if self.kind != "bucket":
            raise ValueError(f"RESUME={self.text} names no bucket checkpoint")
        return storage.parse_uri(self.text)


def parse_resume(text: str) -> Resume:
    """RESUME's one parser: auto, never, a gs:// checkpoint (whether it is there is asked of the bucket later,
    before the run claims anything: `trainer.checkpoints.resume.check_resume`) or a local checkpoint directory,
    which must exist; empty is the default, auto on Vertex AI (a restarted worker continues), never elsewhere."""
    text = text.strip()
    if not text:
        return Resume("auto", "auto") if on_vertex() else Resume("never", "never")
    if text in ("auto", "never"):
        return Resume(text, text)
    if storage.is_uri(text):
        return Resume("bucket", text)
    if Path(text).is_dir():
        return Resume("local", text)
    raise UserError(f"RESUME={text!r} is not a checkpoint directory; use auto, never or a checkpoint path")


@dataclass(frozen=True)
class Range:
    """The allowed values of a number setting (field metadata "range"): each bound inclusive unless open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, integer: bool) -> str:
        if integer and self.low == 1 and self.high is None and not self.low_open:
            return "a positive integer"
        low, high = (f"{b:g}" if isinstance(b, float) else str(b) for b in (self.low, self.high))
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
COUNT = Range(1)  # a positive integer


@dataclass
class Settings:
    """Every setting of a training run. The environment variable is the field name upper-cased."""

    model_name: str = field(
        default=DEMO_MODEL,
        metadata={"help": "Hub id or local path of the encoder; 'demo' builds a tiny encoder offline."},
    )
    tasks: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "Comma-separated task names (built-in or from TASKS_FILE); empty = every task of "
                  "TASKS_FILE, or the three offline demo tasks without one."},
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Read built-in tasks from local files here instead of the hub."}
    )
    tasks_file: str | None = field(default=None, metadata={"help": "YAML/JSON file declaring your own tasks."})
    output_dir: str = field(default="outputs/run", metadata={"help": "Checkpoints, export and metrics.json."})
    num_epochs: float = field(
        default=3.0, metadata={"help": "Training epochs (ignored when MAX_STEPS > 0).", "range": POSITIVE}
    )
    max_steps: int = field(default=-1, metadata={"help": "Total optimizer steps; -1 means use NUM_EPOCHS."})
    batch_size: int = field(default=32, metadata={"help": "Examples per training batch per device.", "range": COUNT})
    eval_batch_size: int | None = field(
        default=None, metadata={"help": "Examples per evaluation batch per device (length-sorted); empty = 2 x "
                                "BATCH_SIZE.", "range": COUNT}
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate; empty = 1e-3 for the demo encoder, 3e-5 otherwise.",
                                "range": POSITIVE}
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Truncation bound in tokens (padding is dynamic); at most the model's "
                               "maximum positions.", "range": COUNT}
    )
    sampling: SamplingStrategy = field(
        default="proportional",
        metadata={"help": "Task sampling: proportional, temperature, uniform, round_robin, or all_tasks (every step "
                  "sums one batch of every task)."},
    )
    sampling_temperature: float = field(
        default=2.0, metadata={"help": "T for SAMPLING=temperature: p(task) ~ batches^(1/T).", "range": POSITIVE}
    )
    sampling_cap: int | None = field(
        default=None, metadata={"help": "K for SAMPLING=proportional or temperature: a task weighs at most K examples, "
                                "min(examples, K), before the 1/T exponent (T5's cap); empty = no cap.",
                                "range": COUNT}
    )
    task_weights: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "Loss weight per task, e.g. 'rte=2,stsb=0.5' (default 1).", "range": NON_NEGATIVE},
    )
    task_weighting: TaskWeighting = field(
        default="static",
        metadata={"help": "static (TASK_WEIGHTS) or uncertainty: a learned log-variance per task scales its loss "
                  "(Kendall et al., 2018)."},
    )
    task_weighting_lr: float = field(
        default=0.01, metadata={"help": "Learning rate of the learned loss weights (TASK_WEIGHTING=uncertainty).",
                                "range": POSITIVE}
    )
    select_best: SelectBest = field(
        default="per_task",
        metadata={"help": "What export/<task> holds: per_task (each task's best dev step), average (the best "
                  "eval_average step) or last (the final weights)."},
    )
    group_by_length: bool = field(
        default=True, metadata={"help": "Batch examples of similar length together within a task (sorted within "
                                "windows of 200 batches; batches in random order)."}
    )
    eval_steps: int | None = field(
        default=None, metadata={"help": "Evaluate every N steps; empty = about 10 times a run (every epoch if "
                                "more often).", "range": COUNT}
    )
    save_steps: int | None = field(
        default=None, metadata={"help": "Checkpoint every N steps; empty = as EVAL_STEPS' default.", "range": COUNT}
    )
    save_total_limit: int | None = field(
        default=3, metadata={"help": "Keep at most N checkpoints (the newest is never deleted).", "range": COUNT}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every N steps.", "range": COUNT})
    warmup_ratio: float = field(
        default=0.06, metadata={"help": "Fraction of steps for linear LR warmup.", "range": Range(0, 1, high_open=True)}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay.", "range": NON_NEGATIVE})
    precision: Precision = field(
        default="auto", metadata={"help": "What matmuls compute in: auto (bf16/fp16 when the GPU supports it), fp32, "
                                          "bf16 or fp16. Weights that train stay fp32; a frozen base (an ADAPTER) is "
                                          "kept in this dtype."}
    )
    dataloader_workers: int | None = field(
        default=None, metadata={"help": "Background processes that collate training batches; empty = 2 on a GPU, "
                                "0 (in the training process) on CPU."}
    )
    torch_compile: bool = field(
        default=False, metadata={"help": "Compile the shared encoder (torch.compile, dynamic sequence lengths)."}
    )
    packing: bool = field(
        default=False, metadata={"help": "Padding-free batches: each batch's sequences end to end with varlen "
                                 "attention, for the kinds and models that can (the others pad; the log says so)."}
    )
    adapter: AdapterMode = field(
        default="none",
        metadata={"help": "none (full fine-tuning), lora (one LoRA adapter on the frozen base, trained by every task) "
                  "or lora_per_task (one adapter per task; a step's task picks it). Heads train in full."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (with ADAPTER=lora or lora_per_task).", "range": COUNT})
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA scaling alpha (the update is scaled by alpha / r).", "range": POSITIVE}
    )
    lora_dropout: float = field(
        default=0.05, metadata={"help": "Dropout on the LoRA branch.", "range": Range(0, 1, high_open=True)}
    )
    lora_target_modules: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "Comma-separated module names LoRA wraps; empty = peft's default for the architecture, "
                  "or all-linear where peft has none (the log names the modules chosen)."},
    )
    adapter_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of what trains with an adapter (adapters and heads); empty "
                                "= 10x the default full fine-tuning rate.", "range": POSITIVE}
    )
    export_merged: bool | None = field(
        default=None, metadata={"help": "With an adapter, export/<task> is the adapter merged into a copy of the base "
                                "(true) or a peft adapter directory plus the head (false); empty = true for a base "
                                "under 1 B parameters."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute the shared base's activations in the backward pass: less "
                                 "memory, about a third more compute."}
    )
    fsdp: bool = field(
        default=False, metadata={"help": "Shard full fine-tuning across the processes of a torchrun launch (FSDP2, "
                                 "one transformer block per unit)."}
    )
    quantize: Quantize | None = field(
        default=None, metadata={"help": "4bit or 8bit: load the frozen base quantized (QLoRA, bitsandbytes; CUDA "
                                "and an ADAPTER only); empty = not quantized."}
    )
    resume: str = field(
        default="",
        metadata={"help": "auto (newest complete checkpoint), never, or a checkpoint path; empty = auto on "
                  "Vertex AI, never elsewhere."},
    )
    seed: int = field(
        default=42, metadata={"help": "Seed for weights, sampling schedule and shuffling (0 to 2**32-1).",
                              "range": Range(0, 2**32 - 1)}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Cap training examples per task.", "range": COUNT}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Cap evaluation examples per task.", "range": COUNT}
    )
    log_dir: str | None = field(default=None, metadata={"help": "TensorBoard logs; empty = OUTPUT_DIR/logs."})
    report_to: tuple[str, ...] = field(
        default=("tensorboard",),
        metadata={"help": "Where the Trainer logs metrics, comma-separated: tensorboard, wandb, mlflow, or none."},
    )
    job_dir: str | None = field(
        default=None, metadata={"help": "gs://bucket/prefix for checkpoints, the final model and logs."}
    )
    log_upload_seconds: float = field(
        default=60.0, metadata={"help": "With JOB_DIR: send the TensorBoard logs to the bucket this often (and at "
                                "each checkpoint) while training.", "range": POSITIVE}
    )
    upload_timeout: float = field(
        default=600.0, metadata={"help": "Seconds to wait for pending checkpoint uploads at the end.",
                                 "range": POSITIVE}
    )
    lease_seconds: float = field(
        default=30.0, metadata={"help": "With JOB_DIR: refresh the run's lease on the bucket this often; another run "
                                "takes over a lease not refreshed for 3x this long.", "range": POSITIVE}
    )

    @property
    def effective_log_dir(self) -> str:
        return self.log_dir or os.path.join(self.output_dir, LOGS_DIR)

    @property
    def effective_eval_batch_size(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size

    @property
    def effective_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.model_name == DEMO_MODEL else 3e-5

    @property
    def effective_adapter_learning_rate(self) -> float:
        """ADAPTER_LEARNING_RATE, else 10x the default full fine-tuning rate (LoRA trains few weights from zero)."""
        if self.adapter_learning_rate is not None:
            return self.adapter_learning_rate
        return 10 * (1e-3 if self.model_name == DEMO_MODEL else 3e-5)

    @property
    def optimizer_learning_rate(self) -> float:
        """The rate the optimizer gets: LEARNING_RATE in full fine-tuning, the adapter's rate with an adapter."""
        return self.effective_learning_rate if self.adapter == "none" else self.effective_adapter_learning_rate

    @functools.cached_property
    def effective_resume(self) -> Resume:
        """RESUME parsed once, when the settings are loaded (`_validate`): a named local checkpoint that rotation
        deletes during the run must not fail the run's end, where metrics.json records RESUME."""
        return parse_resume(self.resume)


def on_vertex() -> bool:
    """True inside a Vertex AI custom job (it sets CLOUD_ML_JOB_ID and the AIP_* variables)."""
    return bool(os.environ.get("CLOUD_ML_JOB_ID") or vertex_dirs(os.environ).checkpoints)


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
ENV_NAMES = tuple(name.upper() for name in FIELDS)


def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _parse(name: str, raw: Any, hint: Any) -> Any:
    """Parse one raw value (a string from the environment, or whatever fire produced) into `hint`."""
    env = name.upper()
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(name, raw, inner)
    if origin is Literal:
        value = str(raw).strip()
        if value not in args:
            raise UserError(f"{env}={value!r} is not allowed; choose one of: {', '.join(args)}")
        return value
    if origin is tuple:
        items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
        values = tuple(str(i).strip() for i in items if str(i).strip())
        if not values:
            raise UserError(f"{env} is empty; give a comma-separated list")
        if len(values) != len(items):  # `stsb,rte,`: a stray comma is a typo, not a task named ''
            raise UserError(f"{env}={','.join(str(i) for i in items)!r} has an empty entry; remove the stray comma")
        return values
    if origin is dict:
        return _parse_weights(env, raw)
    if hint is bool:
        return parse_bool(env, raw)
    if hint is int:
        allowed: Range | None = FIELDS[name].metadata.get("range")
        try:
            return parse_int(env, raw)
        except UserError as err:  # say what is allowed: the range, and empty where that is the default
            if allowed is None:
                raise
            empty = " or empty" if FIELDS[name].default is None else ""
            raise UserError(f"{err}; it must be {allowed.describe(True)}{empty}") from None
    if hint is float:
        return parse_float(env, raw)
    return str(raw).strip()


def _parse_weights(env: str, raw: Any) -> dict[str, float]:
    """Parse `task=weight,task=weight` (or a dict from a flag) into a mapping."""
    if isinstance(raw, dict):
        pairs = [(str(k), v) for k, v in raw.items()]
    else:
        items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
        pairs = []
        for item in (str(i).strip() for i in items):
            if not item:
                continue
            task, sep, weight = item.partition("=")
            if not sep or not task.strip():
                raise UserError(f"{env} entry {item!r} is malformed; use task=weight pairs, e.g. rte=2,stsb=0.5")
            pairs.append((task.strip(), weight.strip()))
    weights = {}
    for task, weight in pairs:
        weights[task] = parse_float(f"{env} weight for {task!r}", weight)  # its range: _check_ranges
    return weights


def _check_ranges(s: Settings) -> None:
    """Every number setting (and each TASK_WEIGHTS weight) within its field's declared "range"."""
    hints = _type_hints()
    for name, f in FIELDS.items():
        allowed: Range | None = f.metadata.get("range")
        value = getattr(s, name)
        if allowed is None or value is None:
            continue
        integer = int in typing.get_args(hints[name]) or hints[name] is int
        for label, number in (value.items() if isinstance(value, dict) else [(None, value)]):
            if number not in allowed:
                what = name.upper() if label is None else f"{name.upper()} weight for {label!r}"
                raise UserError(f"{what}={number} must be {allowed.describe(integer)}")


def _validate(s: Settings) -> None:
    if s.dataloader_workers is not None and s.dataloader_workers < 0:
        raise UserError(f"DATALOADER_WORKERS={s.dataloader_workers} must be 0 or more (empty = auto)")
    _check_ranges(s)
    if s.max_steps == 0 or s.max_steps < -1:
        raise UserError(f"MAX_STEPS={s.max_steps} must be a positive integer, or -1 to train for NUM_EPOCHS")
    if s.task_weighting != "static" and s.task_weights:
        raise UserError(f"TASK_WEIGHTS is for TASK_WEIGHTING=static; TASK_WEIGHTING={s.task_weighting} learns the "
                        "weights: unset one of them")
    unknown = [t for t in s.report_to if t not in TRACKERS]
    if unknown:
        raise UserError(f"REPORT_TO={unknown[0]!r} is not allowed; choose one or more of: {', '.join(TRACKERS)}")
    if "none" in s.report_to and len(s.report_to) > 1:
        raise UserError(f"REPORT_TO={','.join(s.report_to)}: 'none' turns every tracker off; give it alone")
    if s.quantize and s.adapter == "none":
        raise UserError(f"QUANTIZE={s.quantize} quantizes a frozen base: set ADAPTER=lora or lora_per_task too "
                        "(a quantized base can't be fine-tuned in full)")
    if s.quantize and s.export_merged:
        raise UserError(f"EXPORT_MERGED=true with QUANTIZE={s.quantize}: an adapter can't be merged into a quantized "
                        "base without loss; set EXPORT_MERGED=false (a peft adapter directory) or leave it empty")
    if s.export_merged is False and s.adapter != "none" and s.model_name == DEMO_MODEL:
        raise UserError(DEMO_UNMERGED)
    if s.fsdp and s.quantize:
        raise UserError(f"FSDP=true with QUANTIZE={s.quantize} is not supported (FSDP shards full fine-tuning; a "
                        "quantized base is frozen and its 4/8-bit weights stay unsharded); use QUANTIZE with DDP "
                        "(FSDP=false)")
    if s.fsdp and s.adapter != "none":
        raise UserError(f"FSDP=true with ADAPTER={s.adapter} is not supported (FSDP shards full fine-tuning; an "
                        "adapter checkpoint leaves the frozen base out, which the FSDP load path expects); use the "
                        "adapter with DDP (FSDP=false): only the adapters and heads are trained and reduced")
    if s.gradient_checkpointing and s.adapter == "lora_per_task" and s.sampling == "all_tasks":
        raise UserError("GRADIENT_CHECKPOINTING=true with ADAPTER=lora_per_task and SAMPLING=all_tasks is not "
                        "supported (the backward recomputes every task's blocks through the adapter active last); "
                        "use another SAMPLING, or GRADIENT_CHECKPOINTING=false")
    if s.sampling_cap is not None and not STRATEGIES[s.sampling].takes_cap:
        raise UserError(f"SAMPLING_CAP={s.sampling_cap} applies to SAMPLING=proportional or temperature, not "
                        f"SAMPLING={s.sampling}; unset SAMPLING_CAP or choose one of those")
    if s.job_dir:
        storage.parse_uri(s.job_dir)  # gs://bucket/prefix, or one line saying what is wrong
    _ = s.effective_resume  # RESUME parsed here, once: a local checkpoint that is not there is one line now


def load_settings(
    flags: dict[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
    dotenv_path: str | os.PathLike[str] | None = ".env",
) -> tuple[Settings, dict[str, str]]:
    """Resolve settings and where each came from (`default`, `.env`, `env` or `flag`)."""
    environ = os.environ if environ is None else environ
    dotenv = read_dotenv(dotenv_path)
    flags = dict(flags or {})
    unknown = sorted(set(flags) - set(FIELDS))
    if unknown:
        raise UserError(
            f"unknown flag(s) --{', --'.join(unknown)}; allowed: --{', --'.join(FIELDS)}"
        )
    hints = _type_hints()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in FIELDS:
        env = name.upper()
        if name in flags:
            raw, source = flags[name], "flag"
        elif env in environ:
            raw, source = environ[env], "env"
        elif env in dotenv:
            raw, source = dotenv[env], Path(dotenv_path).name
        else:
            sources[name] = "default"
            continue
        if hints[name] in (bool, int, float) and isinstance(raw, str) and not raw.strip():
            sources[name] = "default"  # NAME= (empty) means the default
            continue
        values[name] = _parse(name, raw, hints[name])
        sources[name] = source
    settings = Settings(**values)
    _validate(settings)
    return settings, sources


def as_record(settings: Settings) -> dict[str, Any]:
    """The settings as metrics.json keeps them (JSON values), with the effective learning rate, log dir and resume."""
    record = {name: list(v) if isinstance(v, tuple) else v for name, v in dataclasses.asdict(settings).items()}
    record.update(learning_rate=settings.effective_learning_rate,
                  adapter_learning_rate=settings.effective_adapter_learning_rate,
                  eval_batch_size=settings.effective_eval_batch_size, log_dir=settings.effective_log_dir,
                  resume=settings.effective_resume.text)
    return record


def describe(settings: Settings, sources: dict[str, str]) -> str:
    """A table of the effective settings and where each came from."""
    rows = []
    for name in FIELDS:
        value = getattr(settings, name)
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, dict):
            value = ",".join(f"{k}={v:g}" for k, v in value.items())
        shown = "" if value is None else str(value)
        if name == "eval_batch_size" and value is None:
            shown = f"{settings.effective_eval_batch_size} (auto)"
        elif name == "learning_rate" and value is None:
            shown = f"{settings.effective_learning_rate:g} (auto)"
        elif name == "log_dir" and value is None:
            shown = f"{settings.effective_log_dir} (auto)"
        elif name == "tasks" and value is None:
            shown = "every task of TASKS_FILE (auto)" if settings.tasks_file else "the demo tasks (auto)"
        elif name == "adapter_learning_rate" and value is None:
            shown = f"{settings.effective_adapter_learning_rate:g} (auto)"
        elif name == "resume" and not value:
            shown = f"{settings.effective_resume.text} (auto)"
        rows.append((name.upper(), shown, sources.get(name, "default")))
    width = max(len(r[0]) for r in rows)
    vwidth = min(60, max(len(r[1]) for r in rows))
    return "\n".join(f"{n:<{width}}  {v:<{vwidth}}  [{s}]" for n, v, s in rows)
