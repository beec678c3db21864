"""The one `on_save`: what follows the Trainer's writing of `checkpoint-<step>`, in the only safe order.

1. link the model selection (`best/`) into the checkpoint, so the checkpoint resumes with the selection it had;
2. write the completion marker, whose checksums then cover `best/` too: resume takes only a marked checkpoint;
3. queue the upload, which commits only what the marker lists.

Marking before linking would leave `best/` outside the checksums (a resume would lose it, or an upload would send
it unverified); queueing before marking would upload a checkpoint the bucket cannot verify. Callbacks run in list
order, which is easy to break without noticing; here the order is three lines in one method.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainer.checkpoints.local import ChecksumCache, mark_complete
from trainer.checkpoints.mirror import CloudSyncCallback
from trainer.layout import RunDirs


class CompleteMarker:
    """Writes a checkpoint's completion marker. `also`: files of OUTPUT_DIR copied into each checkpoint first
    (its run.json: a checkpoint copied alone still says which run, with which settings, it belongs to)."""

    def __init__(self, also: tuple[str, ...] = ()) -> None:
        self.sums = ChecksumCache()  # the hard-linked best/ files are read once, not at every save
        self.also = also

    def mark(self, checkpoint: Path, step: int, output_dir: str | Path) -> None:
        for name in self.also:
            if (Path(output_dir) / name).is_file():
                shutil.copyfile(Path(output_dir) / name, checkpoint / name)
        mark_complete(checkpoint, step, self.sums)


class SaveSequence(TrainerCallback):
    """Runs the save steps in order (see the module docstring). `link_selection(checkpoint)` puts the selection
    into it (none with SELECT_BEST=last); `upload` mirrors the checkpoint to the bucket (none without JOB_DIR)."""

    def __init__(self, marker: CompleteMarker, link_selection: Callable[[Path], None] | None = None,
                 upload: CloudSyncCallback | None = None) -> None:
        self.marker = marker
        self.link_selection = link_selection
        self.upload = upload

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> TrainerControl:
        checkpoint = RunDirs(args.output_dir).checkpoint(state.global_step)
        if args.should_save and checkpoint.is_dir():  # each machine's main process (or node's, with save_on_each_node)
            if self.link_selection:
                self.link_selection(checkpoint)
            self.marker.mark(checkpoint, state.global_step, args.output_dir)
        if self.upload:
            self.upload.queue_checkpoint(args, state)  # rank 0 only; says so if the checkpoint is missing
        return control
