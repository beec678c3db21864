"""Model cards: every export/<task>/README.md is a Hub model card whose metadata huggingface_hub parses, with the
dev metrics of the exported step; `python -m trainer export` writes them too."""

import shutil

import pytest
from huggingface_hub import ModelCard

from trainer.outputs.model_card import base_model, model_card
from trainer.tasks.catalog import BUILTIN_TASKS, DEMO_TASKS
from trainer.tasks.declare import load_tasks_file
from trainer.training.metrics import RunMetrics, SelectedStep

PIPELINES = {"demo_sentiment": "text-classification", "demo_similarity": "text-classification",
             "demo_category": None}


@pytest.mark.slow
def test_every_export_has_a_card_with_the_selected_metrics(exported_run):
    out, _, report = exported_run
    assert report["settings"]["batch_size"] == 8 and report["settings"]["max_steps"] == 12
    for name, pipeline in PIPELINES.items():
        card = ModelCard.load(out / "export" / name / "README.md")
        data = card.data.to_dict()
        assert data["library_name"] == "transformers" and "base_model" not in data  # the demo has no base model
        assert data.get("pipeline_tag") == pipeline
        assert data["tags"] == ["multitask", DEMO_TASKS[name].type]
        selected = report["selected"][name]
        assert card.data.model_name == name
        results = {r.metric_type: r for r in card.data.eval_results}
        expected = {m: v for m, v in selected["metrics"].items() if m != "loss"}
        assert {m: r.metric_value for m, r in results.items()} == expected
        for result in results.values():
            assert result.metric_args == {"step": selected["step"]}
            assert result.task_type == (pipeline or "multiple-choice") and result.dataset_type == "demo"
            assert result.dataset_split == "dev"
        main = DEMO_TASKS[name].metric
        assert f"Dev metrics at step {selected['step']} (the step SELECT_BEST=per_task chose), beside the final " \
               f"step 12" in card.text
        assert f"| {main} (main) | {selected['metrics'][main]:.4f} | {report['tasks'][name][main]:.4f} |" in card.text
        for other in set(PIPELINES) - {name}:  # the other tasks on the shared encoder, with their selection
            chosen = report["selected"][other]
            assert f"| {other} | {DEMO_TASKS[other].type} | {DEMO_TASKS[other].metric} | " \
                   f"{chosen['metrics'][DEMO_TASKS[other].metric]:.4f} | {chosen['step']} |" in card.text
        for row in ("| MODEL_NAME | demo |", "| steps | MAX_STEPS=12 (12 optimizer steps) |", "| BATCH_SIZE | 8 |",
                    "| LEARNING_RATE | 0.001 |", "| SAMPLING | proportional |", "| SELECT_BEST | per_task |",
                    "| SEED | 42 |", "| MAX_SEQ_LENGTH | 128 |", "| MAX_TRAIN_SAMPLES | 64 |",
                    "| TASKS | demo_sentiment,demo_similarity,demo_category |"):
            assert row in card.text, row
    assert "2 labels: `negative`, `positive`" in (out / "export" / "demo_sentiment" / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_the_usage_snippet_runs_on_the_export(exported_run, name, capsys):
    out, _, _ = exported_run
    text = (out / "export" / name / "README.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(snippet.replace('"ORG/NAME"', repr(str(out / "export" / name))), {})
    printed = capsys.readouterr().out
    assert printed.strip(), snippet
    if name == "demo_category":
        assert printed.strip() in ("saw", "plum", "bus", "red")


@pytest.mark.slow
def test_export_writes_cards_for_the_exported_step(exported_run, tmp_path, cli):
    out, env, report = exported_run
    result = cli("export", f"--export_dir={tmp_path / 'final'}", env=env)  # OUTPUT_DIR/model: the last step
    assert result.returncode == 0, result.stderr[-2000:]
    for name in PIPELINES:
        card = ModelCard.load(tmp_path / "final" / name / "README.md")
        results = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert results == {m: v for m, v in report["tasks"][name].items() if m in results}
        assert DEMO_TASKS[name].metric in results
        assert {r.metric_args["step"] for r in card.data.eval_results} == {12}
    lonely = tmp_path / "copied-model"
    shutil.copytree(out / "model", lonely)
    result = cli("export", f"--model_dir={lonely}", f"--export_dir={tmp_path / 'bare'}", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no metrics.json beside" in result.stderr
    card = ModelCard.load(tmp_path / "bare" / "demo_sentiment" / "README.md")
    assert card.data.eval_results is None and card.data.library_name == "transformers"
    assert "No dev metrics: there was no metrics.json beside the model" in card.text
    assert "- demo_category (multiple_choice, main metric accuracy)" in card.text


def test_a_checkpoint_step_without_metrics_says_so():
    tasks = list(DEMO_TASKS.values())
    per_task = {t.name: {t.metric: 0.5} for t in tasks}
    report = RunMetrics(global_step=12, average=0.5, main_metric={t.name: t.metric for t in tasks}, tasks=per_task,
                        select_best="per_task", selected={t.name: SelectedStep(12, per_task[t.name]) for t in tasks},
                        selected_average=0.5)
    card = ModelCard(model_card(tasks[0], tasks, report, None, step=8))
    assert card.data.eval_results is None
    assert "metrics.json has none for step 8" in card.text


def test_base_model_and_dataset_of_hub_local_and_file_tasks(tmp_path):
    assert base_model("roberta-base") == "roberta-base" and base_model("org/model") == "org/model"
    assert base_model("../shared/models/all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    assert base_model(str(tmp_path)) == tmp_path.name and base_model("demo") is None
    rte = BUILTIN_TASKS["rte"]
    settings = {"model_name": "roberta-base", "max_steps": -1, "num_epochs": 3.0, "batch_size": 32,
                "learning_rate": 3e-5, "sampling": "temperature", "sampling_temperature": 2.0,
                "task_weights": {"rte": 2.0}, "task_weighting": "static", "select_best": "average", "seed": 1,
                "max_seq_length": 128}
    data = ModelCard(model_card(rte, [rte], None, settings)).data.to_dict()
    assert data["base_model"] == "roberta-base" and data["datasets"] == ["nyu-mll/glue"]
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n")
    (tmp_path / "tasks.yaml").write_text("tasks:\n  - {name: mine, type: token_classification, labels: [O, B-X], "
                                         "train_file: train.conll, dev_file: dev.conll}\n")
    mine = load_tasks_file(str(tmp_path / "tasks.yaml"))["mine"]
    per_task = {"mine": {"f1": 0.25, "precision": 0.5}}
    report = RunMetrics(global_step=3, average=0.25, main_metric={"mine": "f1"}, tasks=per_task, select_best="last",
                        selected={"mine": SelectedStep(3, per_task["mine"])}, selected_average=0.25)
    card = ModelCard(model_card(mine, [mine], report, None))
    (result,) = [r for r in card.data.eval_results if r.metric_type == "f1"]
    assert (result.dataset_type, result.dataset_name, result.dataset_split) == \
        ("mine", "mine (train.conll, dev.conll)", "dev.conll")
    assert card.data.pipeline_tag == "token-classification" and "2 tags (BIO): `O`, `B-X`" in card.text
    text = model_card(rte, [rte], None, settings)
    assert "| SAMPLING | temperature, T=2 |" in text and "| TASK_WEIGHTING | static (rte=2) |" in text
    assert "| steps | NUM_EPOCHS=3.0 |" in text
    assert "| SAMPLING | temperature, T=2, cap K=20000 |" in model_card(rte, [rte], None,
                                                                    {**settings, "sampling_cap": 20000})
