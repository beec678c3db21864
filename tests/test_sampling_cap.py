"""SAMPLING_CAP (T5's capped mixing, JMLR 21:140 §3.5.2) and the realised steps per task each epoch logs.

The shares are counted from the batches the sampler yields over a long schedule (many epochs) and checked
against the formula: r_m = min(e_m, K) / Σ min(e_n, K), or ∝ min(e_m, K)^(1/T) under temperature.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from trainer.errors import UserError
from trainer.outputs.report import read_scalars
from trainer.runs.identity import defining_settings
from trainer.sampling.sampler import MultitaskBatchSampler

from .tiny import ROOT, cli_environ, quick_env, settings_of

SIZES = [3000, 400, 100]  # examples; in batches of 10: 300, 40 and 10
BATCHES = np.array([300, 40, 10])
STEPS = BATCHES.sum()  # steps per epoch, with or without a cap
EPOCHS = 20


def task_of(index: int, sizes=SIZES) -> int:
    return int(np.searchsorted(np.cumsum(sizes), index, side="right"))


def realised(epochs: int = EPOCHS, sizes=SIZES, **kw) -> np.ndarray:
    """Each task's share of the steps of `epochs` epochs, counted from the batches the sampler yields."""
    sampler = MultitaskBatchSampler(sizes, 10, seed=11, **kw)
    counts: Counter[int] = Counter()
    for e in range(epochs):
        sampler.set_epoch(e)
        batches = list(sampler)
        assert len(batches) == len(sampler) == STEPS  # a cap changes the mix, not the epoch's length
        counts.update(task_of(b[0], sizes) for b in batches)
    return np.array([counts[t] for t in range(len(sizes))]) / (epochs * STEPS)


def test_temperature_one_without_a_cap_is_proportional():
    proportional = BATCHES / STEPS
    assert realised(strategy="proportional") == pytest.approx(proportional, abs=1e-12)
    assert realised(strategy="temperature", temperature=1.0) == pytest.approx(proportional, abs=1 / STEPS)


def test_a_large_temperature_is_near_uniform():
    assert realised(strategy="temperature", temperature=1000.0) == pytest.approx([1 / 3] * 3, abs=0.01)
    assert realised(strategy="temperature", temperature=2.0)[0] > 0.6  # T=2 is far from it: the check can fail


@pytest.mark.parametrize("cap", [500, 1000])
def test_a_cap_holds_the_big_task_to_k(cap):
    shares = realised(strategy="proportional", cap=cap)
    expected = np.minimum(SIZES, cap) / np.minimum(SIZES, cap).sum()
    assert shares[0] == pytest.approx(cap / (cap + 400 + 100), abs=1 / STEPS)  # K / (K + the others)
    assert shares == pytest.approx(expected, abs=1 / STEPS)
    assert shares[0] < 0.7  # uncapped it would be 85.7 %


def test_under_temperature_the_cap_applies_before_the_exponent():
    shares = realised(strategy="temperature", temperature=2.0, cap=500)
    capped = np.sqrt([500, 400, 100])  # min(e, K) ** (1/T)
    assert shares == pytest.approx(capped / capped.sum(), abs=1 / STEPS)
    assert shares[0] == pytest.approx(0.427, abs=1 / STEPS)  # min(e^(1/T), K) would leave it uncapped: 0.646


def test_a_cap_above_every_task_weighs_examples():
    shares = realised(strategy="proportional", cap=10**6)
    assert shares == pytest.approx(np.array(SIZES) / sum(SIZES), abs=1 / STEPS)


@pytest.mark.parametrize("kw", [{"strategy": "proportional", "cap": 500},
                                {"strategy": "temperature", "temperature": 2.0},
                                {"strategy": "round_robin"}, {"strategy": "proportional"}])
def test_the_logged_shares_are_the_batches_the_epoch_yields(kw):
    """What the epoch-end line reports (`realised_shares`) against the batches iterated, whole and cut short, on
    every rank of a DDP run alike."""
    ranks = [MultitaskBatchSampler(SIZES, 5, seed=4, num_replicas=2, rank=r, **kw) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(3)
    tasks = [[task_of(b[0]) for b in sampler] for sampler in ranks]
    assert tasks[0] == tasks[1]  # every rank draws the same task
    for steps in (len(tasks[0]), 57):
        counted = np.bincount(tasks[0][:steps], minlength=3) / steps
        for sampler in ranks:
            assert sampler.realised_shares(steps) == pytest.approx(counted, abs=1e-12)


def test_the_expected_shares_are_the_formula():
    def shares(**kw):
        return MultitaskBatchSampler(SIZES, 10, **kw).strategy.shares(MultitaskBatchSampler(SIZES, 10, **kw))

    assert shares(strategy="proportional", cap=500) == pytest.approx([0.5, 0.4, 0.1])
    assert shares(strategy="proportional") == pytest.approx(BATCHES / STEPS)
    assert shares(strategy="uniform") == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("strategy", ["uniform", "round_robin", "all_tasks"])
def test_the_sampler_refuses_a_cap_where_it_does_not_apply(strategy):
    with pytest.raises(ValueError, match="applies to proportional and temperature"):
        MultitaskBatchSampler(SIZES, 10, strategy=strategy, cap=100)


@pytest.mark.parametrize("value, message", [
    ("0", "SAMPLING_CAP=0 must be a positive integer"),
    ("-5", "SAMPLING_CAP=-5 must be a positive integer"),
    ("2.5", "SAMPLING_CAP='2.5' is not an integer; it must be a positive integer or empty"),
    ("many", "SAMPLING_CAP='many' is not an integer; it must be a positive integer or empty"),
])
def test_settings_refuse_a_cap_that_is_not_a_positive_integer(value, message):
    with pytest.raises(UserError, match=re.escape(message)):
        settings_of(sampling_cap=value)


@pytest.mark.parametrize("strategy", ["uniform", "round_robin", "all_tasks"])
def test_settings_refuse_a_cap_with_a_strategy_it_does_not_apply_to(strategy):
    with pytest.raises(UserError, match=f"SAMPLING_CAP=100 applies to SAMPLING=proportional or temperature, not "
                                        f"SAMPLING={strategy}; unset SAMPLING_CAP"):
        settings_of(sampling_cap="100", sampling=strategy)


def test_settings_take_a_cap_and_empty_is_none():
    assert settings_of(sampling_cap="").sampling_cap is None
    assert settings_of(sampling_cap=" 20000 ", sampling="temperature").sampling_cap == 20000
    assert "sampling_cap" not in defining_settings(settings_of(), [], {})  # a run from before keeps its identity
    assert defining_settings(settings_of(sampling_cap="8"), [], {})["sampling_cap"] == 8  # resume can't change it


# -- a real run: the epoch-end line, its metrics, and resume --------------------------------------------------

SHARE_LINE = re.compile(r"epoch (\d+)( \(\d+ of \d+ steps\))?: steps per task: (.*)")
MIX_ENV = {"MAX_STEPS": "14", "BATCH_SIZE": "8", "MAX_TRAIN_SAMPLES": "", "SAMPLING": "proportional",
           "SAMPLING_CAP": "16", "EVAL_STEPS": "100", "SAVE_STEPS": "100", "SEED": "5"}


def _mix_tasks(directory) -> str:
    """Two classification tasks, 48 and 8 training rows: 6 + 1 batches of 8, 7 steps an epoch."""
    for name, rows in (("big", 48), ("small", 8)):
        body = "".join(f"{'good' if i % 2 else 'bad'} thing {i}\t{'yes' if i % 2 else 'no'}\n" for i in range(rows))
        (directory / f"{name}.tsv").write_text("text\tlabel\n" + body)
    (directory / "dev.tsv").write_text("text\tlabel\ngood one\tyes\nbad one\tno\n")
    task = ("  - {{name: {0}, type: classification, text_columns: [text], label_column: label, labels: [yes, no], "
            "train_file: {0}.tsv, dev_file: dev.tsv}}\n")
    (directory / "tasks.yaml").write_text("tasks:\n" + task.format("big") + task.format("small"))
    return str(directory / "tasks.yaml")


def _share_lines(stderr: str) -> dict[str, str]:
    """`epoch N[ (k of n steps)]` -> the shares that line gives."""
    return {f"{m.group(1)}{m.group(2) or ''}": m.group(3) for m in SHARE_LINE.finditer(stderr)}


@pytest.fixture(scope="module")
def mix_run(tmp_path_factory, forked_cli):
    """A capped run of two epochs, uninterrupted: (its folder, its env, the CLI's result)."""
    base = tmp_path_factory.mktemp("mix")
    env = {**quick_env(base / "out"), **MIX_ENV, "TASKS_FILE": _mix_tasks(base)}
    result = forked_cli.run("train", env=cli_environ(env), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return base, env, result


def test_a_run_logs_each_epochs_steps_per_task(mix_run):
    base, _, result = mix_run
    lines = _share_lines(result.stderr)
    # weights min(48, 16) = 16 and min(8, 16) = 8: 2/3 and 1/3 of 7 steps, rounded to 5 and 2 (uncapped: 6 and 1)
    assert lines == {"1": "big 71.4 % (expected 66.7 %), small 28.6 % (expected 33.3 %)",
                     "2": "big 71.4 % (expected 66.7 %), small 28.6 % (expected 33.3 %)"}
    scalars = read_scalars(base / "out" / "logs")
    assert [(step, round(value, 4)) for step, value in scalars["train/big_share"]] == [(7, 0.7143), (14, 0.7143)]
    assert [(step, round(value, 4)) for step, value in scalars["train/small_share"]] == [(7, 0.2857), (14, 0.2857)]


def test_a_resumed_epoch_counts_the_steps_before_the_resume(mix_run, cli, tmp_path):
    base, env, straight = mix_run
    env = {**env, "OUTPUT_DIR": str(tmp_path / "out"), "MAX_STEPS": "10"}
    first = cli("train", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = _share_lines(first.stderr)
    assert lines.keys() == {"1", "2 (3 of 7 steps)"} and lines["1"] == _share_lines(straight.stderr)["1"]
    resumed = cli("train", env={**env, "MAX_STEPS": "14", "RESUME": "auto"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _share_lines(resumed.stderr) == {"2": _share_lines(straight.stderr)["2"]}  # all 7 steps, 3 before


@pytest.mark.parametrize("strategy", ["proportional", "temperature"])
def test_a_cap_above_every_task_changes_nothing(strategy):
    """A cap that holds no task below its size gives the uncapped epoch: a 10-example task beside a 1,000-example
    one still gets its batch (weighing examples instead of batches would round it away)."""
    sizes = [10, 1000]
    for epoch in range(3):
        plans = []
        for cap in (None, 10**6):
            sampler = MultitaskBatchSampler(sizes, 32, seed=5, strategy=strategy, cap=cap)
            sampler.set_epoch(epoch)
            plans.append([list(b) for b in sampler])
        assert plans[0] == plans[1]
        assert any(task_of(b[0], sizes) == 0 for b in plans[1])
