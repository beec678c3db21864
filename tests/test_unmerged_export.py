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

from .test_kinds import CLM, CLS, NER, batch
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


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny pretrained BERT base with a trained-looking LoRA per task (random lora_B, so the adapter matters),
    each task exported unmerged."""
    root = tmp_path_factory.mktemp("unmerged")
    base = save_tiny_pretrained(root / "base")
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    tasks = [CLS, NER]
    torch.manual_seed(0)
    adapter = ADAPTERS["lora_per_task"](LoraOptions(dropout=0.0), [t.name for t in tasks])
    model = MultitaskModel(transformers.AutoModel.from_pretrained(base), tasks, "static", adapter=adapter).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.5)
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
    for task in (CLS, NER):
        merged = root / "merged" / task.name
        save_task(model, tokenizer, task.name, merged)
        text = [{"text": "alice lives in paris and likes the film"}]
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
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.5)
    save_peft_task(model, tokenizer, CLM.name, tmp_path / CLM.name, str(base))
    inputs = batch(CLM, tokenizer)
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.save({k: v for k, v in inputs.items() if k not in ("task", "labels")}, tmp_path / "in.pt")
    subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / CLM.name), "AutoPeftModelForCausalLM",
                    str(tmp_path / "in.pt"), str(tmp_path / "out.pt")], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=1e-5)
