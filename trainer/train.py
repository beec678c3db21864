"""The training run, top to bottom: tasks, data, encoder, Trainer, final metrics and export."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainingArguments,
)
from transformers.trainer_utils import set_seed

from trainer import demo, storage
from trainer.checkpoint_sync import (
    CloudDirs,
    CloudSyncCallback,
    check_named_checkpoint,
    download_named_checkpoint,
    resolve_cloud_dirs,
    resume_from_bucket,
)
from trainer.checkpoints import (
    CompleteMarkerCallback,
    checkpoint_step,
    latest_complete_checkpoint,
    resolve_resume,
    trained_steps,
    verified_checkpoint,
    warn_fresh_start,
    write_text_atomically,
)
from trainer.console import EvalTableCallback, summary
from trainer.data import MultitaskDataset, TaskBatchCollator, tokenize_split
from trainer.errors import UserError
from trainer.gpu import compile_encoder, gpu_arguments
from trainer.inference import EXPORT_DIR, FINAL_MODEL_DIR, check_export_target, run_outputs
from trainer.metrics import METRICS_FILE, metrics_by_task
from trainer.model_card import write_cards
from trainer.modeling import MultitaskModel
from trainer.multitask_trainer import AGGREGATE_METRIC, FinalSaveCallback, MultitaskTrainer, TrainingDiverged
from trainer.packing import Packer, packer_for
from trainer.positions import check_max_seq_length
from trainer.preemption import PreemptionCallback
from trainer.remote_checkpoints import remove_partial_downloads
from trainer.report import REPORT_FILE, SETTINGS_FILE, write_report, write_settings
from trainer.run_claim import claim_run
from trainer.run_identity import RUN_FILE
from trainer.sampling import STRATEGIES
from trainer.selection import BestSelection
from trainer.settings import DEMO_MODEL, Settings, as_record
from trainer.spec import SPLITS, TaskData, TaskSpec
from trainer.tasks import describe_choice, read_split, resolve_source, resolve_tasks
from trainer.writable import check_writable_dir

logger = logging.getLogger(__name__)
EXPORT_WHAT = "OUTPUT_DIR/export"  # how errors name the run's export folder
PREEMPTION_UPLOAD_TIMEOUT = 25.0  # seconds after SIGTERM: Vertex AI gives a preempted worker 30 s


class Preempted(Exception):
    """Training stopped on SIGTERM after saving (and, with JOB_DIR, uploading) a checkpoint."""


def _unloadable(model_name: str, err: Exception) -> UserError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(
        f"MODEL_NAME={model_name!r} can't be loaded ({reason}); use a local model directory, "
        f"a Hugging Face hub id (needs network), or '{DEMO_MODEL}'"
    )


def load_tokenizer(
    model_name: str, tasks: list[TaskSpec] = ()
) -> tuple[PreTrainedTokenizerBase, PreTrainedConfig | None]:
    """The tokenizer (and config) of MODEL_NAME, checked by every task's kind; no weights are loaded.

    A tokenizer without a pad token (GPT-2 and most decoders) pads with EOS.
    """
    if model_name == DEMO_MODEL:
        return demo.build_demo_tokenizer(), None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        config = AutoConfig.from_pretrained(model_name)
    except (OSError, ValueError) as err:
        raise _unloadable(model_name, err) from None
    for task in tasks:
        task.kind.check_model(task, config, tokenizer)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, config


def load_encoder(
    model_name: str, tasks: list[TaskSpec] = (), max_seq_length: int | None = None
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The tokenizer and base encoder: the offline demo, a local directory or a hub id.

    Each task's kind checks the config and tokenizer, and MAX_SEQ_LENGTH is checked against the model's
    positions, before any weights are loaded.
    """
    tokenizer, config = load_tokenizer(model_name, tasks)
    if max_seq_length is not None:
        check_max_seq_length(max_seq_length, config, tokenizer, f"MODEL_NAME={model_name}")
    if config is None:  # the demo
        encoder = demo.build_demo_encoder(len(tokenizer))
        for task in tasks:
            task.kind.check_model(task, encoder.config, tokenizer)
        return tokenizer, encoder
    try:
        encoder = AutoModel.from_pretrained(model_name, config=config)
    except (OSError, ValueError, EOFError, SafetensorError) as err:  # SafetensorError: truncated or damaged weights
        raise _unloadable(model_name, err) from None
    if tokenizer.pad_token_id is not None:
        encoder.config.pad_token_id = tokenizer.pad_token_id  # every task config copies it
    return tokenizer, encoder


def read_all_splits(
    tasks: list[TaskSpec], settings: Settings
) -> tuple[list[TaskSpec], dict[str, dict[str, TaskData]]]:
    """Read and validate every split before anything is written to disk, then apply the caps.

    Returns the tasks as their data completes them (a declared source's ClassLabel names become its
    `labels`, which the model's heads need) and their rows.
    """
    tasks = [resolve_source(t) for t in tasks]
    rows = {t.name: {split: read_split(t, split, settings.data_dir) for split in SPLITS} for t in tasks}
    for splits in rows.values():
        splits["train"] = splits["train"].limit(settings.max_train_samples, seed=settings.seed)
        splits["dev"] = splits["dev"].limit(settings.max_eval_samples)
    return tasks, rows


def precision_flags(precision: str) -> dict[str, bool]:
    """bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU (PRECISION=auto)."""
    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision in ("bf16", "fp16") and not cuda:
        raise UserError(f"PRECISION={precision} needs a CUDA GPU; use auto or fp32 on this machine")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": not cuda}


def check_trackers(trackers: tuple[str, ...]) -> None:
    """Every REPORT_TO tracker must be installed: the Trainer would only fail once the model is built."""
    for name in trackers:
        if name != "none" and importlib.util.find_spec(name) is None:
            raise UserError(f"REPORT_TO={name} needs the {name} package: pip install {name}")


def training_arguments(settings: Settings) -> TrainingArguments:
    os.environ["TENSORBOARD_LOGGING_DIR"] = settings.effective_log_dir
    return TrainingArguments(
        output_dir=settings.output_dir,
        num_train_epochs=settings.num_epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.effective_eval_batch_size,
        learning_rate=settings.effective_learning_rate,
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
        # one head per step leaves the others without a gradient; all_tasks steps use every head
        ddp_find_unused_parameters=STRATEGIES[settings.sampling].one_task_per_step,
        **gpu_arguments(settings.dataloader_workers),  # tf32, fused AdamW, pinned memory, workers on CUDA
        **precision_flags(settings.precision),
    )


def resume_checkpoint(settings: Settings, args: TrainingArguments, dirs: CloudDirs | None) -> str | None:
    """The checkpoint to resume from: RESUME=auto takes the newest intact one, local or in the bucket.

    Each machine's main process verifies it (checksums), sets damaged ones aside, downloads from the bucket;
    the other processes then take the checkpoint it left in place.
    """
    mode = settings.effective_resume
    with args.main_process_first(local=True, desc="finding the checkpoint to resume from"):
        if args.local_process_index != 0:  # the main process has verified, set aside or downloaded it
            if mode == "auto":
                found = latest_complete_checkpoint(settings.output_dir)
                return str(found) if found else None
            if storage.is_uri(mode):
                return str(Path(settings.output_dir) / storage.parse_uri(mode).name)
            return None if mode == "never" else mode
        remove_partial_downloads(settings.output_dir)
        if storage.is_uri(mode):  # one given checkpoint in a bucket
            uri = storage.parse_uri(mode)
            return str(download_named_checkpoint(storage.open_store(uri), mode, settings.output_dir))
        if mode != "auto" or dirs is None:
            return resolve_resume(mode, settings.output_dir)
        local, set_aside = verified_checkpoint(settings.output_dir)
        local_step = checkpoint_step(local.name) if local else -1
        found = resume_from_bucket(storage.open_store(dirs.checkpoints), dirs.checkpoints, settings.output_dir,
                                   newer_than=local_step)
        if found:
            logger.info("downloaded %s from %s", found.name, dirs.checkpoints)
            return str(found)
        if local is None and set_aside:
            warn_fresh_start(f"{settings.output_dir} or {dirs.checkpoints}", set_aside)
        return str(local) if local else None


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


def already_finished(settings: Settings, checkpoint: str, args: TrainingArguments) -> dict[str, Any]:
    """Nothing to train: say so (one line) and return the run's metrics.json, if it has one."""
    metrics = Path(settings.output_dir) / METRICS_FILE
    report = json.loads(metrics.read_text(encoding="utf-8")) if metrics.is_file() else {}
    if args.process_index == 0:
        exported = "" if report else (f"; it has no {METRICS_FILE} or export: python -m trainer export "
                                      f"--model_dir={checkpoint} writes one")
        print(f"the run in {settings.output_dir} already finished at step {trained_steps(checkpoint)}; nothing to do "
              f"(raise MAX_STEPS or NUM_EPOCHS to train on, or RESUME=never to start over){exported}", flush=True)
    return report


def diverged_error(diverged: TrainingDiverged, output_dir: str, dirs: CloudDirs | None) -> TrainingDiverged:
    """The one line of a run whose loss became NaN or inf: the step, the task and the last finite checkpoint."""
    last = latest_complete_checkpoint(output_dir)  # saves stop at the first non-finite loss: this one is finite
    advice = "lower LEARNING_RATE or check the task's data"
    if last:
        where = f"the last finite checkpoint is {last}" + (f" (also in {dirs.checkpoints})" if dirs else "")
        advice += f", then resume with RESUME={last}"
    else:
        where = "no checkpoint was saved before it"
    diverged.args = (f"{diverged.args[0]}; {where}; {advice}",)
    return diverged


def write_metrics(path: Path, metrics: dict[str, float], tasks: list[TaskSpec], step: int,
                  selection: BestSelection, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The final dev metrics (`tasks`, `average`), the selected ones (`selected`: step and metrics per task) and
    the run's `settings` (what the model cards show)."""
    per_task = metrics_by_task(metrics, tasks)
    report = {
        "global_step": step,
        AGGREGATE_METRIC: metrics[f"eval_{AGGREGATE_METRIC}"],
        "main_metric": {t.name: t.metric for t in tasks},
        "tasks": per_task,
        **selection.report(per_task, step),
        "settings": settings,
    }
    write_text_atomically(path, json.dumps(report, indent=2))
    return report


def output_report(output: Path, log_dir: str) -> Path | None:
    """`OUTPUT_DIR/report.html`; a failure to draw it is logged, and costs the run nothing else."""
    try:
        return write_report(output / REPORT_FILE, log_dir, output / METRICS_FILE, output / SETTINGS_FILE,
                            str(output))
    except Exception as err:  # the model, export and metrics are written: still upload them
        logger.error("could not write %s: %s: %s", output / REPORT_FILE, type(err).__name__, err)
        return None


def outputs(settings: Settings, tasks: list[TaskSpec], report_file: Path | None,
            dirs: CloudDirs | None) -> list[tuple[str, str]]:
    """Where a run's outputs are, for the summary: local paths, then the bucket's."""
    output = Path(settings.output_dir)
    found = [("model", f"{output / FINAL_MODEL_DIR}/"),
             *((f"export {t.name}", f"{output / EXPORT_DIR / t.name}/") for t in tasks),
             ("metrics", str(output / METRICS_FILE)),
             ("report", str(report_file) if report_file else "(not written, see the log)"),
             ("logs", f"{settings.effective_log_dir}/ (tensorboard --logdir {settings.effective_log_dir})")]
    if dirs:
        found += [("bucket model", f"{dirs.model}/ (export/, {METRICS_FILE}, {REPORT_FILE})"),
                  ("bucket logs", f"{dirs.logs}/"), ("bucket ckpts", f"{dirs.checkpoints}/")]
    return found


def train(settings: Settings, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Run one multitask training job; returns the final metrics report."""
    check_trackers(settings.report_to)
    dirs = resolve_cloud_dirs(settings.job_dir, os.environ)
    sync = CloudSyncCallback(dirs, upload_timeout=settings.upload_timeout, log_dir=settings.effective_log_dir,
                             log_upload_seconds=settings.log_upload_seconds) if dirs else None
    if sync:
        sync.check_bucket()  # a missing bucket stops the run here, before anything is read or written
    if storage.is_uri(settings.effective_resume):  # and a missing checkpoint to resume, before the run claims any
        check_named_checkpoint(storage.open_store(storage.parse_uri(settings.effective_resume)),
                               settings.effective_resume)
    check_writable_dir(settings.output_dir, "OUTPUT_DIR")
    check_writable_dir(settings.effective_log_dir, "LOG_DIR")
    check_export_target(Path(settings.output_dir, EXPORT_DIR), EXPORT_WHAT, Path(settings.output_dir),
                        run_outputs(Path(settings.output_dir), settings.effective_log_dir))  # as the final export
    tasks = resolve_tasks(settings.tasks, settings.tasks_file, settings.task_weights)
    tasks, rows = read_all_splits(tasks, settings)  # bad input stops here or in load_encoder, with one line
    set_seed(settings.seed)
    tokenizer, encoder = load_encoder(settings.model_name, tasks, settings.max_seq_length)
    logger.info(describe_choice(tasks, settings.tasks, settings.tasks_file))
    packer = packer_for(encoder, tasks) if settings.packing else None
    if settings.torch_compile:
        compile_encoder(encoder)
    args = training_arguments(settings)
    # OUTPUT_DIR and JOB_DIR are this run's (or it stops with one line) before anything is written to them
    with claim_run(settings, tasks, rows, dirs.checkpoints if dirs else None, writer=args.should_save,
                   store=sync.store if sync else None):
        return _train_claimed(settings, callbacks, tasks, rows, tokenizer, encoder, packer, args, dirs, sync)


def _train_claimed(settings: Settings, callbacks: list[Any] | None, tasks: list[TaskSpec],
                   rows: dict[str, dict[str, TaskData]], tokenizer: PreTrainedTokenizerBase, encoder: PreTrainedModel,
                   packer: Packer | None, args: TrainingArguments, dirs: CloudDirs | None,
                   sync: CloudSyncCallback | None) -> dict[str, Any]:
    resume = resume_checkpoint(settings, args, dirs)
    # once preempted, pending uploads get only what is left of the 30 s grace period
    preemption = PreemptionCallback(
        on_preempt=(lambda signalled_at: sync.hurry(signalled_at + PREEMPTION_UPLOAD_TIMEOUT)) if sync else None
    )

    with args.main_process_first(desc="tokenizing"):
        tokenized = {
            split: {t.name: tokenize_split(t, rows[t.name][split], tokenizer, settings.max_seq_length) for t in tasks}
            for split in SPLITS
        }
    train_set = MultitaskDataset(tokenized["train"])
    eval_sets = {name: MultitaskDataset({name: ds}) for name, ds in tokenized["dev"].items()}

    model = MultitaskModel(encoder, tasks, settings.task_weighting, settings.task_weights)
    selection = BestSelection(settings.select_best, tasks, tokenizer, settings.output_dir)
    trainer = MultitaskTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_sets,
        processing_class=tokenizer,
        data_collator=TaskBatchCollator(tokenizer, tasks, pad_to_multiple_of=8 if not args.use_cpu else None,
                                        packer=packer),
        callbacks=[FinalSaveCallback(), selection, CompleteMarkerCallback(also=(RUN_FILE,)), preemption,
                   *([sync] if sync else []), EvalTableCallback(tasks), *(callbacks or [])],
        tasks=tasks,
        sampling=settings.sampling,
        sampling_temperature=settings.sampling_temperature,
        group_by_length=settings.group_by_length,
        weighting_learning_rate=settings.task_weighting_lr,
    )
    steps_per_epoch = max(1, math.ceil(len(trainer.make_batch_sampler()) / args.gradient_accumulation_steps))
    every = default_interval(args, steps_per_epoch)
    args.save_steps = settings.save_steps or every
    args.eval_steps = settings.eval_steps or every
    logger.info("tasks: %s; %d train examples; %d steps per epoch; evaluating every %d steps, saving every %d%s",
                ", ".join(t.name for t in tasks), len(train_set), steps_per_epoch, args.eval_steps, args.save_steps,
                "" if settings.eval_steps else f" (EVAL_STEPS unset: about {EVALUATIONS_PER_RUN} times a run)")
    if resume and finished_run(resume, args, steps_per_epoch):
        return already_finished(settings, resume, args)
    if args.should_save:
        selection.restore(resume)
    if resume:
        logger.info("resuming from %s", resume)
    if args.should_save:  # what `python -m trainer report` needs to rebuild the report later
        settings_file = write_settings(settings, {t.name: t.metric for t in tasks}, settings.output_dir)
        if sync:
            sync.upload_soon(settings_file, dirs.model.child(SETTINGS_FILE))

    trainer.train(resume_from_checkpoint=resume)
    if trainer.diverged:
        raise diverged_error(trainer.diverged, settings.output_dir, dirs)
    if preemption.preempted:  # exit 143 whatever became of the upload: on_train_end waited what the grace allows
        step = trainer.state.global_step
        bucket = sync.after_preemption(step) if sync and args.should_save else ""
        raise Preempted(f"stopped at step {step} on SIGTERM; checkpoint-{step} saved in {settings.output_dir}"
                        + bucket + "; run again with RESUME=auto to continue")
    metrics = trainer.final_metrics()
    report: dict[str, Any] = {}
    if args.should_save:
        output = Path(settings.output_dir)
        trainer.save_model(str(output / FINAL_MODEL_DIR))
        selection.export(trainer.accelerator.unwrap_model(trainer.model), output / EXPORT_DIR, what=EXPORT_WHAT,
                         output_dir=output, keep=run_outputs(output, settings.effective_log_dir))
        record = as_record(settings)
        report = write_metrics(output / METRICS_FILE, metrics, tasks, trainer.state.global_step, selection, record)
        write_cards(output / EXPORT_DIR, tasks, report, record)  # README.md of each export/<task>
        report_file = output_report(output, settings.effective_log_dir)
        if sync:
            sync.upload_final(output / FINAL_MODEL_DIR, settings.effective_log_dir, output / METRICS_FILE,
                              export_dir=output / EXPORT_DIR, report_file=report_file)
        print(summary(report, tasks, outputs(settings, tasks, report_file, dirs)), flush=True)
        remove_partial_downloads(settings.output_dir)
    return report

