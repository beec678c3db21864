"""gs:// URIs, bucket names and the JOB_DIR / Vertex AIP_* layout (no server needed)."""

from __future__ import annotations

import pytest

from trainer.config.env import VertexDirs, vertex_dirs
from trainer.errors import UserError
from trainer.layout import BucketDirs
from trainer.storage.gcs import GcsUri, parse_gcs_uri, validate_bucket_name


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("gs://sandbox-1/x", "sandbox-1", "x"),
        ("gs://g-bucket/", "g-bucket", ""),
        ("gs://g-bucket", "g-bucket", ""),
        ("gs://s-bucket/runs/a//b/", "s-bucket", "runs/a/b"),
        ("gs://gs-gs/gs://x", "gs-gs", "gs:/x"),
        ("gs://my.bucket.example.com/p", "my.bucket.example.com", "p"),
        ("  gs://under_score1/a  ", "under_score1", "a"),
    ],
)
def test_parse_valid(uri: str, bucket: str, prefix: str) -> None:
    parsed = parse_gcs_uri(uri)
    assert (parsed.bucket, parsed.prefix) == (bucket, prefix)
    assert parse_gcs_uri(str(parsed)) == parsed


def test_child_and_str() -> None:
    root = parse_gcs_uri("gs://g-bucket/")
    assert str(root) == "gs://g-bucket"
    ckpt = root.child("run1", "checkpoints/", "checkpoint-5")
    assert ckpt == GcsUri("g-bucket", "run1/checkpoints/checkpoint-5")
    assert str(ckpt) == "gs://g-bucket/run1/checkpoints/checkpoint-5"
    assert ckpt.name == "checkpoint-5"
    assert ckpt.child("sub/file.bin").prefix == "run1/checkpoints/checkpoint-5/sub/file.bin"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sandbox-1/x", "must start with gs://"),
        ("s3://bucket/x", "must start with gs://"),
        ("gs:/bucket/x", "must start with gs://"),
        ("GS://bucket/x", "must start with gs://"),
        ("/local/checkpoints", "must start with gs://"),
        ("gs:///x", "no bucket name"),
        ("gs://My-Bucket/x", "invalid character(s) 'B', 'M'"),
        ("gs://bad$name/x", "invalid character(s) '$'"),
        ("gs://has space/x", "invalid character(s) ' '"),
        ("gs://-dash-first/x", "must start and end with a lowercase letter or digit"),
        ("gs://underscore-last_/x", "must start and end"),
        ("gs://ab/x", "is 2 characters"),
        ("gs://b-ok/a/../c", "invalid path"),
    ],
)
def test_parse_invalid(uri: str, expected: str) -> None:
    with pytest.raises(UserError) as err:
        parse_gcs_uri(uri)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["abc", "sandbox-1", "g-bucket", "1bucket", "my_bucket", "a" * 63,
                                  ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 30])])
def test_valid_bucket_names(name: str) -> None:
    validate_bucket_name(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("", "empty"),
        ("a" * 64, "is 64 characters"),
        (".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 31]), "is 223 characters"),
        ("a" * 64 + ".com", "part over 63 characters"),
        ("a..b", "empty dot-separated part"),
        ("goog-checkpoints", "must not start with 'goog'"),
        ("my-google-bucket", "'google'"),
        ("my-g00gle-bucket", "look-alike"),
        ("192.168.5.4", "IP address"),
        ("UPPER", "invalid character(s)"),
    ],
)
def test_invalid_bucket_names(name: str, expected: str) -> None:
    with pytest.raises(UserError) as err:
        validate_bucket_name(name)
    assert expected in str(err.value)


def test_resolve_cloud_dirs_from_job_dir() -> None:
    dirs = BucketDirs.resolve("gs://sandbox-1/run7/", VertexDirs())
    assert dirs is not None
    assert str(dirs.checkpoints) == "gs://sandbox-1/run7/checkpoints"
    assert str(dirs.model) == "gs://sandbox-1/run7/model"
    assert str(dirs.logs) == "gs://sandbox-1/run7/logs"


def test_resolve_cloud_dirs_vertex_wins() -> None:
    environ = {
        "AIP_CHECKPOINT_DIR": "gs://vertex-out/job/checkpoints/",
        "AIP_MODEL_DIR": "gs://vertex-out/job/model/",
        "AIP_TENSORBOARD_LOG_DIR": "gs://vertex-out/job/logs/",
    }
    dirs = BucketDirs.resolve("gs://sandbox-1/run7", vertex_dirs(environ))
    assert dirs is not None
    assert (dirs.checkpoints, dirs.model, dirs.logs) == (
        GcsUri("vertex-out", "job/checkpoints"),
        GcsUri("vertex-out", "job/model"),
        GcsUri("vertex-out", "job/logs"),
    )
    assert BucketDirs.resolve(None, vertex_dirs(environ)) == dirs


def test_resolve_cloud_dirs_none_and_errors() -> None:
    assert BucketDirs.resolve(None, VertexDirs()) is None
    assert BucketDirs.resolve("", VertexDirs()) is None
    with pytest.raises(UserError, match="must start with gs://"):
        BucketDirs.resolve("outputs/job", VertexDirs())
    with pytest.raises(UserError, match="AIP_MODEL_DIR, AIP_TENSORBOARD_LOG_DIR not set"):
        BucketDirs.resolve(None, vertex_dirs({"AIP_CHECKPOINT_DIR": "gs://vertex-out/c"}))
