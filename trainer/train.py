"""The training run, top to bottom: tasks, data, encoder, Trainer, final metrics and export."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainingArguments,
)
from transformers.trainer_utils import set_seed

from trainer.checkpoints.local import (
    CompleteMarkerCallback,
)
from trainer.checkpoints.mirror import CloudSyncCallback
from trainer.checkpoints.remote import remove_partial_downloads
from trainer.checkpoints.resume import check_resume, resume_checkpoint
from trainer.config.env import vertex_dirs
from trainer.config.settings import Settings, as_record
from trainer.data.dataset import MultitaskDataset, TaskBatchCollator, tokenize_split
from trainer.data.packing import Packer, packer_for
from trainer.data.read import read_all_splits
from trainer.files import check_writable_dir
from trainer.layout import EXPORT_WHAT, RUN_FILE, BucketDirs, RunDirs, checkpoint_name
from trainer.model.gpu import compile_encoder
from trainer.model.loading import load_encoder
from trainer.model.modeling import MultitaskModel
from trainer.outputs.export import check_export_target, run_outputs
from trainer.outputs.model_card import write_cards
from trainer.outputs.report import output_report, write_settings
from trainer.outputs.selection import BestSelection
from trainer.runs.claim import claim_run
from trainer.tasks.declare import describe_choice, resolve_tasks
from trainer.tasks.spec import SPLITS, TaskData, TaskSpec
from trainer.training.arguments import (
    EVALUATIONS_PER_RUN,
    check_trackers,
    default_interval,
    finished_run,
    training_arguments,
)
from trainer.training.callbacks import FinalSaveCallback
from trainer.training.console import EvalTableCallback, already_finished, outputs, summary
from trainer.training.divergence import diverged_error
from trainer.training.metrics import write_metrics
from trainer.training.preemption import PREEMPTION_UPLOAD_TIMEOUT, Preempted, PreemptionCallback
from trainer.training.trainer import MultitaskTrainer

logger = logging.getLogger(__name__)


def train(settings: Settings, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Run one multitask training job; returns the final metrics report."""
    check_trackers(settings.report_to)
    run = RunDirs(settings.output_dir, settings.effective_log_dir)
    dirs = BucketDirs.resolve(settings.job_dir, vertex_dirs(os.environ))
    sync = CloudSyncCallback(dirs, upload_timeout=settings.upload_timeout, log_dir=settings.effective_log_dir,
                             log_upload_seconds=settings.log_upload_seconds) if dirs else None
    if sync:
        sync.check_bucket()  # a missing bucket stops the run here, before anything is read or written
    check_resume(settings)  # and a missing checkpoint to resume, before the run claims any
    check_writable_dir(settings.output_dir, "OUTPUT_DIR")
    check_writable_dir(settings.effective_log_dir, "LOG_DIR")
    check_export_target(run.export, EXPORT_WHAT, run.output_dir,
                        run_outputs(run.output_dir, run.log_dir))  # as the final export
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
    with claim_run(settings, tasks, rows, dirs, writer=args.should_save, store=sync.store if sync else None):
        return _train_claimed(settings, callbacks, tasks, rows, tokenizer, encoder, packer, args, run, dirs, sync)


def _train_claimed(settings: Settings, callbacks: list[Any] | None, tasks: list[TaskSpec],
                   rows: dict[str, dict[str, TaskData]], tokenizer: PreTrainedTokenizerBase, encoder: PreTrainedModel,
                   packer: Packer | None, args: TrainingArguments, run: RunDirs, dirs: BucketDirs | None,
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
        log_dir=settings.effective_log_dir,
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
            sync.upload_soon(settings_file, dirs.settings)

    trainer.train(resume_from_checkpoint=resume)
    if trainer.diverged:
        raise diverged_error(trainer.diverged, settings.output_dir, dirs)
    if preemption.preempted:  # exit 143 whatever became of the upload: on_train_end waited what the grace allows
        step = trainer.state.global_step
        bucket = sync.after_preemption(step) if sync and args.should_save else ""
        raise Preempted(f"stopped at step {step} on SIGTERM; {checkpoint_name(step)} saved in {settings.output_dir}"
                        + bucket + "; run again with RESUME=auto to continue")
    metrics = trainer.final_metrics()
    report: dict[str, Any] = {}
    if args.should_save:
        trainer.save_model(str(run.model))
        selection.export(trainer.accelerator.unwrap_model(trainer.model), run.export, what=EXPORT_WHAT,
                         output_dir=run.output_dir, keep=run_outputs(run.output_dir, run.log_dir))
        record = as_record(settings)
        report = write_metrics(run.metrics, metrics, tasks, trainer.state.global_step, selection, record)
        write_cards(run.export, tasks, report, record)  # README.md of each export/<task>
        report_file = output_report(run)
        if sync:
            sync.upload_final(run, report=report_file is not None)
        print(summary(report, tasks, outputs(run, tasks, report_file, dirs)), flush=True)
        remove_partial_downloads(settings.output_dir)
    return report
