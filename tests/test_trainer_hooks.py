"""The Trainer hooks we override: task-weighted loss and precision selection."""

import pytest
import torch
import transformers

from trainer.data import TaskBatchCollator
from trainer.demo import build_demo_tokenizer
from trainer.errors import UserError
from trainer.modeling import MultitaskModel
from trainer.multitask_trainer import MultitaskTrainer
from trainer.tasks import DEMO_TASKS
from trainer.train import precision_flags

from .tiny import tiny_configs


def test_task_weights_scale_each_tasks_loss(tmp_path):
    torch.manual_seed(0)
    model = MultitaskModel(transformers.AutoModel.from_config(tiny_configs()["bert"]), list(DEMO_TASKS.values()))
    tokenizer = build_demo_tokenizer()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = MultitaskTrainer(model=model, args=args, tasks=list(DEMO_TASKS.values()), processing_class=tokenizer,
                               data_collator=TaskBatchCollator(tokenizer, list(DEMO_TASKS.values())),
                               task_weights={"demo_sentiment": 2.5})
    model.eval()
    batch = {"task": "demo_sentiment", "input_ids": torch.randint(5, 300, (4, 7)), "labels": torch.tensor([0, 1, 0, 1])}
    plain = model(**batch).loss
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(2.5 * plain.item())
    other = {**batch, "task": "demo_similarity", "labels": torch.tensor([0.5, 1.0, 2.0, 3.0])}
    # a task without a weight keeps weight 1
    assert trainer.compute_loss(model, dict(other)).item() == pytest.approx(model(**other).loss.item())


def test_precision_auto_is_fp32_on_cpu_and_half_precision_needs_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision_flags("auto") == {"bf16": False, "fp16": False, "use_cpu": True}
    with pytest.raises(UserError, match="PRECISION=bf16 needs a CUDA GPU"):
        precision_flags("bf16")
    # Mocked: no GPU here. With one, auto picks bf16 where supported, else fp16.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert precision_flags("auto") == {"bf16": True, "fp16": False, "use_cpu": False}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert precision_flags("auto") == {"bf16": False, "fp16": True, "use_cpu": False}


def test_each_tasks_training_loss_is_logged_as_its_mean_since_the_last_log(tmp_path):
    torch.manual_seed(0)
    tasks = list(DEMO_TASKS.values())
    model = MultitaskModel(transformers.AutoModel.from_config(tiny_configs()["bert"]), tasks)
    tokenizer = build_demo_tokenizer()
    seen = []

    class Keep(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = MultitaskTrainer(model=model, args=args, tasks=tasks, processing_class=tokenizer,
                               data_collator=TaskBatchCollator(tokenizer, tasks), callbacks=[Keep()],
                               task_weights={"demo_sentiment": 3.0})
    model.train()
    sentiment = [{"task": "demo_sentiment", "input_ids": torch.randint(5, 300, (4, 7)),
                  "labels": torch.tensor([0, 1, 0, 1])} for _ in range(2)]
    similarity = {"task": "demo_similarity", "input_ids": torch.randint(5, 300, (4, 7)),
                  "labels": torch.tensor([0.5, 1.0, 2.0, 3.0])}
    losses = [trainer.compute_loss(model, dict(b)).item() / 3.0 for b in sentiment]
    other = trainer.compute_loss(model, dict(similarity)).item()
    trainer.log({"loss": 1.0})
    logged = seen[-1]
    assert logged["demo_sentiment_loss"] == pytest.approx(sum(losses) / 2, abs=1e-4)  # unweighted mean
    assert logged["demo_similarity_loss"] == pytest.approx(other, abs=1e-4)
    assert "demo_category_loss" not in logged  # not trained since the last log
    trainer.log({"loss": 1.0})
    assert not any(k.endswith("_loss") and k != "loss" for k in seen[-1])  # reset after each log
