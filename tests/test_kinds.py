"""The task kinds on tiny random models: shapes, sharing, tying, learning, save/reload, export, pipelines."""

import pytest
import torch
import transformers

from trainer.data.dataset import TaskBatchCollator
from trainer.model.modeling import MultitaskModel
from trainer.tasks.demo import build_demo_tokenizer
from trainer.tasks.kinds import KINDS
from trainer.tasks.spec import TaskData, TaskSpec

from .tiny import NER_LABELS, decoder_configs, encoder_configs, gpt2_tokenizer, ner_sentences, roberta_tokenizer

CLS = TaskSpec.from_dict({"name": "sent", "type": "classification", "text_columns": ["text"],
                          "label_column": "label", "labels": ["neg", "pos"]})
NER = TaskSpec.from_dict({"name": "ner", "type": "token_classification", "labels": NER_LABELS})
MLM = TaskSpec.from_dict({"name": "mlm", "type": "masked_lm"})
CLM = TaskSpec.from_dict({"name": "clm", "type": "causal_lm"})
REG = TaskSpec.from_dict({"name": "sim", "type": "regression", "text_columns": ["a", "b"], "label_column": "y"})
MC = TaskSpec.from_dict({"name": "quiz", "type": "multiple_choice", "text_columns": ["q"], "label_column": "y",
                         "choice_columns": ["c0", "c1", "c2"]})
ENCODER_TASKS = [CLS, NER, MLM]
DECODER_TASKS = [CLS, NER, CLM]
ALL_TASKS = [CLS, REG, MC, NER, MLM, CLM]
# Pairs Transformers has no model class for, or the kind refuses (the README lists them): skipped.
EXPECTED_SKIPS = {
    "bert": {"causal_lm"}, "roberta": {"causal_lm"}, "distilbert": {"causal_lm"}, "electra": {"causal_lm"},
    "deberta-v2": {"causal_lm"}, "modernbert": {"causal_lm"},
    "gpt2": {"masked_lm", "multiple_choice"}, "llama": {"masked_lm", "multiple_choice"},
}


def rows(task: TaskSpec, n: int = 24) -> TaskData:
    """Normalised rows with something to learn: sentiment words, NER templates, repetitive text."""
    if task.type == "classification":
        texts = [("a good fun movie" if i % 2 else "a bad dull movie") + f" number {i % 5}" for i in range(n)]
        return TaskData(text_a=texts, text_b=[""] * n, label=[i % 2 for i in range(n)])
    if task.type == "regression":
        texts = [("a good fun movie" if i % 2 else "a bad dull movie") for i in range(n)]
        return TaskData(text_a=texts, text_b=["a good movie"] * n, label=[float(i % 2) * 4 for i in range(n)])
    if task.type == "multiple_choice":
        choices = [["good", "bad", "dull"], ["fun", "awful", "poor"]]
        return TaskData(text_a=["which word is positive ?"] * n, choices=[choices[i % 2] for i in range(n)],
                        label=[0] * n)
    if task.type == "token_classification":
        sentences = ner_sentences(n)
        return TaskData(tokens=[w for w, _ in sentences],
                        tags=[[NER_LABELS.index(t) for t in ts] for _, ts in sentences])
    return TaskData(text=["the movie was really good and the plot was fun ."] * n)


def batch(task: TaskSpec, tokenizer, n: int = 8) -> dict:
    data = rows(task, n)
    encoded = task.kind.tokenize(data.columns, task, tokenizer, 32)
    features = [{k: v[i] for k, v in encoded.items()} for i in range(len(encoded["input_ids"]))]
    out = TaskBatchCollator(tokenizer, [task])([{**f, "task": task.name} for f in features])
    return task.kind.prepare_inputs(out, tokenizer, torch.Generator().manual_seed(0))


def test_every_kind_is_one_module_and_one_registry_entry():
    for name, kind in KINDS.items():
        assert kind.name == name
        assert type(kind).__module__ == f"trainer.tasks.kinds.{name}"
        assert kind.metrics and kind.summary


def kind_supported(task: TaskSpec, config, tokenizer) -> bool:
    """False where Transformers has no model class for the pair, or the kind refuses the model."""
    from trainer.errors import UserError

    try:
        task.kind.check_model(task, config, tokenizer)
    except UserError:
        return False
    return True


@pytest.mark.parametrize("arch", list(encoder_configs()) + list(decoder_configs()))
def test_every_kind_runs_on_every_architecture(arch):
    decoder = arch in decoder_configs()
    config = (decoder_configs() if decoder else encoder_configs())[arch]
    tokenizer = gpt2_tokenizer() if decoder else roberta_tokenizer()
    if decoder:
        tokenizer.pad_token = tokenizer.eos_token
        tokenizer.mask_token = None
    tasks = [t for t in ALL_TASKS if kind_supported(t, config, tokenizer)]
    assert {t.type for t in ALL_TASKS} - {t.type for t in tasks} == EXPECTED_SKIPS[arch]
    torch.manual_seed(0)
    model = MultitaskModel(transformers.AutoModel.from_config(config), tasks)
    embeddings = model.encoder.get_input_embeddings().weight
    for task in tasks:
        task_model = model.task_models[task.name]
        assert getattr(task_model, task_model.base_model_prefix) is model.encoder
        out = model(**batch(task, tokenizer))
        assert torch.isfinite(out.loss), (arch, task.type)
        if task.type.endswith("_lm") and task_model.config.tie_word_embeddings:
            assert task_model.get_output_embeddings().weight.data_ptr() == embeddings.data_ptr()
    assert sum(k.endswith("embeddings.weight") and "position" not in k for k in model.state_dict()) <= 2


@pytest.mark.parametrize(("arch", "task"), [("bert", t) for t in ENCODER_TASKS + [REG, MC]] + [("gpt2", CLM)])
def test_every_kinds_training_loss_falls(arch, task):
    decoder = arch == "gpt2"
    tokenizer = gpt2_tokenizer() if decoder else build_demo_tokenizer()
    if decoder:
        tokenizer.pad_token = tokenizer.eos_token
    config = (decoder_configs(len(tokenizer)) if decoder else encoder_configs(len(tokenizer)))[arch]
    torch.manual_seed(0)
    model = MultitaskModel(transformers.AutoModel.from_config(config), [task]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = batch(task, tokenizer)
    curve = []
    for _ in range(60):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        curve.append(loss.item())
    assert sum(curve[-5:]) / 5 < 0.7 * sum(curve[:5]) / 5, f"{task.type}: {curve[:5]} -> {curve[-5:]}"


# ---- masked LM -----------------------------------------------------------------------------------


def test_masking_is_15_percent_80_10_10_and_a_pure_function_of_the_seed():
    tokenizer = build_demo_tokenizer()
    ids = torch.randint(10, len(tokenizer), (64, 128))
    plain = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(), "task": "mlm"}
    first = KINDS["masked_lm"].prepare_inputs(plain, tokenizer, torch.Generator().manual_seed(5))
    again = KINDS["masked_lm"].prepare_inputs(plain, tokenizer, torch.Generator().manual_seed(5))
    other = KINDS["masked_lm"].prepare_inputs(plain, tokenizer, torch.Generator().manual_seed(6))
    assert torch.equal(first["input_ids"], again["input_ids"]) and torch.equal(first["labels"], again["labels"])
    assert not torch.equal(first["labels"], other["labels"])
    chosen = first["labels"] != -100
    assert 0.13 < chosen.float().mean() < 0.17
    masked = first["input_ids"] == tokenizer.mask_token_id
    assert 0.77 < (masked & chosen).sum() / chosen.sum() < 0.83
    unchanged = chosen & (first["input_ids"] == ids)
    assert 0.07 < unchanged.sum() / chosen.sum() < 0.13
    assert torch.equal(first["labels"][chosen], ids[chosen])
    assert torch.equal(plain["input_ids"], ids)  # the batch given is not changed in place


@pytest.mark.parametrize(("arch", "tasks"), [("bert", ENCODER_TASKS), ("gpt2", DECODER_TASKS)])
def test_every_kind_round_trips_and_exports_to_its_auto_class(tmp_path, arch, tasks):
    """Trainer.save_model -> from_checkpoint gives bit-identical outputs; each export loads with its Auto class."""
    from trainer.outputs.export import export_tasks
    from trainer.training.trainer import MultitaskTrainer

    decoder = arch == "gpt2"
    tokenizer = gpt2_tokenizer() if decoder else build_demo_tokenizer()
    if decoder:
        tokenizer.pad_token = tokenizer.eos_token
    configs = decoder_configs(len(tokenizer), tokenizer.pad_token_id) if decoder else encoder_configs(len(tokenizer))
    torch.manual_seed(0)
    model = MultitaskModel(transformers.AutoModel.from_config(configs[arch]), tasks).eval()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = MultitaskTrainer(model=model, args=args, tasks=tasks, processing_class=tokenizer,
                               data_collator=TaskBatchCollator(tokenizer, tasks))
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = MultitaskModel.from_checkpoint(tmp_path / "saved")
    exported = dict(zip([t.name for t in tasks], export_tasks(model, tokenizer, str(tmp_path / "export")), strict=True))
    for task in tasks:
        inputs = batch(task, tokenizer)
        expected = model(**inputs).logits
        assert torch.equal(expected, reloaded(**inputs).logits), task.type
        standalone = task.kind.model_class().from_pretrained(exported[task.name]).eval()
        assert type(standalone).__name__ == type(model.task_models[task.name]).__name__
        plain = {k: v for k, v in inputs.items() if k not in ("task",)}
        torch.testing.assert_close(standalone(**plain).logits, expected, rtol=0, atol=1e-5)
        if task.kind.pipeline:
            pipe = transformers.pipeline(task.kind.pipeline, model=standalone, tokenizer=tokenizer, device="cpu")
            options = {"max_new_tokens": 5} if task.kind.pipeline == "text-generation" else {}
            assert pipe("the movie was " + (tokenizer.mask_token or "good"), **options)
