"""trainer.layout: the paths of a run, in OUTPUT_DIR (RunDirs) and in the bucket (BucketDirs); no server needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config.env import VertexDirs, vertex_dirs
from trainer.errors import UserError
from trainer.layout import BucketDirs, RunDirs, checkpoint_name, checkpoint_step
from trainer.storage.gcs import GcsUri

VERTEX = {"AIP_CHECKPOINT_DIR": "gs://vertex-out/job/checkpoints/", "AIP_MODEL_DIR": " gs://vertex-out/job/model/ ",
          "AIP_TENSORBOARD_LOG_DIR": "gs://vertex-out/job/logs/"}


def test_checkpoint_name_and_step_round_trip() -> None:
    for step in (0, 7, 120000):
        assert checkpoint_step(checkpoint_name(step)) == step
    assert checkpoint_name(42) == "checkpoint-42"
    for name in ("checkpoint-", "checkpoint-x", "checkpoint-3.partial", ".checkpoint-3", "damaged-checkpoint-3",
                 "checkpoint-3/", "best"):
        assert checkpoint_step(name) is None, name


def test_run_dirs_name_every_path_in_output_dir(tmp_path: Path) -> None:
    run = RunDirs(str(tmp_path / "out"))
    out = tmp_path / "out"
    assert run.output_dir == out and run.log_dir == out / "logs"  # LOG_DIR's default
    assert run.checkpoint(12) == out / "checkpoint-12"
    assert run.best == out / "best" and run.best_task("sst2", 30) == out / "best" / "sst2-step30"
    assert run.model == out / "model"
    assert run.export == out / "export" and run.export_task("sst2") == out / "export" / "sst2"
    assert (run.metrics, run.split_metrics("test")) == (out / "metrics.json", out / "metrics_test.json")
    assert (run.report, run.settings, run.run_file) == (out / "report.html", out / "settings.json", out / "run.json")
    assert (run.lock, run.staging) == (out / ".run.lock", out / ".gcs-staging")
    elsewhere = RunDirs(out, tmp_path / "tb")
    assert elsewhere.log_dir == tmp_path / "tb" and elsewhere.model == run.model
    assert RunDirs(out) == RunDirs(str(out), str(out / "logs"))


def test_bucket_dirs_are_job_dir_children() -> None:
    dirs = BucketDirs.resolve("gs://sandbox-1/run7/", VertexDirs())
    assert dirs is not None
    assert (dirs.checkpoints, dirs.model, dirs.logs) == (
        GcsUri("sandbox-1", "run7/checkpoints"), GcsUri("sandbox-1", "run7/model"), GcsUri("sandbox-1", "run7/logs"))
    assert dirs.checkpoint(8) == GcsUri("sandbox-1", "run7/checkpoints/checkpoint-8")
    assert (dirs.run_file, dirs.lease) == (GcsUri("sandbox-1", "run7/checkpoints/run.json"),
                                           GcsUri("sandbox-1", "run7/checkpoints/lease.json"))
    assert (str(dirs.export), str(dirs.metrics), str(dirs.report), str(dirs.settings)) == (
        "gs://sandbox-1/run7/model/export", "gs://sandbox-1/run7/model/metrics.json",
        "gs://sandbox-1/run7/model/report.html", "gs://sandbox-1/run7/model/settings.json")


def test_vertex_dirs_win_over_job_dir() -> None:
    vertex = vertex_dirs(VERTEX)
    assert vertex == VertexDirs("gs://vertex-out/job/checkpoints/", "gs://vertex-out/job/model/",
                                "gs://vertex-out/job/logs/")  # blanks stripped
    dirs = BucketDirs.resolve("gs://sandbox-1/run7", vertex)
    assert dirs == BucketDirs(GcsUri("vertex-out", "job/checkpoints"), GcsUri("vertex-out", "job/model"),
                              GcsUri("vertex-out", "job/logs"))
    assert BucketDirs.resolve(None, vertex) == dirs
    assert dirs.lease == GcsUri("vertex-out", "job/checkpoints/lease.json")  # beside Vertex AI's checkpoints
    only_model = BucketDirs.resolve("gs://sandbox-1/run7", VertexDirs(model="gs://vertex-out/m"))
    assert only_model == BucketDirs(GcsUri("sandbox-1", "run7/checkpoints"), GcsUri("vertex-out", "m"),
                                    GcsUri("sandbox-1", "run7/logs"))


def test_neither_is_none_and_a_partial_vertex_set_is_one_line() -> None:
    assert BucketDirs.resolve(None, vertex_dirs({})) is None
    assert BucketDirs.resolve("  ", vertex_dirs({"AIP_MODEL_DIR": " "})) is None
    with pytest.raises(UserError) as err:
        BucketDirs.resolve(None, vertex_dirs({"AIP_MODEL_DIR": "gs://vertex-out/m"}))
    assert str(err.value) == ("AIP_CHECKPOINT_DIR, AIP_TENSORBOARD_LOG_DIR not set while other AIP_* directories "
                              "are; set JOB_DIR=gs://... as well")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="must start with gs://"):
        BucketDirs.resolve("outputs/job", VertexDirs())


def test_final_outputs_map_the_run_to_the_bucket(tmp_path: Path) -> None:
    run = RunDirs(tmp_path / "out", tmp_path / "tb")
    dirs = BucketDirs.resolve("gs://bkt/job", VertexDirs())
    assert dirs.final_outputs(run) == [
        (tmp_path / "out" / "model", GcsUri("bkt", "job/model")),
        (tmp_path / "out" / "export", GcsUri("bkt", "job/model/export")),
        (tmp_path / "out" / "metrics.json", GcsUri("bkt", "job/model/metrics.json")),
        (tmp_path / "out" / "report.html", GcsUri("bkt", "job/model/report.html")),
    ]
