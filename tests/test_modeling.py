import pytest
import torch
import transformers
from safetensors.torch import load_file

from trainer.model.modeling import MultitaskModel
from trainer.outputs.export import export_tasks
from trainer.tasks.catalog import DEMO_TASKS

from .tiny import tiny_configs

TASKS = list(DEMO_TASKS.values())


def build(arch: str, seed: int = 0) -> MultitaskModel:
    torch.manual_seed(seed)
    return MultitaskModel(transformers.AutoModel.from_config(tiny_configs()[arch]), TASKS)


def inputs(task: str, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    shape = (3, 4, 9) if DEMO_TASKS[task].type == "multiple_choice" else (3, 9)
    ids = torch.randint(5, 400, shape, generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(shape, dtype=torch.long)}


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "electra"])
def test_one_encoder_shared_by_every_task_model(arch):
    model = build(arch)
    ptrs = set()
    for task_model in model.task_models.values():
        base = getattr(task_model, task_model.base_model_prefix)
        assert base is model.encoder
        ptrs.add(base.get_input_embeddings().weight.data_ptr())
    assert len(ptrs) == 1
    # the state dict holds each encoder weight once
    keys = model.state_dict().keys()
    assert sum(k.endswith("word_embeddings.weight") for k in keys) == 1


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_one_optimizer_step_changes_the_shared_weights_for_all_tasks(arch):
    model = build(arch).train()
    before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    heads_before = {t: m.classifier.weight.detach().clone() for t, m in model.task_models.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model("demo_sentiment", **inputs("demo_sentiment"), labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    optimizer.step()
    changed = [n for n, p in model.encoder.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2, "the shared encoder did not move"
    # every task sees the new encoder; only the trained task's head moved
    for task_model in model.task_models.values():
        assert getattr(task_model, task_model.base_model_prefix) is model.encoder
    assert not torch.equal(model.task_models["demo_sentiment"].classifier.weight, heads_before["demo_sentiment"])
    assert torch.equal(model.task_models["demo_category"].classifier.weight, heads_before["demo_category"])


def test_trainer_save_and_reload_is_bit_identical(tmp_path):
    from trainer.data.dataset import TaskBatchCollator
    from trainer.tasks.demo import build_demo_tokenizer
    from trainer.training.trainer import MultitaskTrainer

    model = build("bert").eval()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    tokenizer = build_demo_tokenizer()
    trainer = MultitaskTrainer(model=model, args=args, tasks=TASKS, processing_class=tokenizer,
                               data_collator=TaskBatchCollator(tokenizer, TASKS))
    trainer.save_model(str(tmp_path / "saved"))
    weights = load_file(tmp_path / "saved" / "model.safetensors")
    assert len(weights) == len(model.state_dict())  # encoder stored once, no shared-memory error
    reloaded = MultitaskModel.from_checkpoint(tmp_path / "saved")
    for task in DEMO_TASKS:
        assert torch.equal(model(task, **inputs(task)).logits, reloaded(task, **inputs(task)).logits)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_export_loads_with_auto_classes_and_predicts_identically(tmp_path, arch):
    from trainer.tasks.demo import build_demo_tokenizer

    model = build(arch).eval()
    dirs = export_tasks(model, build_demo_tokenizer(), str(tmp_path / "export"))
    assert sorted(d.name for d in dirs) == sorted(DEMO_TASKS)
    for task_dir in dirs:
        task = DEMO_TASKS[task_dir.name]
        auto = (transformers.AutoModelForMultipleChoice if task.type == "multiple_choice"
                else transformers.AutoModelForSequenceClassification)
        standalone = auto.from_pretrained(task_dir).eval()
        transformers.AutoTokenizer.from_pretrained(task_dir)
        x = inputs(task.name)
        expected, got = model(task.name, **x).logits, standalone(**x).logits
        # Same weights bit for bit; from_pretrained's memory-mapped tensors can take a different
        # SIMD path in the final matmul, so logits may differ in the last float32 bit.
        fresh = model.standalone_task_model(task.name).state_dict()
        assert all(torch.equal(v, fresh[k]) for k, v in standalone.state_dict().items())
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert not any(p.name.startswith(".export") for p in tmp_path.iterdir())
