"""The Trainer's arguments from the settings: precision, trackers, the evaluation and save cadence."""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import nn
from transformers import TrainingArguments

from trainer.checkpoints.local import trained_steps
from trainer.config.settings import Settings
from trainer.errors import UserError
from trainer.model.gpu import gpu_arguments
from trainer.model.precision import compute_precision
from trainer.model.sharding import fsdp_arguments
from trainer.sampling import STRATEGIES


def precision_flags(precision: str) -> dict[str, bool]:
    """The Trainer's autocast: bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU (PRECISION=auto)."""
    precision = compute_precision(precision)
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": not torch.cuda.is_available()}


def check_trackers(trackers: tuple[str, ...]) -> None:
    """Every REPORT_TO tracker must be installed: the Trainer would only fail once the model is built."""
    for name in trackers:
        if name != "none" and importlib.util.find_spec(name) is None:
            raise UserError(f"REPORT_TO={name} needs the {name} package: pip install {name}")


def training_arguments(settings: Settings, encoder: nn.Module | None = None) -> TrainingArguments:
    """The stock Trainer's arguments; LOG_DIR goes to the TensorBoard callback (`MultitaskTrainer(log_dir=...)`).
    `encoder`: the shared encoder, whose transformer blocks are FSDP's units (FSDP=true)."""
    return TrainingArguments(
        output_dir=settings.output_dir,
        num_train_epochs=settings.num_epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.effective_eval_batch_size,
        learning_rate=settings.optimizer_learning_rate,  # with an adapter, ADAPTER_LEARNING_RATE
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,
        lr_scheduler_type="linear",
        eval_strategy="steps",
        save_strategy="steps",
        logging_strategy="steps",
        logging_steps=settings.logging_steps,
        logging_nan_inf_filter=False,  # not averaged away (a host sync per step): MultitaskTrainer stops the run
        save_total_limit=settings.save_total_limit,
        report_to=list(settings.report_to),  # ["none"]: no tracker
        seed=settings.seed,
        remove_unused_columns=False,
        # the Trainer calls MultitaskModel.activation_checkpointing_enable, which passes it on to the encoder
        activation_checkpointing=settings.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if settings.gradient_checkpointing else None,
        # one head per step leaves the others without a gradient; all_tasks steps use every head
        ddp_find_unused_parameters=STRATEGIES[settings.sampling].one_task_per_step,
        **gpu_arguments(settings.dataloader_workers),  # tf32, fused AdamW, pinned memory, workers on CUDA
        **precision_flags(settings.precision),
        **fsdp_arguments(settings.fsdp, encoder),
    )


EVALUATIONS_PER_RUN = 10


def planned_steps(args: TrainingArguments, steps_per_epoch: int) -> int:
    """The run's last step: MAX_STEPS, else NUM_EPOCHS' steps."""
    return args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)


def default_interval(args: TrainingArguments, steps_per_epoch: int) -> int:
    """Evaluate (and checkpoint) about EVALUATIONS_PER_RUN times a run, or every epoch where that is more often:
    once an epoch gives a 3-epoch run 3 points, too few for model selection to choose from."""
    return max(1, min(steps_per_epoch, math.ceil(planned_steps(args, steps_per_epoch) / EVALUATIONS_PER_RUN)))


def finished_run(checkpoint: str, args: TrainingArguments, steps_per_epoch: int) -> bool:
    """The checkpoint is at (or past) the run's last step: MAX_STEPS, else NUM_EPOCHS' steps."""
    return trained_steps(checkpoint) >= planned_steps(args, steps_per_epoch)
