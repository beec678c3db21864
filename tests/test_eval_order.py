"""Evaluation in length-sorted batches: the metrics see the predictions in the dev split's order, and equal
those of an unsorted, unpadded evaluation (one example at a time)."""

import numpy as np
import pytest
import torch
import transformers

from trainer.data.dataset import MultitaskDataset, TaskBatchCollator, tokenize_split
from trainer.data.read import read_split
from trainer.model.modeling import MultitaskModel
from trainer.sampling.eval_order import length_order, restore
from trainer.tasks.catalog import DEMO_TASKS
from trainer.tasks.demo import build_demo_tokenizer
from trainer.tasks.spec import TaskData
from trainer.training.trainer import MultitaskTrainer

from .tiny import tiny_configs

TASKS = list(DEMO_TASKS.values())


def test_restore_undoes_the_length_sort():
    lengths = [5, 9, 9, 2, 7]
    order = length_order(lengths)
    assert order.tolist() == [1, 2, 4, 0, 3]  # longest first, ties in dataset order
    values = np.arange(5) * 10
    rows = np.stack([values, values + 1], axis=1)
    assert restore(values[order], order).tolist() == values.tolist()
    restored = restore((values[order], rows[order]), order)
    assert restored[0].tolist() == values.tolist() and restored[1].tolist() == rows.tolist()
    with pytest.raises(ValueError, match="4 predictions for 5"):
        restore(values[:4], order)


def varied_lengths(task, count):
    """The demo's dev rows (all of one length) with the first text repeated 1-4 times, so lengths differ."""
    columns = dict(read_split(task, "dev", None).limit(count).columns)
    columns["text_a"] = [" ".join([text] * (1 + i * 7 % 4)) for i, text in enumerate(columns["text_a"])]
    return TaskData(columns)


def one_at_a_time(model, task, dataset, collator):
    """Predictions and labels without batching, padding or sorting: the reference order and values."""
    predictions, labels = [], []
    with torch.no_grad():
        for i in range(len(dataset)):
            batch = collator([{"task": task.name, **dataset[i]}])
            logits = model(**batch).logits
            predictions.append(task.kind.reduce_logits(logits, batch["labels"]).numpy())
            labels.append(batch["labels"].numpy())
    return np.concatenate(predictions), np.concatenate(labels)


def test_length_sorted_evaluation_gives_the_metrics_of_an_unsorted_one_in_the_dev_order(tmp_path, monkeypatch):
    tokenizer = build_demo_tokenizer()
    torch.manual_seed(0)
    model = MultitaskModel(transformers.AutoModel.from_config(tiny_configs()["bert"]), TASKS).eval()
    dev = {t.name: tokenize_split(t, varied_lengths(t, 24), tokenizer, 64) for t in TASKS}
    for split in dev.values():  # else the sort would be the identity and prove nothing
        assert length_order(split["length"]).tolist() != list(range(len(split)))
    collator = TaskBatchCollator(tokenizer, TASKS)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                                          per_device_eval_batch_size=8)
    trainer = MultitaskTrainer(model=model, args=args, tasks=TASKS, processing_class=tokenizer, data_collator=collator,
                               eval_dataset={n: MultitaskDataset({n: ds}) for n, ds in dev.items()})
    seen = {}
    for task in TASKS:  # a spy: record what each kind's metrics receive, then compute them for real
        def spy(spec, predictions, labels, original=task.kind.compute_metrics):
            seen[spec.name] = (predictions, labels)
            return original(spec, predictions, labels)
        monkeypatch.setattr(task.kind, "compute_metrics", spy)

    metrics = trainer.evaluate()

    for task in TASKS:
        predictions, labels = one_at_a_time(model, task, dev[task.name], collator)
        got_predictions, got_labels = seen[task.name]
        np.testing.assert_array_equal(got_labels, labels)
        np.testing.assert_allclose(got_predictions, predictions, rtol=1e-4, atol=1e-5)
        for name, value in task.kind.compute_metrics(task, predictions, labels).items():
            assert metrics[f"eval_{task.name}_{name}"] == pytest.approx(value, abs=1e-4), (task.name, name)
        assert metrics[f"eval_{task.name}_runtime"] > 0  # the evaluation time per task is logged

