"""Typed settings from defaults, `.env`, the environment and command-line flags.

Precedence, lowest to highest: default < `.env` < environment variable < flag.
`.env` never overrides a variable that is really set in the environment.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainer import storage
from trainer.env import parse_bool, parse_float, parse_int, read_dotenv
from trainer.errors import UserError
from trainer.sampling import STRATEGIES

SamplingStrategy = Literal[tuple(STRATEGIES)]  # one module per strategy in trainer/sampling/
Precision = Literal["auto", "fp32", "bf16", "fp16"]
TaskWeighting = Literal["static", "uncertainty"]  # trainer.weighting.WEIGHTINGS
SelectBest = Literal["per_task", "average", "last"]  # trainer.selection
TRACKERS = ("tensorboard", "wandb", "mlflow", "none")  # REPORT_TO: what TrainingArguments(report_to=...) gets

DEMO_MODEL = "demo"


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
    num_epochs: float = field(default=3.0, metadata={"help": "Training epochs (ignored when MAX_STEPS > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Total optimizer steps; -1 means use NUM_EPOCHS."})
    batch_size: int = field(default=32, metadata={"help": "Examples per training batch per device."})
    eval_batch_size: int | None = field(
        default=None, metadata={"help": "Examples per evaluation batch per device (length-sorted); empty = 2 x "
                                "BATCH_SIZE."}
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate; empty = 1e-3 for the demo encoder, 3e-5 otherwise."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Truncation bound in tokens (padding is dynamic)."})
    sampling: SamplingStrategy = field(
        default="proportional",
        metadata={"help": "Task sampling: proportional, temperature, uniform, round_robin, or all_tasks (every step "
                  "sums one batch of every task)."},
    )
    sampling_temperature: float = field(
        default=2.0, metadata={"help": "T for SAMPLING=temperature: p(task) ~ batches^(1/T)."}
    )
    task_weights: dict[str, float] = field(
        default_factory=dict, metadata={"help": "Loss weight per task, e.g. 'rte=2,stsb=0.5' (default 1)."}
    )
    task_weighting: TaskWeighting = field(
        default="static",
        metadata={"help": "static (TASK_WEIGHTS) or uncertainty: a learned log-variance per task scales its loss "
                  "(Kendall et al., 2018)."},
    )
    task_weighting_lr: float = field(
        default=0.01, metadata={"help": "Learning rate of the learned loss weights (TASK_WEIGHTING=uncertainty)."}
    )
    select_best: SelectBest = field(
        default="per_task",
        metadata={"help": "What export/<task> holds: per_task (each task's best dev step), average (the best "
                  "eval_average step) or last (the final weights)."},
    )
    group_by_length: bool = field(
        default=True, metadata={"help": "Batch examples of similar length together within a task (sorted within "
                                "windows of 50 batches; batches in random order)."}
    )
    eval_steps: int | None = field(
        default=None, metadata={"help": "Evaluate every N steps; empty = at the end of each epoch."}
    )
    save_steps: int | None = field(
        default=None, metadata={"help": "Checkpoint every N steps; empty = at the end of each epoch."}
    )
    save_total_limit: int | None = field(
        default=3, metadata={"help": "Keep at most N checkpoints (the newest is never deleted)."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every N steps."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Fraction of steps for linear LR warmup."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    precision: Precision = field(
        default="auto", metadata={"help": "auto (bf16/fp16 when the GPU supports it), fp32, bf16 or fp16."}
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
    resume: str = field(
        default="",
        metadata={"help": "auto (newest complete checkpoint), never, or a checkpoint path; empty = auto on "
                  "Vertex AI, never elsewhere."},
    )
    seed: int = field(default=42, metadata={"help": "Seed for weights, sampling schedule and shuffling."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap training examples per task."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap evaluation examples per task."})
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
                                "each checkpoint) while training."}
    )
    upload_timeout: float = field(
        default=600.0, metadata={"help": "Seconds to wait for pending checkpoint uploads at the end."}
    )
    lease_seconds: float = field(
        default=30.0, metadata={"help": "With JOB_DIR: refresh the run's lease on the bucket this often; another run "
                                "takes over a lease not refreshed for 3x this long."}
    )

    @property
    def effective_log_dir(self) -> str:
        return self.log_dir or os.path.join(self.output_dir, "logs")

    @property
    def effective_eval_batch_size(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size

    @property
    def effective_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.model_name == DEMO_MODEL else 3e-5

    @property
    def effective_resume(self) -> str:
        if self.resume:
            return self.resume
        return "auto" if on_vertex() else "never"


def on_vertex() -> bool:
    """True inside a Vertex AI custom job (it sets CLOUD_ML_JOB_ID and the AIP_* variables)."""
    return bool(os.environ.get("CLOUD_ML_JOB_ID") or os.environ.get("AIP_CHECKPOINT_DIR"))


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
        return values
    if origin is dict:
        return _parse_weights(env, raw)
    if hint is bool:
        return parse_bool(env, raw)
    if hint is int:
        return parse_int(env, raw)
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
        weights[task] = parse_float(f"{env} weight for {task!r}", weight, minimum=0.0)
    return weights


def _validate(s: Settings) -> None:
    positive = {"batch_size": s.batch_size, "max_seq_length": s.max_seq_length, "logging_steps": s.logging_steps}
    optional_positive = {
        "eval_batch_size": s.eval_batch_size,
        "eval_steps": s.eval_steps,
        "save_steps": s.save_steps,
        "save_total_limit": s.save_total_limit,
        "max_train_samples": s.max_train_samples,
        "max_eval_samples": s.max_eval_samples,
    }
    if s.dataloader_workers is not None and s.dataloader_workers < 0:
        raise UserError(f"DATALOADER_WORKERS={s.dataloader_workers} must be 0 or more (empty = auto)")
    for name, value in {**positive, **{k: v for k, v in optional_positive.items() if v is not None}}.items():
        if value <= 0:
            raise UserError(f"{name.upper()}={value} must be a positive integer")
    if s.max_steps == 0 or s.max_steps < -1:
        raise UserError(f"MAX_STEPS={s.max_steps} must be a positive integer, or -1 to train for NUM_EPOCHS")
    if s.max_steps == -1 and not s.num_epochs > 0:
        raise UserError(f"NUM_EPOCHS={s.num_epochs} must be > 0 (or set MAX_STEPS)")
    if s.learning_rate is not None and not s.learning_rate > 0:
        raise UserError(f"LEARNING_RATE={s.learning_rate} must be > 0")
    if s.task_weighting != "static" and s.task_weights:
        raise UserError(f"TASK_WEIGHTS is for TASK_WEIGHTING=static; TASK_WEIGHTING={s.task_weighting} learns the "
                        "weights: unset one of them")
    if not s.task_weighting_lr > 0:
        raise UserError(f"TASK_WEIGHTING_LR={s.task_weighting_lr} must be > 0")
    if not s.sampling_temperature > 0:
        raise UserError(f"SAMPLING_TEMPERATURE={s.sampling_temperature} must be > 0")
    if not 0 <= s.warmup_ratio < 1:
        raise UserError(f"WARMUP_RATIO={s.warmup_ratio} must be in [0, 1)")
    if not s.log_upload_seconds > 0:
        raise UserError(f"LOG_UPLOAD_SECONDS={s.log_upload_seconds} must be > 0 seconds")
    unknown = [t for t in s.report_to if t not in TRACKERS]
    if unknown:
        raise UserError(f"REPORT_TO={unknown[0]!r} is not allowed; choose one or more of: {', '.join(TRACKERS)}")
    if "none" in s.report_to and len(s.report_to) > 1:
        raise UserError(f"REPORT_TO={','.join(s.report_to)}: 'none' turns every tracker off; give it alone")
    if not 0 < s.lease_seconds < float("inf"):
        raise UserError(f"LEASE_SECONDS={s.lease_seconds} must be a number of seconds > 0")
    if s.upload_timeout <= 0:
        raise UserError(f"UPLOAD_TIMEOUT={s.upload_timeout} must be > 0 seconds")
    if s.resume not in ("", "auto", "never") and not (storage.is_uri(s.resume) or Path(s.resume).is_dir()):
        raise UserError(f"RESUME={s.resume!r} is not a checkpoint directory; use auto, never or a checkpoint path")


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
    record.update(learning_rate=settings.effective_learning_rate, eval_batch_size=settings.effective_eval_batch_size,
                  log_dir=settings.effective_log_dir, resume=settings.effective_resume)
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
        elif name == "resume" and not value:
            shown = f"{settings.effective_resume} (auto)"
        rows.append((name.upper(), shown, sources.get(name, "default")))
    width = max(len(r[0]) for r in rows)
    vwidth = min(60, max(len(r[1]) for r in rows))
    return "\n".join(f"{n:<{width}}  {v:<{vwidth}}  [{s}]" for n, v, s in rows)
