"""metrics.json's one shape (`RunMetrics`) and one vocabulary (the aggregate's name, the Trainer's timings): the
file a run writes stays byte for byte what it was, reads back to the same bytes, and the trainer, the selection
and the console use the names `trainer.training.metrics` defines."""

import json
import math

import pytest
import torch
import transformers
from transformers import TrainerControl, TrainerState

from trainer.config.settings import Settings, as_record
from trainer.data.dataset import MultitaskDataset, TaskBatchCollator, tokenize_split
from trainer.data.read import read_split
from trainer.errors import UserError
from trainer.layout import RunDirs
from trainer.model.modeling import MultitaskModel
from trainer.outputs.selection import BestSelection
from trainer.tasks.catalog import DEMO_TASKS
from trainer.tasks.demo import build_demo_tokenizer
from trainer.training.console import eval_table, summary
from trainer.training.metrics import (
    AGGREGATE_METRIC,
    TIMINGS,
    BestAverage,
    RunMetrics,
    SelectedStep,
    metrics_by_task,
    read_run_metrics,
    write_metrics,
)
from trainer.training.trainer import MultitaskTrainer

from .tiny import tiny_configs

TASKS = list(DEMO_TASKS.values())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny model's real evaluation on a few dev rows of each demo task: (model, tokenizer, trainer, metrics)."""
    tokenizer = build_demo_tokenizer()
    torch.manual_seed(0)
    model = MultitaskModel(transformers.AutoModel.from_config(tiny_configs()["bert"]), TASKS).eval()
    dev = {t.name: tokenize_split(t, read_split(t, "dev", None).limit(8), tokenizer, 64) for t in TASKS}
    args = transformers.TrainingArguments(output_dir=str(tmp_path_factory.mktemp("trainer")), use_cpu=True,
                                          report_to=[], per_device_eval_batch_size=8)
    trainer = MultitaskTrainer(model=model, args=args, tasks=TASKS, processing_class=tokenizer,
                               data_collator=TaskBatchCollator(tokenizer, TASKS),
                               eval_dataset={n: MultitaskDataset({n: ds}) for n, ds in dev.items()})
    return model, tokenizer, trainer, trainer.evaluate()


def test_the_trainer_names_the_aggregate_and_every_other_key_is_a_metric_a_loss_or_a_timing(evaluated):
    *_, metrics = evaluated
    assert metrics[f"eval_{AGGREGATE_METRIC}"] == pytest.approx(
        sum(metrics[f"eval_{t.name}_{t.metric}"] for t in TASKS) / len(TASKS))
    for task in TASKS:
        keys = set(metrics_by_task(metrics, TASKS)[task.name])
        unknown = keys - set(task.kind.metrics_for(task)) - {"loss"}
        assert unknown and unknown <= set(TIMINGS), (task.name, unknown)  # the Trainer's timings are all named


def test_a_run_writes_metrics_json_as_before_and_it_reads_back_byte_for_byte(evaluated, tmp_path):
    model, tokenizer, trainer, metrics = evaluated
    run = RunDirs(tmp_path / "run")
    selection = BestSelection("per_task", TASKS, tokenizer, str(run.output_dir))
    selection.restore(None)
    selection.on_evaluate(trainer.args, TrainerState(global_step=4), TrainerControl(), metrics=metrics, model=model)
    record = as_record(Settings(output_dir=str(run.output_dir)))

    written = write_metrics(run.metrics, metrics, TASKS, 8, selection, record)

    per_task = metrics_by_task(metrics, TASKS)
    average = metrics[f"eval_{AGGREGATE_METRIC}"]
    expected = {  # the file as every run so far wrote it: its keys, their order, two-space indent
        "global_step": 8,
        "average": average,
        "main_metric": {t.name: t.metric for t in TASKS},
        "tasks": per_task,
        "select_best": "per_task",
        "selected": {n: {"step": 4, "metrics": {k: v for k, v in m.items() if k not in TIMINGS}}
                     for n, m in per_task.items()},
        "selected_average": average,
        "best_average": {"step": 4, "value": average},
        "settings": record,
    }
    text = run.metrics.read_text(encoding="utf-8")
    assert text == json.dumps(expected, indent=2)
    assert any(k in TIMINGS for k in per_task[TASKS[0].name])  # the final metrics keep them; the selected do not
    read = read_run_metrics(run.metrics)
    assert read == written and read.to_json() == text
    assert read.selected[TASKS[0].name] == SelectedStep(4, expected["selected"][TASKS[0].name]["metrics"])
    assert read.best_average == BestAverage(4, average)


def test_select_best_last_and_an_older_file_without_settings_round_trip(tmp_path):
    per_task = {"a": {"accuracy": 0.5, "loss": math.nan, "runtime": 0.1}}
    data = {"global_step": 3, "average": 0.5, "main_metric": {"a": "accuracy"}, "tasks": per_task,
            "select_best": "last", "selected": {"a": {"step": 3, "metrics": per_task["a"]}},
            "selected_average": 0.5, "best_average": None, "settings": None}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data, indent=2))
    assert read_run_metrics(path).to_json() == path.read_text()  # NaN and null included
    older = {k: v for k, v in data.items() if k not in ("best_average", "settings")}
    path.write_text(json.dumps(older))
    read = read_run_metrics(path)
    assert read.best_average is None and read.settings is None and read.selected["a"].step == 3


@pytest.mark.parametrize("text, problem", [("{", "is not valid JSON"), ('{"average": 0.5}', "not the metrics.json"),
                                           ("[]", "not the metrics.json")])
def test_a_file_that_is_not_a_runs_metrics_is_one_line(tmp_path, text, problem):
    path = tmp_path / "metrics.json"
    path.write_text(text)
    with pytest.raises(UserError, match=problem):
        read_run_metrics(path)


def test_the_console_shows_the_aggregate_by_its_name_and_no_timings(evaluated):
    *_, metrics = evaluated
    per_task = metrics_by_task(metrics, TASKS)
    average = metrics[f"eval_{AGGREGATE_METRIC}"]
    table = eval_table(TASKS, metrics, [{**metrics, "step": 4}], 4)
    (row,) = [line.split() for line in table.splitlines() if line.split()[0] == AGGREGATE_METRIC]
    assert row[1:4] == [f"{average:.4f}", f"{average:.4f}", "4"]
    run_metrics = RunMetrics(global_step=4, average=average, main_metric={t.name: t.metric for t in TASKS},
                             tasks=per_task, select_best="last",
                             selected={n: SelectedStep(4, m) for n, m in per_task.items()}, selected_average=average)
    text = summary(run_metrics, TASKS, [("model", "out/model/")])
    assert f"; {AGGREGATE_METRIC}={average:.3f} (step 4)" in text.splitlines()[0]
    assert any(line.split()[0] == AGGREGATE_METRIC for line in text.splitlines()[2:])
    assert not [k for k in TIMINGS if f" {k}=" in text]  # the Trainer's timings are not metrics
    assert "loss=" in text  # the other metrics are shown
