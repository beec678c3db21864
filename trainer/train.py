"""The training recipe: one multitask run, read top to bottom in phases (as a torchtune recipe's setup, train and
cleanup, or `run_glue.py`'s `main()`), over the components of the packages it imports.

check    what can be checked before anything is read or written: trackers, the bucket, RESUME, OUTPUT_DIR, LOG_DIR
load     the tasks, their data (bad input stops here, with one line), the encoder and its adapter's check; the
         TrainingArguments
claim    OUTPUT_DIR and JOB_DIR become this run's, or it stops with one line (runs/claim.py)
setup    the checkpoint to resume from, the tokenized splits, the model and the Trainer with its callbacks
train    the stock `Trainer.train` (our hooks are in training/trainer.py); divergence and SIGTERM end it here
cleanup  the final model, each task's export, metrics.json, model cards, the report, and their upload

Only `__main__.py` imports this module: it is the recipe, not a library.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import AbstractContextManager
from typing import Any

from transformers.trainer_utils import set_seed

from trainer.checkpoints.mirror import CloudSyncCallback
from trainer.checkpoints.remote import remove_partial_downloads
from trainer.checkpoints.resume import check_resume, resume_checkpoint
from trainer.checkpoints.save_sequence import CompleteMarker, SaveSequence
from trainer.config.env import process_count, vertex_dirs
from trainer.config.settings import Settings, as_record
from trainer.data.dataset import MultitaskDataset, TaskBatchCollator, tokenize_split
from trainer.data.packing import packer_for
from trainer.data.read import read_all_splits
from trainer.files import check_writable_dir
from trainer.layout import EXPORT_WHAT, RUN_FILE, BucketDirs, RunDirs, checkpoint_name
from trainer.model.adapters import ADAPTERS, LoraOptions
from trainer.model.base_record import record_base
from trainer.model.gpu import compile_encoder
from trainer.model.loading import load_encoder
from trainer.model.modeling import MultitaskModel
from trainer.model.precision import base_dtype, compute_precision, train_in_fp32
from trainer.model.quantize import check_quantize
from trainer.model.sharding import check_fsdp, check_resume_format, unsharded
from trainer.outputs.export import check_export_target, run_outputs
from trainer.outputs.export_form import export_merged
from trainer.outputs.model_card import write_cards
from trainer.outputs.report import output_report, write_settings
from trainer.outputs.selection import BestSelection
from trainer.runs.claim import claim_run
from trainer.tasks.declare import describe_choice, resolve_tasks
from trainer.tasks.spec import SPLITS
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
from trainer.training.trainer import MultitaskTrainer, leave_process_group

logger = logging.getLogger(__name__)


def train(settings: Settings, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Run one multitask training job; returns what metrics.json holds (empty on processes that do not save).
    `callbacks`: more Trainer callbacks, after the run's own."""
    recipe = TrainingRecipe(settings)
    recipe.check()
    recipe.load()
    try:
        with recipe.claim():
            if not recipe.setup(callbacks or []):
                return already_finished(settings, recipe.resume, recipe.args)
            recipe.train()
            return recipe.cleanup()
    finally:
        leave_process_group()


class TrainingRecipe:
    """The phases of `train`, in the order they run; each one's results are attributes the later ones use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run = RunDirs(settings.output_dir, settings.effective_log_dir)
        self.dirs = BucketDirs.resolve(settings.job_dir, vertex_dirs(os.environ))  # None without JOB_DIR or AIP_*
        self.sync = CloudSyncCallback(self.dirs, upload_timeout=settings.upload_timeout, log_dir=self.run.log_dir,
                                      log_upload_seconds=settings.log_upload_seconds) if self.dirs else None

    # -- check: before anything is read or written ---------------------------------------------------------------

    def check(self) -> None:
        s, run = self.settings, self.run
        check_trackers(s.report_to)
        check_fsdp(s.fsdp, process_count(os.environ))
        check_quantize(s.quantize)  # a CUDA GPU and bitsandbytes
        if self.sync:
            self.sync.check_bucket()  # a missing bucket stops the run here
        check_resume(s)  # and a missing checkpoint to resume, before the run claims any
        check_writable_dir(s.output_dir, "OUTPUT_DIR")
        check_writable_dir(s.effective_log_dir, "LOG_DIR")
        check_export_target(run.export, EXPORT_WHAT, run.output_dir,
                            run_outputs(run.output_dir, run.log_dir))  # as the final export will

    # -- load: tasks, data, encoder --------------------------------------------------------------------------------

    def load(self) -> None:
        s = self.settings
        tasks = resolve_tasks(s.tasks, s.tasks_file, s.task_weights)
        self.tasks, self.rows = read_all_splits(tasks, s)  # bad input stops here or in load_encoder, with one line
        set_seed(s.seed)
        self.tokenizer, self.encoder = load_encoder(s.model_name, self.tasks, s.max_seq_length, s.quantize,
                                                    s.gradient_checkpointing,
                                                    dtype=base_dtype(s.adapter, compute_precision(s.precision)))
        self.base = record_base(s.model_name, self.encoder, s.seed)  # before it trains: what run.json records
        self.adapter = ADAPTERS[s.adapter](LoraOptions.from_settings(s), [t.name for t in self.tasks])
        self.adapter.check(self.encoder)  # a LoRA target the model lacks stops here, before anything is written
        for task in self.tasks:  # so does a row MAX_SEQ_LENGTH can't hold (a question leaving no room for a context)
            for split in SPLITS:
                task.kind.check_lengths(task, self.rows[task.name][split], self.tokenizer, s.max_seq_length)
        logger.info(describe_choice(self.tasks, s.tasks, s.tasks_file))
        self.packer = packer_for(self.encoder, self.tasks) if s.packing else None
        if s.torch_compile:
            compile_encoder(self.encoder)
        self.args = training_arguments(s, self.encoder)

    # -- claim: OUTPUT_DIR and JOB_DIR are this run's before anything is written to them ---------------------------

    def claim(self) -> AbstractContextManager[Any]:
        return claim_run(self.settings, self.tasks, self.rows, self.dirs, writer=self.args.should_save,
                         store=self.sync.store if self.sync else None, base=self.base.identity())

    # -- setup: the checkpoint to resume from, data sets, model, Trainer ------------------------------------------

    def setup(self, callbacks: list[Any]) -> bool:
        """Build the Trainer; False when the checkpoint to resume from is already the run's end."""
        s, args, tasks = self.settings, self.args, self.tasks
        self.resume = resume_checkpoint(s, args, self.dirs)
        check_resume_format(self.resume, s.fsdp)
        with args.main_process_first(desc="tokenizing"):
            tokenized = {
                split: {t.name: tokenize_split(t, self.rows[t.name][split], self.tokenizer, s.max_seq_length)
                        for t in tasks}
                for split in SPLITS
            }
        train_set = MultitaskDataset(tokenized["train"])
        eval_sets = {name: MultitaskDataset({name: ds}) for name, ds in tokenized["dev"].items()}

        self.selection = BestSelection(s.select_best, tasks, self.tokenizer, s.output_dir)
        sync = self.sync
        # once preempted, pending uploads get only what is left of the 30 s grace period
        self.preemption = PreemptionCallback(
            on_preempt=(lambda signalled_at: sync.hurry(signalled_at + PREEMPTION_UPLOAD_TIMEOUT)) if sync else None
        )
        saves = SaveSequence(CompleteMarker(also=(RUN_FILE,)), link_selection=self.selection.link_into, upload=sync)
        model = MultitaskModel(self.encoder, tasks, s.task_weighting, s.task_weights, adapter=self.adapter)
        model.base = self.base  # an adapter checkpoint's multitask.json names the base to load again
        if upcast := train_in_fp32(model):  # heads (and adapters) built in a half-precision base's dtype
            logger.info("%d trained parameters made fp32 (the optimizer's master weights): %s", len(upcast),
                        ", ".join(upcast[:3]) + (", ..." if len(upcast) > 3 else ""))
        if description := self.adapter.describe(self.encoder):
            logger.info(description)
        self.trainer = MultitaskTrainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=eval_sets,
            processing_class=self.tokenizer,
            data_collator=TaskBatchCollator(self.tokenizer, tasks, pad_to_multiple_of=None if args.use_cpu else 8,
                                            packer=self.packer),
            callbacks=[FinalSaveCallback(), self.selection, saves, self.preemption, *([sync] if sync else []),
                       EvalTableCallback(tasks), *callbacks],
            tasks=tasks,
            sampling=s.sampling,
            sampling_temperature=s.sampling_temperature,
            sampling_cap=s.sampling_cap,
            group_by_length=s.group_by_length,
            weighting_learning_rate=s.task_weighting_lr,
            log_dir=self.run.log_dir,
        )
        steps_per_epoch = max(1, math.ceil(len(self.trainer.make_batch_sampler()) / args.gradient_accumulation_steps))
        every = default_interval(args, steps_per_epoch)
        args.save_steps = s.save_steps or every
        args.eval_steps = s.eval_steps or every
        logger.info("tasks: %s; %d train examples; %d steps per epoch; evaluating every %d steps, saving every %d%s",
                    ", ".join(t.name for t in tasks), len(train_set), steps_per_epoch, args.eval_steps,
                    args.save_steps,
                    "" if s.eval_steps else f" (EVAL_STEPS unset: about {EVALUATIONS_PER_RUN} times a run)")
        if self.resume and finished_run(self.resume, args, steps_per_epoch):
            return False
        if args.should_save:
            self.selection.restore(self.resume)
        if self.resume:
            logger.info("resuming from %s", self.resume)
        if args.should_save:  # what `python -m trainer report` needs to rebuild the report later
            settings_file = write_settings(s, {t.name: t.metric for t in tasks}, s.output_dir)
            if sync:
                sync.upload_soon(settings_file, self.dirs.settings)
        return True

    # -- train: the stock Trainer loop -----------------------------------------------------------------------------

    def train(self) -> None:
        trainer = self.trainer
        trainer.train(resume_from_checkpoint=self.resume)
        if trainer.diverged:
            raise diverged_error(trainer.diverged, self.settings.output_dir, self.dirs)
        if self.preemption.preempted:  # exit 143 whatever became of the upload: on_train_end waited what it could
            step = trainer.state.global_step
            bucket = self.sync.after_preemption(step) if self.sync and self.args.should_save else ""
            raise Preempted(f"stopped at step {step} on SIGTERM; {checkpoint_name(step)} saved in "
                            f"{self.settings.output_dir}{bucket}; run again with RESUME=auto to continue")

    # -- cleanup: final model, exports, metrics.json, cards, report, upload ---------------------------------------

    def cleanup(self) -> dict[str, Any]:
        trainer, run, tasks = self.trainer, self.run, self.tasks
        metrics = trainer.final_metrics()
        trainer.save_model(str(run.model))  # every process: FSDP gathers the weights from all of them
        model = unsharded(trainer.accelerator.unwrap_model(trainer.model))  # FSDP: full weights on the main process
        if not self.args.should_save:
            return {}
        merged = export_merged(self.settings.export_merged, model)
        self.selection.export(model, run.export, merged, what=EXPORT_WHAT, output_dir=run.output_dir,
                              keep=run_outputs(run.output_dir, run.log_dir))
        record = as_record(self.settings)
        run_metrics = write_metrics(run.metrics, metrics, tasks, trainer.state.global_step, self.selection, record)
        write_cards(run.export, tasks, run_metrics, record)  # README.md of each export/<task>
        report_file = output_report(run)
        if self.sync:
            self.sync.upload_final(run, report=report_file is not None)
        print(summary(run_metrics, tasks, outputs(run, tasks, report_file, self.dirs)), flush=True)
        remove_partial_downloads(self.settings.output_dir)
        return run_metrics.to_dict()
