"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cli_fork import ForkedCLI
from tests.gcs_emulator import GcsEmulator
from tests.tiny import cli_environ, quick_env, run_cli

# --- Cloud Storage (a local gcp-storage-emulator per test) --------------------------------------


@pytest.fixture
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsEmulator]:
    """A running emulator on a free loopback port; STORAGE_EMULATOR_HOST points at it."""
    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs-emulator"))
    emulator.start()
    emulator.patch_env(monkeypatch)
    yield emulator
    emulator.stop()


@pytest.fixture
def gcs_client(gcs_emulator: GcsEmulator):
    """A google.cloud.storage.Client talking to the emulator."""
    from trainer.gcs import make_client

    return make_client()


@pytest.fixture
def gcs_bucket(gcs_client) -> str:
    """An empty bucket on the emulator; its name starts with 'g' on purpose (the lstrip bug)."""
    name = "g-test-bucket"
    gcs_client.create_bucket(name)
    return name


# --- the CLI, forked from one helper that imported torch and transformers once (tests/cli_fork.py) ----------


@pytest.fixture(scope="session")
def forked_cli() -> Iterator[ForkedCLI]:
    """`forked_cli.run(*args, env=cli_environ(...), cwd=...)`: a real `python -m trainer` run in its own
    process, in ~0.1 s instead of ~5 s of imports."""
    cli = ForkedCLI(cli_environ())
    yield cli
    cli.close()


# --- one short demo run with its exports and model cards (test_model_card, test_push) ----------------


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory: pytest.TempPathFactory):
    """(OUTPUT_DIR, its env, metrics.json) of a demo run evaluated every 4 steps, so tasks may be selected at
    different steps. Read-only: tests that change files copy them first."""
    import json

    out = tmp_path_factory.mktemp("exported-run") / "out"
    env = quick_env(out, EVAL_STEPS="4", SAVE_STEPS="4")
    result = run_cli("train", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, env, json.loads((out / "metrics.json").read_text())
