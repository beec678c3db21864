"""The save sequence (checkpoints/save_sequence.py): after the Trainer writes checkpoint-<step>, the selection is
linked into it, then the completion marker is written, then the upload is queued, in that order, from one on_save."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerControl, TrainerState, TrainingArguments

from trainer.checkpoints.local import is_complete, marker_files
from trainer.checkpoints.save_sequence import CompleteMarker, SaveSequence
from trainer.files import link_tree
from trainer.layout import BEST_DIR, COMPLETE_MARKER, RUN_FILE, SELECTION_FILE, RunDirs


def _written_checkpoint(out: Path, step: int) -> Path:
    """What the Trainer's save leaves: weights and state, no marker yet."""
    checkpoint = RunDirs(out).checkpoint(step)
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


class Recorder:
    """Stands in for the bucket mirror (its own tests upload for real, to the emulator): records what the checkpoint
    held at the moment its upload was queued."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, set[str]]] = []

    def queue_checkpoint(self, args: TrainingArguments, state: TrainerState) -> None:
        checkpoint = RunDirs(args.output_dir).checkpoint(state.global_step)
        listed = set(marker_files(checkpoint) or {})
        self.seen.append((state.global_step, is_complete(checkpoint), listed))


def test_selection_is_linked_then_marked_then_queued(tmp_path: Path) -> None:
    out = tmp_path / "out"
    best = RunDirs(out).best
    (best / "task_a").mkdir(parents=True)
    (best / "task_a" / "model.safetensors").write_bytes(b"best weights")
    (best / SELECTION_FILE).write_text("{}")
    (out / RUN_FILE).write_text('{"run_id": "r1"}')
    checkpoint = _written_checkpoint(out, 4)
    order: list[str] = []

    def link(target: Path) -> None:
        order.append("link")
        assert not (target / COMPLETE_MARKER).exists()  # linked before the marker, so the marker covers best/
        link_tree(best, target / BEST_DIR)

    class Marker(CompleteMarker):
        def mark(self, checkpoint: Path, step: int, output_dir: str | Path) -> None:
            order.append("mark")
            super().mark(checkpoint, step, output_dir)

    upload = Recorder()
    args = TrainingArguments(output_dir=str(out), report_to=[], use_cpu=True)
    SaveSequence(Marker(also=(RUN_FILE,)), link_selection=link, upload=upload).on_save(
        args, TrainerState(global_step=4, is_world_process_zero=True), TrainerControl())

    assert order == ["link", "mark"]
    [(step, complete, listed)] = upload.seen
    assert step == 4 and complete  # queued only once marked
    assert {f"{BEST_DIR}/task_a/model.safetensors", f"{BEST_DIR}/{SELECTION_FILE}", RUN_FILE} <= listed
    assert (checkpoint / RUN_FILE).read_text() == '{"run_id": "r1"}'


def test_without_selection_or_bucket_the_checkpoint_is_still_marked(tmp_path: Path) -> None:
    out = tmp_path / "out"
    checkpoint = _written_checkpoint(out, 2)
    args = TrainingArguments(output_dir=str(out), report_to=[], use_cpu=True)
    SaveSequence(CompleteMarker()).on_save(args, TrainerState(global_step=2, is_world_process_zero=True),
                                           TrainerControl())
    assert is_complete(checkpoint)
    assert set(marker_files(checkpoint)) == {"model.safetensors", "trainer_state.json"}


def test_a_missing_checkpoint_is_not_marked_but_still_reported_to_the_mirror(tmp_path: Path) -> None:
    """The mirror says when the checkpoint it should upload is missing (its own error); nothing is marked."""
    out = tmp_path / "out"
    out.mkdir()
    upload = Recorder()
    args = TrainingArguments(output_dir=str(out), report_to=[], use_cpu=True)
    SaveSequence(CompleteMarker(), upload=upload).on_save(
        args, TrainerState(global_step=6, is_world_process_zero=True), TrainerControl())
    assert upload.seen == [(6, False, set())]
    assert not RunDirs(out).checkpoint(6).exists()
