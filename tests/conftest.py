"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gcs_emulator import GcsEmulator

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
