"""GRADIENT_CHECKPOINTING=true: the Trainer's activation-checkpointing hook reaches the shared encoder, the blocks
are recomputed in the backward pass, and the loss and every gradient equal those without it (dropout off)."""

import copy
import re

import pytest
import torch
import transformers
from transformers.modeling_layers import GradientCheckpointingLayer

from trainer.model.modeling import MultitaskModel
from trainer.tasks.demo import build_demo_tokenizer
from trainer.training.arguments import training_arguments

from .test_kinds import ALL_TASKS, CLS, batch, kind_supported
from .tiny import decoder_configs, encoder_configs, gpt2_tokenizer, quick_env, run_cli, settings_of

GRADIENT_TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def tiny(arch: str):
    """A tiny encoder (BERT) or decoder (Llama) with dropout off, its tokenizer, and every kind it takes."""
    decoder = arch == "llama"
    tokenizer = gpt2_tokenizer() if decoder else build_demo_tokenizer()
    if decoder:
        tokenizer.pad_token = tokenizer.eos_token
    config = (decoder_configs(len(tokenizer)) if decoder else encoder_configs(len(tokenizer)))[arch]
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout"):
        if hasattr(config, name):
            setattr(config, name, 0.0)
    config.classifier_dropout = 0.0  # the heads' own (Llama's token classification head defaults to 0.1)
    return config, tokenizer, [t for t in ALL_TASKS if kind_supported(t, config, tokenizer)]


def losses_and_gradients(model: MultitaskModel, batches: dict[str, dict]) -> tuple[dict, dict]:
    """Each task's loss and the gradients of one backward through all of them."""
    model.train()
    model.zero_grad(set_to_none=True)
    losses = {name: model(**inputs).loss for name, inputs in batches.items()}
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def block_calls(model: MultitaskModel, batches: dict[str, dict]) -> int:
    """How often a linear layer inside the encoder's first transformer block runs in one forward and backward of
    every task (a block's own hooks stay outside the checkpoint: Transformers checkpoints its `forward`)."""
    block = next(m for m in model.encoder.modules() if isinstance(m, GradientCheckpointingLayer))
    linear = next(m for m in block.modules() if isinstance(m, torch.nn.Linear))
    calls = []
    handle = linear.register_forward_hook(lambda *_: calls.append(1))
    try:
        losses_and_gradients(model, batches)
    finally:
        handle.remove()
    return len(calls)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_checkpointing_gives_the_same_loss_and_gradients_for_every_kind(arch):
    config, tokenizer, tasks = tiny(arch)
    assert len(tasks) >= 4, [t.type for t in tasks]
    torch.manual_seed(0)
    plain = MultitaskModel(transformers.AutoModel.from_config(config), tasks)
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing_enable()  # what the stock Trainer calls
    assert checkpointed.encoder.is_activation_checkpointing and not plain.encoder.is_activation_checkpointing
    batches = {t.name: batch(t, tokenizer) for t in tasks}

    loss, grads = losses_and_gradients(plain, batches)
    loss_ckpt, grads_ckpt = losses_and_gradients(checkpointed, batches)
    for name in loss:
        torch.testing.assert_close(loss_ckpt[name], loss[name], **GRADIENT_TOLERANCE)
    assert grads_ckpt.keys() == grads.keys() and any(n.startswith("encoder.") for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, **GRADIENT_TOLERANCE, msg=name)
    # the blocks really are recomputed in the backward pass: twice the calls
    assert block_calls(checkpointed, batches) == 2 * block_calls(plain, batches)


def test_checkpointing_trains_a_frozen_base_through_non_reentrant_recomputation():
    """An adapter's base is frozen: its inputs need no gradient, yet what trains inside the checkpointed blocks
    (here one bias, standing in for LoRA's weights) still gets the gradient it gets without checkpointing."""
    config, tokenizer, _ = tiny("bert")
    torch.manual_seed(0)
    plain = MultitaskModel(transformers.AutoModel.from_config(config), [CLS])
    for name, param in plain.encoder.named_parameters():
        param.requires_grad_(name == "encoder.layer.0.attention.self.query.bias")
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing_enable()
    inputs = {CLS.name: batch(CLS, tokenizer)}
    _, grads = losses_and_gradients(plain, inputs)
    _, grads_ckpt = losses_and_gradients(checkpointed, inputs)
    key = "encoder.encoder.layer.0.attention.self.query.bias"
    assert key in grads_ckpt and grads_ckpt[key].abs().sum() > 0
    torch.testing.assert_close(grads_ckpt[key], grads[key], **GRADIENT_TOLERANCE)


def test_the_setting_reaches_the_training_arguments():
    on = training_arguments(settings_of(gradient_checkpointing=True, output_dir="unused"))
    assert on.activation_checkpointing and on.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert not training_arguments(settings_of(output_dir="unused")).activation_checkpointing


def test_a_run_with_checkpointing_trains_several_kinds(tmp_path):
    """The CLI end to end: classification, token classification and masked LM on one checkpointed encoder."""
    from .tiny import write_ner_and_text_tasks

    write_ner_and_text_tasks(tmp_path)
    env = quick_env(tmp_path / "out", TASKS="demo_sentiment,ner,text", TASKS_FILE=str(tmp_path / "tasks.yaml"),
                    SAMPLING="round_robin", MAX_STEPS="6", MAX_SEQ_LENGTH="32", GRADIENT_CHECKPOINTING="true")
    result = run_cli("train", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"GRADIENT_CHECKPOINTING: [1-9]\d* module\(s\) of the shared encoder", result.stderr)
    assert (tmp_path / "out" / "export" / "ner").is_dir() and (tmp_path / "out" / "metrics.json").is_file()

