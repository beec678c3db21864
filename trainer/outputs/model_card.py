"""The model card of every `export/<task>`: a README.md with the YAML metadata the Hugging Face Hub reads.

The metadata (`base_model`, `library_name`, `pipeline_tag`, `tags`, `datasets`, `model-index`) carries the dev
metrics of the step the export's weights come from; the page says what the task is, its labels, those metrics
beside the final step's, the training settings, the other tasks trained on the same encoder, and how to load it.
Everything comes from the task specs, `metrics.json` (`RunMetrics`) and the run's settings as it stores them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from trainer.config.settings import DEMO_MODEL
from trainer.files import write_text_atomically
from trainer.layout import RunDirs, checkpoint_step
from trainer.outputs.peft_export import PEFT_TASK_TYPES, is_peft_export
from trainer.tasks.spec import TaskSpec
from trainer.training.metrics import RunMetrics, read_run_metrics

CARD_FILE = "README.md"
SAMPLE_TEXT = "what a wonderful film"


def base_model(model_name: str) -> str | None:
    """MODEL_NAME as the Hub's `base_model`: a hub id as given, a local path by its folder's name; the demo has none."""
    if model_name == DEMO_MODEL:
        return None
    local = os.path.isdir(model_name) or model_name.startswith(("/", ".", "~")) or model_name.count("/") > 1
    return Path(model_name.rstrip("/")).name if local else model_name


def _dataset(task: TaskSpec) -> dict[str, Any]:
    """The model-index `dataset` of a task: its hub dataset, a local source folder's name, or its files' names."""
    if task.demo:
        return {"type": "demo", "name": "templated offline demo data (trainer/demo.py)", "split": "dev"}
    if task.hub_path:
        local = os.path.isabs(task.hub_path) or task.hub_path.startswith(".")
        path = Path(task.hub_path).name if local else task.hub_path
        entry = {"type": path, "name": f"{path} {task.hub_name}" if task.hub_name else path}
        if local:  # a local folder is not the Hub dataset its name may match (a subset of ag_news): its files
            files = ", ".join(sorted(p.name for p in Path(task.hub_path).iterdir())) if Path(task.hub_path).is_dir() \
                else path
            entry = {"type": task.name, "name": f"{task.name} (local files {path}/: {files})"}
        if task.hub_name:
            entry["config"] = task.hub_name
        return {**entry, "split": task.hub_splits[1] or "validation"}
    files = ", ".join(Path(f).name for f in (task.train_file, task.train_labels_file, task.dev_file,
                                             task.dev_labels_file) if f)
    return {"type": task.name, "name": f"{task.name} ({files})", "split": Path(task.dev_file).name if task.dev_file
            else f"dev ({task.split[0]:g} of {Path(task.train_file).name})"}


def _labels(task: TaskSpec) -> tuple[str, ...]:
    return tuple(task.options.get("label_names") or task.options.get("labels") or ())


def _describe_outputs(task: TaskSpec) -> str:
    labels = _labels(task)
    if task.type in ("classification", "token_classification"):
        what = "labels" if task.type == "classification" else "tags (BIO)"
        return f"{len(labels)} {what}: {', '.join(f'`{label}`' for label in labels)}"
    if task.type == "multiple_choice":
        return f"one of N candidate answers{' (answer keys ' + ', '.join(labels) + ')' if labels else ''}"
    if task.type == "regression":
        return "one number per input"
    if task.type == "question_answering":
        return "the answer's start and end in the context (a span of it)"
    return "no labels: the objective is the text itself"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "—" if value is None else str(value)


def _exported_metrics(task: TaskSpec, run_metrics: RunMetrics | None, step: int | None
                      ) -> tuple[int | None, dict[str, float] | None]:
    """The step the export's weights come from and its dev metrics (None where metrics.json has none for it)."""
    if not run_metrics:
        return step, None
    selected = run_metrics.selected[task.name]
    step = selected.step if step is None else step
    if selected.step == step:
        return step, selected.metrics
    return step, run_metrics.tasks[task.name] if run_metrics.global_step == step else None


def _settings_rows(settings: Mapping[str, Any], tasks: list[TaskSpec], run_metrics: RunMetrics | None
                   ) -> list[tuple[str, str]]:
    steps = f"MAX_STEPS={settings['max_steps']}" if settings["max_steps"] > 0 else \
        f"NUM_EPOCHS={settings['num_epochs']}"
    if run_metrics:
        steps += f" ({run_metrics.global_step} optimizer steps)"
    sampling = settings["sampling"] + (f", T={settings['sampling_temperature']:g}"
                                       if settings["sampling"] == "temperature" else "")
    if settings.get("sampling_cap") is not None:  # metrics.json from before SAMPLING_CAP has none
        sampling += f", cap K={settings['sampling_cap']}"
    weights = ", ".join(f"{k}={v:g}" for k, v in settings["task_weights"].items())
    weighting = settings["task_weighting"] + (f" ({weights})" if weights else "")
    rows = [("MODEL_NAME", base_model(settings["model_name"]) or settings["model_name"]),
            ("TASKS", ",".join(t.name for t in tasks)),
            ("steps", steps), ("BATCH_SIZE", str(settings["batch_size"])),
            ("LEARNING_RATE", f"{settings['learning_rate']:g}"), ("SAMPLING", sampling),
            ("TASK_WEIGHTING", weighting), ("SELECT_BEST", settings["select_best"]), ("SEED", str(settings["seed"])),
            ("MAX_SEQ_LENGTH", str(settings["max_seq_length"]))]
    rows += [(name.upper(), str(settings[name])) for name in ("max_train_samples", "max_eval_samples")
             if settings.get(name)]
    return rows


def _load_lines(task: TaskSpec, unmerged: bool) -> tuple[list[str], list[str]]:
    """(imports, lines) that load the export: its `AutoModelFor...` class; unmerged, peft's `AutoPeftModelFor...`
    class where peft has one for the kind, else `PeftModel` on the `AutoModelFor...` base. The export's own
    config.json carries the head's labels, which the base's config lacks."""
    cls = task.kind.model_class().__name__
    if not unmerged:
        return [f"from transformers import {cls}, AutoTokenizer"], [f"model = {cls}.from_pretrained(model_id)"]
    peft_type = PEFT_TASK_TYPES.get(task.type)
    if peft_type is not None:
        auto = f"AutoPeftModelFor{cls.removeprefix('AutoModelFor')}"
        return ([f"from peft import {auto}", "from transformers import AutoConfig, AutoTokenizer"],
                ["config = AutoConfig.from_pretrained(model_id)  # the head's labels",
                 f"model = {auto}.from_pretrained(model_id, id2label=config.id2label)"])
    return (["from peft import PeftConfig, PeftModel", f"from transformers import {cls}, AutoConfig, AutoTokenizer"],
            ["base_id = PeftConfig.from_pretrained(model_id).base_model_name_or_path",
             f"base = {cls}.from_pretrained(base_id, config=AutoConfig.from_pretrained(model_id))",
             "model = PeftModel.from_pretrained(base, model_id)"])


def _usage(task: TaskSpec, unmerged: bool = False) -> str:
    imports, load = _load_lines(task, unmerged)
    imports = (["import torch"] if not task.kind.pipeline else []) + imports
    if task.kind.pipeline:
        imports.append("from transformers import pipeline")
    lines = ["```python", *imports, "",
             f'model_id = "ORG/NAME"  # the Hub repo of this card, or the local export/{task.name} folder',
             *load, "tokenizer = AutoTokenizer.from_pretrained(model_id)"]
    pair = len(task.options.get("text_columns") or ()) == 2
    if task.type in ("classification", "regression"):
        sample = f'{{"text": "{SAMPLE_TEXT}", "text_pair": "a film worth seeing"}}' if pair else f'"{SAMPLE_TEXT}"'
        lines += [f'predict = pipeline("{task.kind.pipeline}", model=model, tokenizer=tokenizer'
                  + (', function_to_apply="none")' if task.type == "regression" else ")"),
                  f"print(predict({sample}))"]
    elif task.type == "token_classification":
        lines += [f'tagger = pipeline("{task.kind.pipeline}", model=model, tokenizer=tokenizer, '
                  'aggregation_strategy="simple")', 'print(tagger("alice lives in paris"))']
    elif task.type == "masked_lm":
        lines += ['fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)',
                  'print(fill(f"what a {tokenizer.mask_token} film"))']
    elif task.type == "causal_lm":
        lines += ['generate = pipeline("text-generation", model=model, tokenizer=tokenizer)',
                  'print(generate("once upon a time", max_new_tokens=20))']
    elif task.type == "question_answering":  # no pipeline in Transformers 5: the best span of one window
        lines += ['question, context = "which fruit ?", "we saw a red bus and the fruit is plum"',
                  "batch = tokenizer(question, context, return_tensors=\"pt\", return_offsets_mapping=True)",
                  'offsets = batch.pop("offset_mapping")[0]',
                  "with torch.no_grad():",
                  "    out = model(**batch)",
                  "outside = torch.tensor([s != 1 for s in batch.sequence_ids(0)])  # not the context's tokens",
                  "start = out.start_logits[0].masked_fill(outside, -1e9).argmax().item()",
                  "ends = out.end_logits[0, start:start + 30].masked_fill(outside[start:start + 30], -1e9)",
                  "end = start + ends.argmax().item()",
                  "print(context[offsets[start][0]:offsets[end][1]])"]
    else:  # multiple choice: no pipeline in Transformers
        lines += ['question, choices = "pick the fruit .", ["saw", "plum", "bus", "red"]',
                  "batch = tokenizer([question] * len(choices), choices, return_tensors=\"pt\", padding=True)",
                  "with torch.no_grad():",
                  "    logits = model(**{k: v.unsqueeze(0) for k, v in batch.items()}).logits",
                  "print(choices[logits.argmax(-1).item()])"]
    return "\n".join(lines + ["```"])


def model_card(task: TaskSpec, tasks: list[TaskSpec], run_metrics: RunMetrics | None,
               settings: Mapping[str, Any] | None, step: int | None = None, unmerged: bool = False) -> str:
    """The README.md of `export/<task>` (`unmerged`: a peft adapter directory, EXPORT_MERGED=false).

    `tasks` are every task of the run (the shared encoder's), `run_metrics` is metrics.json (None: a card without
    metrics), `settings` the run's settings as metrics.json stores them, `step` the step of the exported
    weights (None: the task's selected step, as training exports it).
    """
    step, metrics = _exported_metrics(task, run_metrics, step)
    final = run_metrics.tasks[task.name] if run_metrics else None
    names = [m for m in task.kind.metrics_for(task) if metrics and m in metrics]
    pipeline_type = task.kind.pipeline or task.type.replace("_", "-")
    dataset = _dataset(task)
    meta: dict[str, Any] = {}
    base = base_model(settings["model_name"]) if settings else None
    if base:
        meta["base_model"] = base
    meta["library_name"] = "peft" if unmerged else "transformers"
    if task.kind.pipeline:
        meta["pipeline_tag"] = task.kind.pipeline
    meta["tags"] = ["multitask", task.type]
    if dataset["type"] == task.hub_path:
        meta["datasets"] = [task.hub_path]
    if metrics:
        meta["model-index"] = [{"name": task.name, "results": [{
            "task": {"type": pipeline_type, "name": pipeline_type.replace("-", " ").title()},
            "dataset": dataset,
            "metrics": [{"type": m, "value": float(metrics[m]), "name": f"dev {m} (step {step})",
                         "args": {"step": step}} for m in names],
        }]}]

    others = [t for t in tasks if t.name != task.name]
    lines = [f"# {task.name}", "",
             f"A **{task.type}** model ({task.kind.summary}), trained by multitask-trainer "
             + (f"on one shared encoder together with {len(others)} other task{'s' if len(others) != 1 else ''}. "
                if others else "on its own (a run of this one task). ")
             + ("This folder is this task's LoRA adapter and head (peft `modules_to_save`): loading it fetches the "
                "base model named in adapter_config.json." if unmerged else "This folder is the standalone "
                "Transformers model of this task: the shared encoder with this task's head."), ""]
    if settings:
        lines.append(f"- Base model: `{base}`" if base else "- Base model: none; the offline demo encoder (a tiny "
                     "BERT built from scratch, MODEL_NAME=demo)")
    lines += [f"- Outputs: {_describe_outputs(task)}", f"- Main metric: {task.metric}",
              f"- Dataset: {dataset['name']}, scored on its `{dataset['split']}` split", "", "## Results", ""]
    if metrics:
        why = (f"the step SELECT_BEST={run_metrics.select_best} chose" if step == run_metrics.selected[task.name].step
               else "the step these weights were exported from")
        lines += [f"Dev metrics at step {step} ({why}), beside the final step {run_metrics.global_step}:", "",
                  f"| metric | step {step} (these weights) | step {run_metrics.global_step} (final) |",
                  "|---|---|---|"]
        lines += [f"| {m}{' (main)' if m == task.metric else ''} | {_fmt(metrics[m])} | {_fmt(final.get(m))} |"
                  for m in names]
    elif run_metrics:
        lines.append(f"No dev metrics: metrics.json has none for step {step}, the step these weights come from.")
    else:
        lines.append("No dev metrics: there was no metrics.json beside the model this was exported from.")
    lines.append("")
    if others:
        lines += ["## Trained with (shared encoder)", ""]
        if run_metrics:
            lines += ["| task | kind | main metric | selected value | step |", "|---|---|---|---|---|"]
            for other in others:
                chosen = run_metrics.selected[other.name]
                lines.append(f"| {other.name} | {other.type} | {other.metric} | "
                             f"{_fmt(chosen.metrics.get(other.metric))} | {chosen.step} |")
        else:
            lines += [f"- {other.name} ({other.type}, main metric {other.metric})" for other in others]
        lines.append("")
    if settings:
        lines += ["## Training settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in _settings_rows(settings, tasks, run_metrics)]
        lines.append("")
    lines += ["## Usage", "", _usage(task, unmerged), "",
              f"or with the project: `python -m trainer predict --task={task.name} --model_dir=<this folder> "
              "--text=...`", ""]
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n" + "\n".join(lines)


def write_cards(export_dir: Path, tasks: list[TaskSpec], run_metrics: RunMetrics | None,
                settings: Mapping[str, Any] | None, step: int | None = None) -> None:
    """Write `export_dir/<task>/README.md` for every task, each replaced atomically."""
    for task in tasks:
        unmerged = is_peft_export(export_dir / task.name)
        write_text_atomically(export_dir / task.name / CARD_FILE,
                              model_card(task, tasks, run_metrics, settings, step, unmerged))


def run_metrics_of(model_dir: Path, tasks: list[TaskSpec]) -> tuple[RunMetrics | None, int | None]:
    """metrics.json of the run a multitask model directory belongs to (its OUTPUT_DIR: `model/`'s or
    `checkpoint-<N>/`'s parent), and the step of that directory's weights; (None, None) when there is none, or
    when it is another run's (other tasks)."""
    path = RunDirs(model_dir.parent).metrics
    if not path.is_file():
        return None, None
    run_metrics = read_run_metrics(path)
    if not {t.name for t in tasks} <= set(run_metrics.tasks):
        return None, None
    checkpoint = checkpoint_step(model_dir.name)
    return run_metrics, checkpoint if checkpoint is not None else run_metrics.global_step
