"""RESUME is parsed once into a kind (never, auto, a local or a bucket checkpoint), and every resume decision
follows the kind: what is asked before the claim, which run identities the claim reads and how it decides, which
checkpoint each process takes. In-process and without training; the runs themselves are in test_run_identity.py,
test_checkpoint_integrity.py and test_gcs_training.py."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

from trainer.checkpoints.local import mark_complete
from trainer.checkpoints.resume import check_resume, checkpoint_on_disk, resolve_resume, resume_checkpoint
from trainer.config.settings import Resume, as_record, describe, parse_resume
from trainer.errors import UserError
from trainer.runs.claim import Place, decide, find_places
from trainer.runs.identity import RunIdentity, write_local
from trainer.storage import base as storage

from .tiny import settings_of

NOT_A_DIR = "is not a checkpoint directory; use auto, never or a checkpoint path"


@pytest.fixture(autouse=True)
def off_vertex(monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty RESUME means never here (auto on Vertex AI, which these variables mark)."""
    monkeypatch.delenv("CLOUD_ML_JOB_ID", raising=False)
    monkeypatch.delenv("AIP_CHECKPOINT_DIR", raising=False)


def settings_for(out: Path, resume: str, **extra):
    return settings_of(output_dir=str(out), resume=resume, **extra)


def checkpoint(out: Path, step: int) -> Path:
    """A complete checkpoint (marker written), as the Trainer's save and CompleteMarkerCallback leave it."""
    directory = out / f"checkpoint-{step}"
    directory.mkdir(parents=True)
    (directory / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    mark_complete(directory, step)
    return directory


class Args:
    """The two things `resume_checkpoint` asks of TrainingArguments: which local process this is, and the
    main-process-first barrier (one process here, so no wait)."""

    def __init__(self, local_process_index: int) -> None:
        self.local_process_index = local_process_index

    @contextlib.contextmanager
    def main_process_first(self, **_):
        yield


# --- parse_resume: one parser, four kinds ------------------------------------------------------------------


@pytest.mark.parametrize("text, kind", [("auto", "auto"), ("never", "never"), ("  auto ", "auto"),
                                        ("never\n", "never")])
def test_auto_and_never(text, kind):
    assert parse_resume(text) == Resume(kind, kind)


def test_empty_is_never_here_and_auto_on_vertex(monkeypatch):
    assert parse_resume("") == Resume("never", "never")
    assert parse_resume("  ") == Resume("never", "never")
    monkeypatch.setenv("CLOUD_ML_JOB_ID", "123")
    assert parse_resume("") == Resume("auto", "auto")


@pytest.mark.parametrize("text", ["gs://my-bucket/jobs/a/checkpoints/checkpoint-12",
                                  "  gs://my-bucket/jobs/a/checkpoints/checkpoint-12  "])
def test_a_bucket_checkpoint(text):
    resume = parse_resume(text)
    assert resume == Resume("bucket", text.strip())
    assert str(resume.uri) == text.strip() and resume.uri.name == "checkpoint-12"
    with pytest.raises(ValueError):
        _ = resume.path


def test_a_bucket_checkpoint_is_not_asked_for_when_parsed(monkeypatch):
    """Whether it is there is the bucket's to say, before the claim (check_resume), not the settings'."""
    monkeypatch.setattr(storage, "open_store", lambda *a, **k: pytest.fail("parsing RESUME opened a store"))
    assert parse_resume("gs://no-such-bucket/checkpoint-3").kind == "bucket"


def test_a_local_checkpoint(tmp_path):
    resume = parse_resume(f"  {tmp_path}\n")
    assert resume == Resume("local", str(tmp_path)) and resume.path == tmp_path
    with pytest.raises(ValueError):
        _ = resume.uri


def test_a_local_checkpoint_that_is_not_there_is_one_line(tmp_path):
    missing = tmp_path / "checkpoint-9"
    with pytest.raises(UserError) as err:
        parse_resume(f" {missing} ")
    assert str(err.value) == f"RESUME={str(missing)!r} {NOT_A_DIR}"
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=NOT_A_DIR):  # the same line when the settings are loaded
        settings_for(tmp_path / "o", str(missing))


# --- what `settings` shows and metrics.json records: the same strings as before ----------------------------


@pytest.mark.parametrize("given, recorded, shown", [
    ("", "never", "never (auto)"),
    ("auto", "auto", "auto"),
    ("never", "never", "never"),
    ("gs://my-bucket/j/checkpoints/checkpoint-2", "gs://my-bucket/j/checkpoints/checkpoint-2", "gs://my-bucket/j/checkpoints/checkpoint-2"),
])
def test_recorded_and_shown_as_given(tmp_path, given, recorded, shown):
    settings = settings_for(tmp_path, given)
    assert as_record(settings)["resume"] == recorded
    row = next(line for line in describe(settings, {}).splitlines() if line.startswith("RESUME "))
    assert row.split()[1:-1] == shown.split()


def test_parsed_once_a_local_checkpoint_rotated_away_later_does_not_fail_the_run(tmp_path):
    named = checkpoint(tmp_path / "o", 4)
    settings = settings_for(tmp_path / "o", str(named))
    named.rename(tmp_path / "o" / "gone")  # SAVE_TOTAL_LIMIT's rotation, during the run
    assert settings.effective_resume == Resume("local", str(named))
    assert as_record(settings)["resume"] == str(named)


# --- checkpoints/resume.py: each decision by kind ---------------------------------------------------------


def test_check_resume_asks_the_bucket_only_for_a_bucket_checkpoint(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(storage, "open_store", lambda uri, **_: asked.append(str(uri)) or pytest.fail("asked"))
    checkpoint(tmp_path / "o", 4)
    for given in ("", "auto", "never", str(tmp_path / "o" / "checkpoint-4")):
        check_resume(settings_for(tmp_path / "o", given))
    assert asked == []


def test_check_resume_refuses_a_bucket_checkpoint_that_is_not_there(tmp_path, gcs_client, gcs_bucket):
    resume = f"gs://{gcs_bucket}/jobs/else/checkpoint-12"
    with pytest.raises(UserError) as err:
        check_resume(settings_for(tmp_path / "o", resume))
    assert str(err.value) == (f"RESUME={resume} does not exist; gs://{gcs_bucket}/jobs/else holds no committed "
                              "checkpoint")
    assert not (tmp_path / "o").exists()


def test_checkpoint_on_disk_by_kind(tmp_path):
    out = tmp_path / "o"
    checkpoint(out, 4)
    newest = checkpoint(out, 8)
    (out / "checkpoint-12").mkdir()  # half-written: no marker
    assert checkpoint_on_disk(parse_resume("auto"), out) == newest
    assert checkpoint_on_disk(parse_resume("auto"), tmp_path / "empty") is None
    assert checkpoint_on_disk(parse_resume("never"), out) is None
    assert checkpoint_on_disk(parse_resume(str(out / "checkpoint-4")), out) == out / "checkpoint-4"
    assert checkpoint_on_disk(parse_resume("gs://my-bucket/j/checkpoints/checkpoint-20"), out) == out / "checkpoint-20"


def test_resolve_resume_by_kind(tmp_path):
    out = tmp_path / "o"
    checkpoint(out, 4)
    checkpoint(out, 8)
    assert resolve_resume(parse_resume("never"), str(out)) is None
    assert resolve_resume(parse_resume("auto"), str(out)) == str(out / "checkpoint-8")
    assert resolve_resume(parse_resume(str(out / "checkpoint-4")), str(out)) == str(out / "checkpoint-4")
    (out / "checkpoint-4" / "trainer_state.json").write_text("{}")  # its size no longer matches the marker
    with pytest.raises(UserError, match=r"checkpoint-4 is not a usable checkpoint: .*use RESUME=auto"):
        resolve_resume(parse_resume(str(out / "checkpoint-4")), str(out))


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_checkpoint_by_kind_on_each_process(tmp_path, rank):
    out = tmp_path / "o"
    checkpoint(out, 4)
    checkpoint(out, 8)
    for given, expected in [("never", None), ("", None), ("auto", str(out / "checkpoint-8")),
                            (str(out / "checkpoint-4"), str(out / "checkpoint-4"))]:
        assert resume_checkpoint(settings_for(out, given), Args(rank), None) == expected, given
    # a bucket checkpoint: the main process downloads it (test_gcs_training.py), the others take its download
    if rank:
        named = settings_for(out, "gs://my-bucket/j/checkpoints/checkpoint-20")
        assert resume_checkpoint(named, Args(rank), None) == str(out / "checkpoint-20")


# --- runs/claim.py: which identities it reads, and how it decides, by kind --------------------------------


def identity(run_id: str, seed: int) -> RunIdentity:
    return RunIdentity(run_id, "2024-01-01T00:00:00Z", {"seed": seed, "tasks": ["rte"]})


def test_find_places_reads_beside_a_local_checkpoint_only_when_one_is_named(tmp_path):
    old, out = tmp_path / "old", tmp_path / "o"
    checkpoint(old, 4)
    write_local(old, identity("aaaa", 1))
    named = [p.where for p in find_places(settings_for(out, str(old / "checkpoint-4")), None, None)]
    assert named == ["resume", "output"]
    assert [p.where for p in find_places(settings_for(out, "never"), None, None)] == ["output"]


def test_find_places_reads_what_a_checkpoint_records_where_no_run_json_says(tmp_path):
    out = tmp_path / "o"
    (checkpoint(out, 4) / "run.json").write_text(identity("bbbb", 1).to_json())  # a checkpoint's own copy
    auto = find_places(settings_for(out, "auto"), None, None)
    assert [(p.where, p.identity and p.identity.run_id) for p in auto] == [("output", None), ("checkpoint", "bbbb")]
    assert auto[-1].choice == "a new OUTPUT_DIR"
    local = find_places(settings_for(tmp_path / "new", str(out / "checkpoint-4")), None, None)
    assert [(p.where, p.identity and p.identity.run_id) for p in local] == [
        ("resume", None), ("output", None), ("checkpoint", "bbbb")]
    assert local[-1].choice == ""
    assert [p.where for p in find_places(settings_for(out, "never"), None, None)] == ["output"]
    write_local(out, identity("bbbb", 1))  # OUTPUT_DIR says: the checkpoint's own copy is not read
    assert [p.where for p in find_places(settings_for(out, "auto"), None, None)] == ["output"]


def test_decide_by_kind(tmp_path):
    checkpoint(tmp_path, 4)
    mine, same, other = identity("mine", 1), identity("same", 1), identity("other", 2)
    here = [Place("output", "OUTPUT_DIR=o", "a new OUTPUT_DIR", same)]
    elsewhere = [Place("output", "OUTPUT_DIR=o", "a new OUTPUT_DIR", other)]
    never, auto, local = parse_resume("never"), parse_resume("auto"), parse_resume(str(tmp_path / "checkpoint-4"))
    assert decide(mine, here, never) == mine  # a new run starts a same-settings folder over
    assert decide(mine, here, auto).run_id == "same"  # and any resume continues it
    assert decide(mine, here, local).run_id == "same"
    with pytest.raises(UserError, match="this new run mine has other settings: SEED 2 -> 1"):
        decide(mine, elsewhere, never)
    with pytest.raises(UserError, match="^RESUME=auto: OUTPUT_DIR=o holds run other, whose settings differ"):
        decide(mine, elsewhere, auto)
    with pytest.raises(UserError, match=f"^RESUME={re.escape(str(tmp_path / 'checkpoint-4'))}: OUTPUT_DIR=o holds"):
        decide(mine, elsewhere, local)
    bucket = [Place("bucket", "the bucket's gs://my-bucket/j/checkpoints", "a new JOB_DIR", same)]
    with pytest.raises(UserError, match="with the same settings: RESUME=auto continues it"):
        decide(mine, bucket, never)
    assert decide(mine, bucket, parse_resume("gs://my-bucket/j/checkpoints/checkpoint-2")).run_id == "same"
