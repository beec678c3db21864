"""EXPORT_MERGED=false: each task's export is a peft adapter directory that peft alone loads and that predicts what
the multitask model predicts."""

import json
import subprocess
import sys

import pytest
import torch
import transformers

from trainer.errors import UserError
from trainer.model.adapters import ADAPTERS, LoraOptions
from trainer.model.modeling import MultitaskModel
from trainer.outputs.export import save_task
from trainer.outputs.export_form import export_merged
from trainer.outputs.inference import load_task_model, predict_inputs
from trainer.outputs.model_card import model_card, write_cards
from trainer.outputs.peft_export import save_peft_task
from trainer.training.metrics import without_timings

from .test_kinds import CLM, CLS, MLM, NER, batch
from .tiny import save_tiny_llama, save_tiny_pretrained, settings_of

LOADER = """
import json, sys, torch, peft
directory, cls_name, inputs = sys.argv[1], sys.argv[2], torch.load(sys.argv[3])
import transformers
labels = transformers.AutoConfig.from_pretrained(directory).id2label  # the head's labels: the base's config lacks them
model = getattr(peft, cls_name).from_pretrained(directory, id2label=labels).eval()
with torch.no_grad():
    torch.save(model(**inputs).logits, sys.argv[4])
assert "trainer" not in sys.modules
"""


def adapters_that_matter(model: MultitaskModel) -> None:
    """Random lora_B weights (peft starts them at zero), so that every adapter changes the model's output."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny pretrained BERT base with a trained-looking LoRA per task (random lora_B, so the adapter matters),
    each task exported unmerged."""
    root = tmp_path_factory.mktemp("unmerged")
    base = save_tiny_pretrained(root / "base")
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    tasks = [CLS, NER, MLM]
    torch.manual_seed(0)
    adapter = ADAPTERS["lora_per_task"](LoraOptions(dropout=0.0), [t.name for t in tasks])
    model = MultitaskModel(transformers.AutoModel.from_pretrained(base), tasks, "static", adapter=adapter).eval()
    adapters_that_matter(model)
    for task in tasks:
        save_peft_task(model, tokenizer, task.name, root / task.name, str(base))
    return root, model, tokenizer


@pytest.mark.parametrize(("task", "auto_class"), [(CLS, "AutoPeftModelForSequenceClassification"),
                                                  (NER, "AutoPeftModelForTokenClassification")])
def test_the_unmerged_export_loads_with_peft_alone_and_predicts_as_the_multitask_model(exported, task, auto_class):
    root, model, tokenizer = exported
    directory = root / task.name
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(root / "base")
    assert (directory / "adapter_model.safetensors").is_file()
    inputs = batch(task, tokenizer)
    with torch.no_grad():
        expected = model(**inputs).logits
    plain = {k: v for k, v in inputs.items() if k not in ("task", "labels")}
    torch.save(plain, root / f"{task.name}.in.pt")
    subprocess.run([sys.executable, "-c", LOADER, str(directory), auto_class, str(root / f"{task.name}.in.pt"),
                    str(root / f"{task.name}.out.pt")], check=True, cwd=root)
    torch.testing.assert_close(torch.load(root / f"{task.name}.out.pt"), expected, rtol=0, atol=1e-5)


def test_predict_on_the_unmerged_and_the_merged_export_agrees(exported):
    root, model, tokenizer = exported
    for task in (CLS, NER, MLM):  # MLM: no AutoPeftModelFor... class; predict loads it through PeftModel
        merged = root / "merged" / task.name
        save_task(model, tokenizer, task.name, merged)
        text = [{"text": f"alice lives in paris and likes the {tokenizer.mask_token if task is MLM else 'film'}"}]
        got = []
        for directory in (root / task.name, merged):
            spec, plain, tok = load_task_model(str(root), str(directory), task.name)
            got.append(predict_inputs(spec, plain, tok, text, 32))
        assert got[0] == got[1], task.name


def test_the_pipeline_runs_on_the_unmerged_export(exported):
    root, _, _ = exported
    code = ("import json, sys, peft, transformers; d = sys.argv[1]\n"
            "labels = transformers.AutoConfig.from_pretrained(d).id2label\n"
            "m = peft.AutoPeftModelForSequenceClassification.from_pretrained(d, id2label=labels)\n"
            "p = transformers.pipeline('text-classification', model=m, tokenizer=transformers.AutoTokenizer."
            "from_pretrained(d))\n"
            "print(json.dumps(p('what a film')))")
    out = subprocess.run([sys.executable, "-c", code, str(root / CLS.name)], check=True, capture_output=True,
                         text=True, cwd=root).stdout
    labels = json.loads((root / CLS.name / "config.json").read_text())["id2label"].values()
    assert json.loads(out.strip().splitlines()[-1])[0]["label"] in labels


SETTINGS = {"model_name": "bert-base-uncased", "max_steps": -1, "num_epochs": 3.0, "batch_size": 32,
            "learning_rate": 3e-5, "sampling": "proportional", "sampling_temperature": 2.0, "task_weights": {},
            "task_weighting": "static", "select_best": "last", "seed": 1, "max_seq_length": 128}


def test_the_card_of_the_unmerged_export_names_its_base_and_peft_class(exported):
    root, model, _ = exported
    card = model_card(CLS, list(model.tasks.values()), None, SETTINGS, unmerged=True)
    assert "base_model: bert-base-uncased" in card and "library_name: peft" in card
    assert "AutoPeftModelForSequenceClassification.from_pretrained(model_id, id2label=config.id2label)" in card
    write_cards(root, [CLS], None, SETTINGS)  # detects the adapter directory
    assert "AutoPeftModelForSequenceClassification" in (root / CLS.name / "README.md").read_text()


def test_export_merged_decides_by_the_setting_else_the_base_size_and_refuses_the_demo_unmerged(exported):
    _, model, _ = exported
    assert export_merged(None, model) is True  # a tiny base: merged
    assert export_merged(False, model) is False and export_merged(True, model) is True
    with pytest.raises(UserError, match="EXPORT_MERGED=false with MODEL_NAME=demo"):
        settings_of(model_name="demo", adapter="lora", export_merged=False)


def test_a_causal_lm_exported_unmerged_loads_with_auto_peft_model_for_causal_lm(tmp_path):
    """A second architecture and kind: a tiny Llama (untied LM head, saved as `modules_to_save`) with one LoRA."""
    base = save_tiny_llama(tmp_path / "base")
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    adapter = ADAPTERS["lora"](LoraOptions(dropout=0.0), [CLM.name])
    model = MultitaskModel(transformers.AutoModel.from_pretrained(base), [CLM], "static", adapter=adapter).eval()
    adapters_that_matter(model)
    save_peft_task(model, tokenizer, CLM.name, tmp_path / CLM.name, str(base))
    inputs = batch(CLM, tokenizer)
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.save({k: v for k, v in inputs.items() if k not in ("task", "labels")}, tmp_path / "in.pt")
    subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / CLM.name), "AutoPeftModelForCausalLM",
                    str(tmp_path / "in.pt"), str(tmp_path / "out.pt")], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=1e-5)


def _predictions(result) -> list[dict]:
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _same(got: list[dict], expected: list[dict]) -> None:
    """Equal predictions: the same labels, numbers within float noise (merging the adapter reorders sums)."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], abs=1e-4), key
            else:
                assert a[key] == b[key], key


def test_a_run_exported_unmerged_predicts_evaluates_and_pushes_as_the_merged_form(tmp_path, cli):
    """Through the CLI, as a user would: train with EXPORT_MERGED=false, export the same model merged beside it,
    then predict, predict-file and evaluate on both forms (and predict on the multitask model itself), and push
    the unmerged folder as it is."""
    from .hub_fake import HubFake
    from .test_push import hub_env
    from .tiny import quick_env, run_cli

    base = save_tiny_pretrained(tmp_path / "base")
    out = tmp_path / "out"
    env = quick_env(out, MODEL_NAME=str(base), ADAPTER="lora_per_task", EXPORT_MERGED="false", MAX_STEPS="8",
                    ADAPTER_LEARNING_RATE="0.01", SELECT_BEST="last")  # exports of the final model, as model/ holds
    result = cli("train", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = ("demo_sentiment", "demo_similarity", "demo_category")
    for task in tasks:
        unmerged = out / "export" / task
        assert (unmerged / "adapter_config.json").is_file() and not (unmerged / "model.safetensors").exists()
        assert "library_name: peft" in (unmerged / "README.md").read_text()
    merged = tmp_path / "merged"
    result = cli("export", f"--export_dir={merged}", env={**env, "EXPORT_MERGED": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (merged / "demo_sentiment" / "model.safetensors").is_file()

    texts = json.dumps(["a great and lovely film", "the plot was dull and slow", "fine"])
    for task in tasks:
        forms = [out / "model", out / "export" / task, merged / task]
        pair = {"demo_similarity": [f"--text_pair={texts}"],
                "demo_category": ['--choices=["sports", "films", "food"]']}.get(task, [])  # regression, multiple choice
        got = [_predictions(cli("predict", f"--task={task}", f"--text={texts}", *pair, f"--model_dir={d}", env=env))
               for d in forms]
        _same(got[1], got[0])
        _same(got[2], got[0])

    rows = tmp_path / "in.tsv"
    rows.write_text("text\tlabel\na great and lovely film\tpositive\nthe plot was dull and slow\tnegative\n")
    files = []
    for d in (out / "export" / "demo_sentiment", merged / "demo_sentiment"):
        target = tmp_path / f"{d.parent.name}.tsv"
        result = cli("predict-file", "--task=demo_sentiment", f"--input={rows}", f"--output={target}",
                     f"--model_dir={d}", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        files.append([line.split("\t") for line in target.read_text().splitlines()])
    assert [r[:2] for r in files[0]] == [r[:2] for r in files[1]] and len(files[0]) == 3

    scores = []
    for model_dir in (None, merged):
        flags = ["evaluate", "--split=dev"] + ([f"--model_dir={model_dir}"] if model_dir else [])
        result = cli(*flags, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads((out / "metrics_dev.json").read_text())
        scores.append({t: v for t, v in report["tasks"].items()})
    for task in tasks:
        for metric, value in without_timings(scores[1][task]).items():
            if isinstance(value, float):
                assert scores[0][task][metric] == pytest.approx(value, abs=1e-4), (task, metric)

    with HubFake() as hub:
        pushed = run_cli("push", "--task=demo_category", "--repo_id=my-org/category",
                         env=hub_env(env, hub.url, tmp_path))
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        local = {p.name: p.read_bytes() for p in (out / "export" / "demo_category").iterdir()
                 if not p.name.startswith(".")}
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(local)
        assert hub.repos["my-org/category"]["files"] == local


def test_a_question_answering_task_exported_unmerged_loads_as_its_card_says(tmp_path):
    """The QA head (`qa_outputs`) travels as modules_to_save; PeftModel on AutoModelForQuestionAnswering, as the
    card says, gives the multitask model's start and end logits (peft's AutoPeftModelForQuestionAnswering would
    drop token_type_ids: the card must not name it)."""
    from trainer.tasks.spec import TaskSpec

    qa = TaskSpec.from_dict({"name": "qa", "type": "question_answering"})
    base = save_tiny_pretrained(tmp_path / "base")
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    adapter = ADAPTERS["lora"](LoraOptions(dropout=0.0), [qa.name])
    model = MultitaskModel(transformers.AutoModel.from_pretrained(base), [qa], "static", adapter=adapter).eval()
    adapters_that_matter(model)
    save_peft_task(model, tokenizer, qa.name, tmp_path / "qa", str(base))
    card = model_card(qa, [qa], None, SETTINGS, unmerged=True)
    assert "PeftModel.from_pretrained(base, model_id)" in card and "AutoPeftModel" not in card
    inputs = dict(tokenizer(["which fruit is red ?"], ["the plum is red and the pear is green"], return_tensors="pt"))
    with torch.no_grad():
        expected = model(task=qa.name, **inputs)
    code = ("import sys, torch, peft, transformers\n"
            "base_id = peft.PeftConfig.from_pretrained(sys.argv[1]).base_model_name_or_path\n"
            "base = transformers.AutoModelForQuestionAnswering.from_pretrained(base_id)\n"
            "m = peft.PeftModel.from_pretrained(base, sys.argv[1]).eval()\n"
            "with torch.no_grad():\n"
            "    out = m(**torch.load(sys.argv[2]))\n"
            "torch.save((out.start_logits, out.end_logits), sys.argv[3])\n")
    torch.save(inputs, tmp_path / "in.pt")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "qa"), str(tmp_path / "in.pt"),
                    str(tmp_path / "out.pt")], check=True, cwd=tmp_path)
    start, end = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(start, expected.start_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(end, expected.end_logits, rtol=0, atol=1e-5)
