"""create-bucket against the local GCS server: settings, idempotence, errors before any request."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gcs_emulator import GcsEmulator
from trainer.cloud import bucket as bucket_mod
from trainer.storage import gcs

ROOT = Path(__file__).resolve().parents[1]


def set_env(monkeypatch, **values: str) -> None:
    for name in bucket_mod.ENV_VARS:
        monkeypatch.setenv(name, values.get(name, ""))


def test_create_bucket_twice(gcs_client, monkeypatch, capsys) -> None:
    set_env(monkeypatch, PROJECT_ID="demo-project", BUCKET_NAME="sandbox-1", REGION="europe-west4")
    assert bucket_mod.create_bucket_command() == 0
    assert capsys.readouterr().out.strip() == "created gs://sandbox-1 in project demo-project, region europe-west4"

    created = gcs_client.get_bucket("sandbox-1")
    assert created.iam_configuration.uniform_bucket_level_access_enabled
    assert created.iam_configuration.public_access_prevention == "enforced"
    assert not created.versioning_enabled
    assert created.soft_delete_policy.retention_duration_seconds == bucket_mod.SOFT_DELETE_DAYS * 86400
    assert {"action": {"type": "AbortIncompleteMultipartUpload"}, "condition": {"age": 1}} in list(
        created.lifecycle_rules
    )

    assert bucket_mod.create_bucket_command() == 0
    assert "already exists" in capsys.readouterr().out
    assert [b.name for b in gcs_client.list_buckets()] == ["sandbox-1"]


def test_soft_delete_can_be_turned_off(gcs_client) -> None:
    assert bucket_mod.create_bucket("demo-project", "g-nosoft", "us-central1", client=gcs_client, soft_delete_days=0)
    assert gcs_client.get_bucket("g-nosoft").soft_delete_policy.retention_duration_seconds == 0


@pytest.mark.parametrize(
    ("name", "expected"), [("Bad_Name", "invalid character(s) 'B', 'N'"), ("my-google-ckpts", "'google'")]
)
def test_invalid_name_fails_before_any_request(monkeypatch, capsys, name: str, expected: str) -> None:
    def no_client(*args, **kwargs):
        raise AssertionError("a client was created for an invalid bucket name")

    monkeypatch.setattr(gcs, "make_client", no_client)
    set_env(monkeypatch, PROJECT_ID="demo-project", BUCKET_NAME=name, REGION="europe-west4")
    assert bucket_mod.create_bucket_command() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bucket name") and expected in err and err.count("\n") == 1


def test_missing_settings_are_named(monkeypatch, capsys) -> None:
    set_env(monkeypatch, BUCKET_NAME="sandbox-1")
    assert bucket_mod.create_bucket_command() == 2
    err = capsys.readouterr().err
    assert "PROJECT_ID, REGION not set" in err and ".env.example" in err


def run_make(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-o", "install", "create-bucket"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_create_bucket_refuses_without_settings() -> None:
    result = run_make({"PROJECT_ID": "demo-project", "BUCKET_NAME": "", "REGION": ""})
    assert result.returncode != 0
    assert "BUCKET_NAME, REGION not set" in result.stderr and ".env.example" in result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_create_bucket_twice(gcs_emulator: GcsEmulator) -> None:
    if "create_bucket_command" not in (ROOT / "trainer" / "__main__.py").read_text():
        pytest.skip("`python -m trainer create-bucket` is not wired into trainer/__main__.py yet")
    env = {"PROJECT_ID": "demo-project", "BUCKET_NAME": "s-make-bucket", "REGION": "europe-west4",
           "STORAGE_EMULATOR_HOST": gcs_emulator.url}
    first = run_make(env)
    assert first.returncode == 0, first.stderr
    assert "created gs://s-make-bucket" in first.stdout
    second = run_make(env)
    assert second.returncode == 0, second.stderr
    assert "already exists" in second.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_create_bucket_never_runs_a_value_and_refuses_an_unknown_region(gcs_client, tmp_path: Path) -> None:
    """Hostile values in .env and the environment, and a region that does not exist: one `error:` line each,
    nothing runs, nothing is created (the emulator takes any location, so the check must be ours)."""
    from tests.test_cloud_train import HOSTILE, dotenv_line

    canary = tmp_path / "canary"
    work = tmp_path / "work"
    work.mkdir()
    good = {"PROJECT_ID": "demo-project", "BUCKET_NAME": "s-hostile", "REGION": "europe-west4"}
    places = [("PROJECT_ID", ".env"), ("REGION", "env"), ("BUCKET_NAME", ".env"), ("PROJECT_ID", "env"),
              ("REGION", ".env"), ("BUCKET_NAME", "env")]  # each hostile value in another setting and source
    cases = [(name, template.format(canary=canary), source)
             for (name, source), template in zip(places, HOSTILE.values(), strict=True)]
    cases.append(("REGION", "mars-central1", "env"))
    for name, value, source in cases:
        (work / ".env").write_text("".join(dotenv_line(k, value if k == name else v) for k, v in good.items()
                                           if source == ".env" or k != name))
        env = {k: v for k, v in os.environ.items() if k not in good and not k.startswith("MAKE")}
        env["PYTHONPATH"] = str(ROOT)  # the project's python in another folder, as in test_cloud_train
        if source == "env":
            env[name] = value
        result = subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-C", str(work),
                                 f"VENV={ROOT / '.venv'}", "-o", "install", "create-bucket"],
                                env=env, capture_output=True, text=True, timeout=120)
        assert not canary.exists(), f"create-bucket ran {name}={value!r} from {source}"
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode != 0 and len(errors) == 1, result.stderr
        assert (name if name != "BUCKET_NAME" else "bucket name") in errors[0], errors[0]
    assert "mars-central1' is not a Cloud Storage location" in errors[0]
    assert list(gcs_client.list_buckets()) == []
