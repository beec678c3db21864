from collections import Counter

import numpy as np
import pytest

from trainer.sampling.sampler import MultitaskBatchSampler

SIZES = [300, 100, 40]


def task_of(index: int, sizes=SIZES) -> int:
    return int(np.searchsorted(np.cumsum(sizes), index, side="right"))


def epoch(sampler, e=0):
    sampler.set_epoch(e)
    return list(sampler)


def test_every_batch_is_one_task():
    for strategy in ("proportional", "temperature", "uniform", "round_robin"):
        for batch in epoch(MultitaskBatchSampler(SIZES, 16, strategy=strategy, seed=1)):
            assert len({task_of(i) for i in batch}) == 1, strategy


def test_proportional_covers_every_example_once_per_epoch():
    sampler = MultitaskBatchSampler(SIZES, 16, seed=3)
    indices = [i for batch in epoch(sampler, 2) for i in batch]
    assert sorted(indices) == list(range(sum(SIZES)))
    assert len(sampler) == len(epoch(sampler)) == 19 + 7 + 3


def test_round_robin_alternates_and_covers_everything():
    sampler = MultitaskBatchSampler(SIZES, 16, strategy="round_robin", seed=3)
    batches = epoch(sampler)
    tasks = [task_of(b[0]) for b in batches]
    assert tasks[:9] == [0, 1, 2] * 3
    assert tasks[-1] == 0  # the largest task runs alone at the end
    assert sorted(i for b in batches for i in b) == list(range(sum(SIZES)))


def test_proportions_follow_the_strategy():
    batches = [len(range(0, n, 10)) for n in SIZES]  # 30, 10, 4 batches of 10
    total = sum(batches)

    def shares(strategy, **kw):
        counts = Counter(task_of(b[0]) for b in epoch(MultitaskBatchSampler(SIZES, 10, strategy=strategy, **kw)))
        assert sum(counts.values()) == total
        return np.array([counts[t] for t in range(3)]) / total

    assert shares("proportional") == pytest.approx(np.array(batches) / total)
    assert shares("uniform") == pytest.approx([1 / 3] * 3, abs=1 / total)
    p = np.array(batches, dtype=float) ** 0.5
    assert shares("temperature", temperature=2.0) == pytest.approx(p / p.sum(), abs=1 / total)
    # T=1 is proportional
    assert shares("temperature", temperature=1.0) == pytest.approx(np.array(batches) / total, abs=1 / total)


def test_deterministic_per_seed_and_epoch():
    a = MultitaskBatchSampler(SIZES, 8, seed=5)
    b = MultitaskBatchSampler(SIZES, 8, seed=5)
    assert epoch(a, 0) == epoch(b, 0)
    assert epoch(a, 1) == epoch(b, 1)
    assert epoch(a, 0) != epoch(a, 1)
    assert epoch(a, 0) != epoch(MultitaskBatchSampler(SIZES, 8, seed=6), 0)


@pytest.mark.parametrize("strategy", ["proportional", "temperature", "uniform", "round_robin"])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_the_task_and_split_the_examples(strategy, world):
    sizes = [96, 48, 30]
    ranks = [MultitaskBatchSampler(sizes, 8, strategy=strategy, seed=7, num_replicas=world, rank=r)
             for r in range(world)]
    per_rank = [epoch(s, 1) for s in ranks]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0])
    for step in zip(*per_rank, strict=True):
        assert len({task_of(i, sizes) for b in step for i in b}) == 1  # same head on every rank
        flat = [i for b in step for i in b]
        assert len(flat) == len(set(flat))  # disjoint within the step
        assert all(len(b) >= 1 for b in step)
    if strategy in ("proportional", "round_robin"):
        seen = {i for p in per_rank for b in p for i in b}
        assert seen == set(range(sum(sizes)))  # nothing dropped across ranks


def test_all_tasks_steps_take_one_batch_of_every_task_until_the_largest_is_exhausted():
    sampler = MultitaskBatchSampler(SIZES, 16, strategy="all_tasks", seed=3)
    steps = epoch(sampler, 1)
    assert len(sampler) == len(steps) == 19  # the largest task's batches: ceil(300 / 16)
    for step in steps:
        tasks = [task_of(i) for i in step]
        assert sorted(set(tasks)) == [0, 1, 2] and tasks == sorted(tasks)  # a batch per task, in task order
    largest = [i for step in steps for i in step if task_of(i) == 0]
    assert sorted(largest) == list(range(300))  # the largest task: every example once
    smallest = Counter(i for step in steps for i in step if task_of(i) == 2)
    assert set(smallest) == set(range(400, 440)) and max(smallest.values()) <= 8  # the small ones cycle
    assert epoch(sampler, 1) == steps and epoch(sampler, 2) != steps


@pytest.mark.parametrize("world", [2, 3])
def test_all_tasks_ranks_split_every_tasks_batch(world):
    sizes = [96, 48, 30]
    ranks = [MultitaskBatchSampler(sizes, 8, strategy="all_tasks", seed=7, num_replicas=world, rank=r)
             for r in range(world)]
    per_rank = [epoch(s, 0) for s in ranks]
    assert {len(p) for p in per_rank} == {len(ranks[0])} == {96 // (8 * world) + (96 % (8 * world) > 0)}
    for step in zip(*per_rank, strict=True):
        for b in step:  # every rank trains every task in every step
            assert {task_of(i, sizes) for i in b} == {0, 1, 2}
        flat = [i for b in step for i in b]
        assert len(flat) == len(set(flat))


def test_group_by_length_keeps_similar_lengths_together():
    rng = np.random.default_rng(0)
    lengths = [rng.integers(5, 120, size=n).tolist() for n in SIZES]
    flat = np.concatenate(lengths)
    grouped = epoch(MultitaskBatchSampler(SIZES, 16, seed=1, lengths=lengths))
    plain = epoch(MultitaskBatchSampler(SIZES, 16, seed=1))
    spread = lambda batches: np.mean([np.ptp(flat[b]) for b in batches])  # noqa: E731
    assert spread(grouped) < 0.5 * spread(plain)
    assert sorted(i for b in grouped for i in b) == list(range(sum(SIZES)))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown sampling strategy"):
        MultitaskBatchSampler(SIZES, 8, strategy="random")
    with pytest.raises(ValueError):
        MultitaskBatchSampler([10, 0], 8)


@pytest.mark.parametrize("strategy", ["proportional", "temperature", "round_robin"])
def test_group_by_length_is_deterministic_per_seed_and_epoch(strategy):
    rng = np.random.default_rng(1)
    lengths = [rng.integers(5, 120, size=n).tolist() for n in SIZES]
    make = lambda seed: MultitaskBatchSampler(SIZES, 8, strategy=strategy, seed=seed, lengths=lengths)  # noqa: E731
    a, b = make(5), make(5)
    assert epoch(a, 0) == epoch(b, 0) and epoch(a, 1) == epoch(b, 1)
    assert epoch(a, 0) != epoch(a, 1)
    assert epoch(a, 0) != epoch(make(6), 0)


def test_group_by_length_keeps_every_example_exactly_once_per_epoch():
    rng = np.random.default_rng(2)
    lengths = [rng.integers(5, 120, size=n).tolist() for n in SIZES]
    for e in range(3):
        for world in (1, 2):
            ranks = [epoch(MultitaskBatchSampler(SIZES, 8, seed=4, lengths=lengths, num_replicas=world, rank=r), e)
                     for r in range(world)]
            indices = sorted(i for batches in ranks for batch in batches for i in batch)
            assert indices == list(range(sum(SIZES))), (e, world)
