"""Shared pytest fixtures, and how the suite spreads over pytest-xdist workers (`make test` runs `-n 2`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_fork import ForkedCLI
from tests.gcs_emulator import GcsEmulator
from tests.tiny import ROOT, cli_environ, quick_env

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
    from trainer.storage.gcs import make_client

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


@pytest.fixture
def cli(forked_cli: ForkedCLI):
    """`cli(*args, env=..., cwd=..., stdin=...)`: `run_cli`'s signature on the forked runner. Only for settings
    read when the command runs: a variable that a library reads when it is imported (HF_HOME, HF_ENDPOINT,
    HF_HUB_OFFLINE, ...) keeps the helper's value in a forked run, so tests that set one use `run_cli`."""

    def run(*args: str, env: dict[str, str] | None = None, cwd=None, stdin: str = "", timeout: float = 600):
        return forked_cli.run(*args, env=cli_environ(env), cwd=cwd or ROOT, stdin=stdin, timeout=timeout)

    return run


# --- one short demo run with its exports and model cards (test_model_card, test_push) ----------------


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory: pytest.TempPathFactory, forked_cli: ForkedCLI):
    """(OUTPUT_DIR, its env, metrics.json) of a demo run evaluated every 4 steps, so tasks may be selected at
    different steps. Read-only: tests that change files copy them first."""
    import json

    out = tmp_path_factory.mktemp("exported-run") / "out"
    env = quick_env(out, EVAL_STEPS="4", SAVE_STEPS="4")
    result = forked_cli.run("train", env=cli_environ(env), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, env, json.loads((out / "metrics.json").read_text())


@pytest.fixture
def run_copy(exported_run, tmp_path):
    """A writable copy of `exported_run` (checkpoints 4, 8, 12), and its env."""
    import shutil

    out, env, _ = exported_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    return copy, {**env, "OUTPUT_DIR": str(copy)}


# --- parallel runs (pytest-xdist, `make test`) ----------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """In a worker, torch (and every CLI run it starts) gets its share of the cores, not all of them: the
    workers' threads would otherwise fight over the same cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if os.environ.get("PYTEST_XDIST_WORKER") and workers > 1:
        import torch

        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def xdist_unit(rootdir: Path, nodeid: str) -> str:
    """What one worker runs as a whole: a test module that defines a module-scoped fixture (a trained run its
    tests share) goes whole, so the run is made once; any other test goes alone."""
    module = nodeid.split("::", 1)[0]
    return module if _defines_module_fixture(rootdir / module) else nodeid


@functools.cache
def _defines_module_fixture(path: Path) -> bool:
    return path.suffix == ".py" and 'scope="module"' in path.read_text(encoding="utf-8")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadscope` with `xdist_unit` as the scope (pytest-xdist's `loadgroup` can't group on pytest 9:
    the group it appends to a test's id is lost). Units go out in the order the workers collected them."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(config.rootpath, nodeid)

    config.option.loadscopereorder = False  # the order below, not the largest unit first
    return UnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a worker: the units holding a slow test first, then the other whole modules, then single tests, so the
    run does not end on one long unit while the other worker idles. Every worker collects the same items and
    sorts them alike (a stable sort)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(xdist_unit(config.rootpath, item.nodeid), []).append(item)

    def last_out(unit: list[pytest.Item]) -> tuple[bool, bool]:
        return not any(i.get_closest_marker("slow") for i in unit), len(unit) == 1

    items[:] = [item for unit in sorted(units.values(), key=last_out) for item in unit]
