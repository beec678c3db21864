"""The dtypes weights are kept in (`trainer/model/precision.py`): what trains is fp32 whatever the checkpoint holds
(hub Llamas are bf16), a frozen base is kept in the dtype it computes in."""

import logging

import pytest
import torch
import transformers
from safetensors import safe_open

from trainer.errors import UserError
from trainer.model.adapters import ADAPTERS, LoraOptions
from trainer.model.loading import load_encoder
from trainer.model.modeling import MultitaskModel
from trainer.model.precision import base_dtype, compute_precision, train_in_fp32
from trainer.train import train

from .ddp_worker import owner
from .test_adapters import LLAMA_TASKS
from .test_kinds import batch
from .tiny import decoder_configs, gpt2_tokenizer, save_tiny_llama, settings_of, write_ner_and_text_tasks


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory):
    """A tiny Llama saved in bf16, as the Llama, Qwen and Mistral checkpoints on the hub are."""
    directory = save_tiny_llama(tmp_path_factory.mktemp("bf16") / "llama")
    transformers.AutoModel.from_pretrained(directory).to(torch.bfloat16).save_pretrained(directory)
    assert transformers.AutoModel.from_pretrained(directory).dtype == torch.bfloat16  # what "auto" would train
    return directory


def test_the_base_dtype_is_fp32_when_it_trains_and_the_compute_dtype_when_it_is_frozen():
    assert base_dtype("none", "bf16").dtype == torch.float32
    assert base_dtype("none", "fp32").dtype == torch.float32
    assert base_dtype("lora", "bf16").dtype == torch.bfloat16
    assert base_dtype("lora_per_task", "fp16").dtype == torch.float16
    assert base_dtype("lora", "fp32").dtype == torch.float32
    assert compute_precision("auto", cuda=False) == "fp32"
    with pytest.raises(UserError, match="PRECISION=bf16 needs a CUDA GPU"):
        compute_precision("bf16", cuda=False)


def test_load_encoder_loads_in_the_dtype_asked_else_the_checkpoints_own(bf16_llama, caplog):
    with caplog.at_level(logging.INFO, logger="trainer.model.loading"):
        _, encoder = load_encoder(str(bf16_llama), dtype=base_dtype("none", "bf16"))
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}
    assert "MODEL_NAME holds bfloat16 weights; the base is loaded in float32: it trains" in caplog.text
    _, encoder = load_encoder(str(bf16_llama))
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}


def _checkpoint_dtypes(run_dir) -> dict[str, str]:
    [checkpoint] = sorted(run_dir.glob("checkpoint-*/model.safetensors"))[-1:]
    with safe_open(checkpoint, "pt") as f:
        names = f.keys()  # a safetensors file is no mapping
        return {key: f.get_slice(key).get_dtype() for key in names}


@pytest.mark.parametrize("adapter", ["none", "lora_per_task"])
def test_a_bf16_checkpoint_trains_fp32_weights_on_cpu(bf16_llama, tmp_path, adapter):
    """Before: Transformers 5 loaded the bf16 checkpoint as bf16 and every weight, AdamW state, adapter and head
    trained in bf16. Now full fine-tuning trains an fp32 copy, and on CPU (fp32 compute) the frozen base is fp32."""
    write_ner_and_text_tasks(tmp_path, text_kind="causal_lm", sentences=16, lines=40)
    train(settings_of(model_name=str(bf16_llama), tasks_file=str(tmp_path / "tasks.yaml"),
                      output_dir=str(tmp_path / "out"), max_steps=2, save_steps=2, batch_size=4, adapter=adapter,
                      max_train_samples=8, max_eval_samples=4, report_to=("none",)))
    dtypes = _checkpoint_dtypes(tmp_path / "out")
    assert dtypes and set(dtypes.values()) == {"F32"}, dtypes
    assert any(".lora_" in k for k in dtypes) == (adapter != "none")


def test_a_frozen_bf16_base_trains_fp32_adapters_and_heads_under_autocast():
    """What PRECISION=bf16 runs on a GPU, on CPU's autocast: the base stays bf16 and bit-equal, every adapter, head
    and loss weight is fp32 and trains, and each loss is finite. (A GPU run of it was not available here.)"""
    tokenizer = gpt2_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    config = decoder_configs(len(tokenizer), tokenizer.pad_token_id)["llama"]
    torch.manual_seed(0)
    encoder = transformers.AutoModel.from_config(config).to(base_dtype("lora_per_task", "bf16").dtype)
    base = {k: v.clone() for k, v in encoder.state_dict().items()}
    adapter = ADAPTERS["lora_per_task"](LoraOptions(dropout=0.0), [t.name for t in LLAMA_TASKS])
    model = MultitaskModel(encoder, LLAMA_TASKS, "uncertainty", adapter=adapter).train()
    upcast = train_in_fp32(model)
    assert any(".lora_" in n for n in upcast)  # peft builds adapters in the base layer's dtype
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    assert {p.dtype for n, p in model.encoder.named_parameters() if not p.requires_grad} == {torch.bfloat16}
    initial = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    for task in LLAMA_TASKS:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch(task, tokenizer)).loss
        assert torch.isfinite(loss), task.type
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {owner(n) for n, p in trainable.items() if not torch.equal(p, initial[n])}
    assert changed >= {t.name for t in LLAMA_TASKS}
    for key, value in model.encoder.state_dict().items():
        if ".lora_" not in key:
            assert torch.equal(value, base[key.replace(".base_layer.", ".")]), key


def test_a_bf16_run_of_adapters_on_t5_trains_and_generates_in_evaluation_under_autocast(tmp_path, monkeypatch):
    """The whole PRECISION=bf16 run of an adapter on a GPU, with the CPU's bf16 autocast in the GPU's place (the
    only stand-in here: the two precision functions are patched to answer as on a bf16 GPU): the T5 base loads in
    bf16, the classifier and the adapters train in fp32 under autocast, evaluation generates (under the
    accelerator's autocast, as the training forward runs), and the checkpoint holds fp32 only. (Transformers 5
    always ties T5's LM head to its embeddings, so the head is the frozen base here.)"""
    from trainer import train as recipe
    from trainer.training import arguments

    from .test_seq2seq import write_tasks
    from .tiny import save_tiny_t5

    write_tasks(tmp_path)
    monkeypatch.setattr(recipe, "compute_precision", lambda precision: "bf16")
    monkeypatch.setattr(arguments, "precision_flags",
                        lambda precision: {"bf16": True, "fp16": False, "use_cpu": True})
    metrics = train(settings_of(model_name=str(save_tiny_t5(tmp_path / "t5")), tasks_file=str(tmp_path / "tasks.yaml"),
                                tasks=("sst2_t2t", "sent_cls"), output_dir=str(tmp_path / "out"), max_steps=4,
                                eval_steps=4, save_steps=4, batch_size=8, max_train_samples=32, max_eval_samples=8,
                                max_seq_length=32, adapter="lora_per_task"))
    assert set(metrics["tasks"]) == {"sst2_t2t", "sent_cls"}
    assert all(value == value for value in metrics["tasks"]["sst2_t2t"].values() if isinstance(value, float))
    dtypes = _checkpoint_dtypes(tmp_path / "out")
    assert set(dtypes.values()) == {"F32"}, dtypes  # the adapters and the classifier; no base weight
    assert any(".lora_" in k for k in dtypes) and any("classification_head" in k for k in dtypes)
