"""Nothing a user already has is lost (issue 18, section 1): an export replaces only a previous export, predict-file
never writes over its input, a resume continues only its own run's checkpoints, damage is set aside and said, and a
refused run writes nothing, locally or in the bucket.

Through the real CLI (forked from the pre-imported helper, tests/cli_fork.py) and, where a bucket is involved, the
real storage emulator. The one-line refusals of bad flags are rows of tests/test_bad_input.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.tiny import cli_environ
from trainer.layout import EXPORT_MARKER


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


# ---- export ---------------------------------------------------------------------------------------------------


def test_an_export_replaces_a_previous_export_and_nothing_else(exported_run, tmp_path, forked_cli):
    out, env, _ = exported_run
    run = cli_environ({**env, "OUTPUT_DIR": str(out)})
    assert (out / "export" / EXPORT_MARKER).is_file(), "the training run's export carries the marker"
    target = tmp_path / "exp"
    for _ in range(2):  # the second replaces the first
        result = forked_cli.run("export", f"--export_dir={target}", env=run, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in target.iterdir()) == sorted([EXPORT_MARKER, *json.loads(
        (target / EXPORT_MARKER).read_text())["tasks"]])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]

    (target / EXPORT_MARKER).unlink()  # an export from before the marker: task folders only, still recognised
    assert forked_cli.run("export", f"--export_dir={target}", env=run, cwd=tmp_path).returncode == 0

    (target / "notes.txt").write_text("mine")  # now it holds something the project did not write
    before = files(target)
    result = forked_cli.run("export", f"--export_dir={target}", env=run, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "is not a previous export" in line and "notes.txt" in line, line
    assert files(target) == before


def test_a_training_run_refuses_an_export_folder_it_did_not_write_before_training(tmp_path, forked_cli):
    out = tmp_path / "out"
    (out / "export").mkdir(parents=True)
    (out / "export" / "keep.txt").write_text("mine")
    result = forked_cli.run("train", env=cli_environ({"OUTPUT_DIR": str(out), "MAX_STEPS": "2"}), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "OUTPUT_DIR/export=" in line and "is not a previous export" in line, line
    assert sorted(p.name for p in out.rglob("*")) == ["export", "keep.txt"]


# ---- predict-file ---------------------------------------------------------------------------------------------


def test_predict_file_refuses_an_output_that_is_a_hard_link_to_its_input(exported_run, tmp_path, forked_cli):
    source = tmp_path / "in.tsv"
    source.write_text("text\na fine film\n")
    os.link(source, tmp_path / "link.tsv")
    result = forked_cli.run("predict-file", "--task=demo_sentiment", f"--input={source}",
                            f"--output={tmp_path / 'link.tsv'}", env=cli_environ({"OUTPUT_DIR": str(exported_run[0])}),
                            cwd=tmp_path)
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "would overwrite --input" in line and "the same file" in line, line
    assert source.read_text() == "text\na fine film\n"


# ---- damaged checkpoints --------------------------------------------------------------------------------------


def test_every_checkpoint_damaged_is_set_aside_and_the_run_says_it_starts_from_scratch(run_copy, forked_cli):
    copy, env = run_copy
    optimizer = copy / "checkpoint-12" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])  # truncated: its size no longer matches the marker
    (copy / "checkpoint-8" / "checkpoint_complete.json").write_text("{garbage")
    weights = copy / "checkpoint-4" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))

    result = forked_cli.run("train", env=cli_environ({**env, "RESUME": "auto"}), cwd=copy)
    assert result.returncode == 0, result.stderr[-3000:]
    damaged = [line for line in result.stderr.splitlines() if "is damaged" in line]
    assert len(damaged) == 3, result.stderr[-3000:]
    assert "optimizer.pt has 1000 bytes" in damaged[0] and "no valid checkpoint_complete.json" in damaged[1]
    scratch = [line for line in result.stderr.splitlines() if "starts from scratch" in line]
    assert len(scratch) == 1 and "damaged-checkpoint-12" in scratch[0], result.stderr[-3000:]
    assert "resuming from" not in result.stderr and "older checkpoint" not in result.stderr
    assert all((copy / f"damaged-checkpoint-{step}").is_dir() for step in (4, 8, 12))
    assert json.loads((copy / "metrics.json").read_text())["global_step"] == 12


# ---- a resume continues only its own run's checkpoints ------------------------------------------------------------


def test_checkpoints_without_run_json_are_resumed_only_when_their_own_settings_match(run_copy, forked_cli):
    copy, env = run_copy
    (copy / "run.json").unlink()  # a folder from before run identities, or checkpoints copied alone
    assert (copy / "checkpoint-12" / "run.json").is_file(), "every checkpoint records its run"
    before = files(copy)
    result = forked_cli.run("train", env=cli_environ({**env, "RESUME": "auto", "SEED": "7", "MAX_STEPS": "16"}),
                            cwd=copy)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert "checkpoint-12 holds run" in line and "SEED 42 -> 7" in line, line
    assert files(copy) == before

    for step in (4, 8, 12):  # checkpoints from before run identities: what their multitask.json records
        (copy / f"checkpoint-{step}" / "run.json").unlink()
        marker = json.loads((copy / f"checkpoint-{step}" / "checkpoint_complete.json").read_text())
        del marker["files"]["run.json"]
        (copy / f"checkpoint-{step}" / "checkpoint_complete.json").write_text(json.dumps(marker))
    result = forked_cli.run("train", env=cli_environ({**env, "RESUME": "auto", "TASKS": "demo_sentiment"}), cwd=copy)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert "TASKS demo_sentiment,demo_similarity,demo_category -> demo_sentiment" in line, line


def test_a_checkpoint_copied_alone_of_other_tasks_or_another_model_is_one_line_and_writes_nothing(
        exported_run, tmp_path, forked_cli):
    from tests.tiny import save_tiny_pretrained

    out, env, _ = exported_run
    alone = tmp_path / "alone" / "checkpoint-12"
    shutil.copytree(out / "checkpoint-12", alone)
    model = save_tiny_pretrained(tmp_path / "tiny")
    before = files(tmp_path)
    for other, differs in ({"TASKS": "demo_sentiment"}, "TASKS "), ({"MODEL_NAME": str(model)}, "MODEL_NAME demo -> "):
        new = tmp_path / "new"
        result = forked_cli.run("train", env=cli_environ({**env, "OUTPUT_DIR": str(new), "RESUME": str(alone),
                                                          **other}), cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        (line,) = error_lines(result)
        assert f"checkpoint {alone} holds run" in line and differs in line, line
        assert not new.exists() and files(tmp_path) == before


# ---- the bucket: a refused run writes nothing there -------------------------------------------------------------


def test_a_refused_resume_leaves_no_claim_in_the_bucket_and_a_later_run_starts(exported_run, tmp_path, gcs_client,
                                                                               gcs_bucket, forked_cli):
    from trainer.checkpoints import remote
    from trainer.storage.gcs import GcsStore, parse_gcs_uri

    job = f"gs://{gcs_bucket}/job"
    env = {"JOB_DIR": job, "MAX_STEPS": "2", "SAVE_STEPS": "2", "EVAL_STEPS": "2", "MAX_TRAIN_SAMPLES": "16",
           "MAX_EVAL_SAMPLES": "8", "BATCH_SIZE": "4"}
    result = forked_cli.run("train", env=cli_environ({**env, "OUTPUT_DIR": str(tmp_path / "a"),
                                                      "RESUME": f"gs://{gcs_bucket}/else/checkpoint-5"}), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert "checkpoint-5 does not exist" in line, line
    assert [b.name for b in gcs_client.list_blobs(gcs_bucket)] == []
    assert not (tmp_path / "a").exists()

    # one that is there but fails verification is refused after the claim: the claim is taken back
    uri = remote.upload_checkpoint(GcsStore(gcs_client), exported_run[0] / "checkpoint-12",
                                   parse_gcs_uri(f"gs://{gcs_bucket}/else/checkpoints"), 12)
    gcs_client.bucket(gcs_bucket).blob(uri.child("optimizer.pt").prefix).upload_from_string(b"garbage")
    result = forked_cli.run("train", env=cli_environ({**env, "OUTPUT_DIR": str(tmp_path / "a"), "RESUME": str(uri)}),
                            cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert "failed verification" in line, line
    assert [b.name for b in gcs_client.list_blobs(gcs_bucket, prefix="job/")] == []
    assert not (tmp_path / "a").exists()

    result = forked_cli.run("train", env=cli_environ({**env, "OUTPUT_DIR": str(tmp_path / "b"), "SEED": "3"}),
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "job/checkpoints/run.json" in [b.name for b in gcs_client.list_blobs(gcs_bucket)]


def test_a_job_dir_inside_another_runs_checkpoints_is_one_line_and_writes_nothing(exported_run, tmp_path,
                                                                                   gcs_client, gcs_bucket, forked_cli):
    out, env, _ = exported_run
    theirs = json.loads((out / "run.json").read_text())["run_id"]
    gcs_client.bucket(gcs_bucket).blob("a/checkpoints/run.json").upload_from_string((out / "run.json").read_bytes())
    before = [(b.name, b.generation) for b in gcs_client.list_blobs(gcs_bucket)]
    result = forked_cli.run("train", env=cli_environ({**env, "OUTPUT_DIR": str(tmp_path / "o"),
                                                      "JOB_DIR": f"gs://{gcs_bucket}/a/checkpoints/mine"}),
                            cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert f"lie inside gs://{gcs_bucket}/a/checkpoints, which holds run {theirs}" in line, line
    assert [(b.name, b.generation) for b in gcs_client.list_blobs(gcs_bucket)] == before
    assert not (tmp_path / "o").exists()
