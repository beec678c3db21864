"""The Trainer hooks we override and the losses they train: task weights (static and learned), summed-loss
steps, per-task loss logging, and precision selection."""

import pytest
import torch
import transformers

from trainer.data.dataset import TaskBatchCollator
from trainer.errors import UserError
from trainer.model.modeling import MultitaskModel
from trainer.tasks.catalog import DEMO_TASKS
from trainer.tasks.demo import build_demo_tokenizer
from trainer.training.arguments import precision_flags
from trainer.training.trainer import MultitaskTrainer

from .tiny import tiny_configs

TASKS = list(DEMO_TASKS.values())


def make_trainer(tmp_path, weighting="static", weights=None, **kwargs):
    torch.manual_seed(0)
    model = MultitaskModel(transformers.AutoModel.from_config(tiny_configs()["bert"]), TASKS, weighting, weights)
    tokenizer = build_demo_tokenizer()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], weight_decay=0.1)
    trainer = MultitaskTrainer(model=model, args=args, tasks=TASKS, processing_class=tokenizer,
                               data_collator=TaskBatchCollator(tokenizer, TASKS), **kwargs)
    return model, trainer


def demo_batches():
    return {
        "demo_sentiment": {"task": "demo_sentiment", "input_ids": torch.randint(5, 300, (4, 7)),
                           "labels": torch.tensor([0, 1, 0, 1])},
        "demo_similarity": {"task": "demo_similarity", "input_ids": torch.randint(5, 300, (3, 9)),
                            "labels": torch.tensor([0.5, 1.0, 2.0])},
        "demo_category": {"task": "demo_category", "input_ids": torch.randint(5, 300, (2, 4, 6)),
                          "labels": torch.tensor([1, 3])},
    }


def raw_loss(model, batch):
    return model.task_models[batch["task"]](**{k: v for k, v in batch.items() if k != "task"}).loss


def test_task_weights_scale_each_tasks_loss(tmp_path):
    model, trainer = make_trainer(tmp_path, weights={"demo_sentiment": 2.5})
    batches = demo_batches()
    model.train()  # the weights apply to the training loss; evaluation reports the task's own loss
    torch.manual_seed(1)
    weighted = trainer.compute_loss(model, dict(batches["demo_sentiment"])).item()
    torch.manual_seed(1)
    assert weighted == pytest.approx(2.5 * raw_loss(model, batches["demo_sentiment"]).item())
    # a task without a weight keeps weight 1
    torch.manual_seed(1)
    other = trainer.compute_loss(model, dict(batches["demo_similarity"])).item()
    torch.manual_seed(1)
    assert other == pytest.approx(raw_loss(model, batches["demo_similarity"]).item())
    model.eval()
    assert trainer.compute_loss(model, dict(batches["demo_sentiment"])).item() == pytest.approx(
        raw_loss(model, batches["demo_sentiment"]).item())


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_an_all_tasks_step_backpropagates_the_sum_of_the_weighted_task_losses(tmp_path):
    weights = {"demo_sentiment": 2.0, "demo_category": 0.5}
    model, trainer = make_trainer(tmp_path, weights=weights)
    model.eval()  # no dropout: the two computations see the same network
    batches = demo_batches()
    trainer.compute_loss(model, {"batches": batches}).backward()
    summed = grads(model)
    # by hand: each task's loss on its own, weighted, backpropagated one by one (gradients add up)
    model.zero_grad(set_to_none=True)
    for name, batch in batches.items():
        (weights.get(name, 1.0) * raw_loss(model, batch)).backward()
    by_hand = grads(model)
    assert summed.keys() == by_hand.keys()
    heads = {n.split(".")[1] for n in summed if n.startswith("task_models.")}
    assert heads == set(batches), "every head gets a gradient in an all_tasks step"
    for name in summed:
        torch.testing.assert_close(summed[name], by_hand[name], rtol=1e-5, atol=1e-7)


def test_uncertainty_weighting_learns_a_log_variance_per_task_with_its_own_optimizer_group(tmp_path):
    model, trainer = make_trainer(tmp_path, weighting="uncertainty", weighting_learning_rate=0.05)
    s = model.loss_weighting.log_variance
    with torch.no_grad():
        s.copy_(torch.tensor([0.5, -0.2, 0.0]))
    model.eval()
    batch = demo_batches()["demo_similarity"]
    loss = trainer.compute_loss(model, {"batches": {"demo_similarity": batch}})
    plain = raw_loss(model, batch)
    assert loss.item() == pytest.approx(torch.exp(torch.tensor(0.2)).item() * plain.item() - 0.2, rel=1e-5)
    loss.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L, for the trained task only
    assert s.grad[1].item() == pytest.approx(1 - torch.exp(torch.tensor(0.2)).item() * plain.item(), rel=1e-4)
    assert s.grad[0].item() == 0 and s.grad[2].item() == 0
    assert "loss_weighting.log_variance" in model.state_dict()  # so it is in every checkpoint
    optimizer = trainer.create_optimizer()
    (group,) = [g for g in optimizer.param_groups if any(p is s for p in g["params"])]
    assert group["lr"] == 0.05 and group["weight_decay"] == 0.0 and len(group["params"]) == 1
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


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
    seen = []

    class Keep(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    model, trainer = make_trainer(tmp_path, weights={"demo_sentiment": 3.0}, callbacks=[Keep()])
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
