"""The GPU path, as far as a CPU can check it: packed batches give the padded path's outputs, dataloader
workers give the same batches, the Trainer's GPU arguments, SDPA by default, and TORCH_COMPILE's dynamic
shapes. Not checked here (no GPU): varlen flash attention, bf16 kernels, pinned memory, TF32."""

import logging

import pytest
import torch
import transformers

from trainer.config.settings import load_settings
from trainer.data.dataset import MultitaskDataset, TaskBatchCollator
from trainer.data.packing import packer_for, packing_problem
from trainer.errors import UserError
from trainer.model.gpu import attention, compile_encoder, gpu_arguments
from trainer.model.loading import load_encoder
from trainer.model.modeling import MultitaskModel
from trainer.tasks.catalog import DEMO_TASKS
from trainer.tasks.demo import build_demo_tokenizer
from trainer.tasks.spec import TaskData, TaskSpec
from trainer.training.trainer import MultitaskTrainer

from .tiny import NER_LABELS, decoder_configs, encoder_configs, ner_sentences, roberta_tokenizer, settings_of

PAIR = TaskSpec.from_dict({"name": "sim", "type": "regression", "text_columns": ["a", "b"], "label_column": "y"})
NER = TaskSpec.from_dict({"name": "ner", "type": "token_classification", "labels": NER_LABELS})
MC = TaskSpec.from_dict({"name": "quiz", "type": "multiple_choice", "text_columns": ["q"], "label_column": "y",
                         "choice_columns": ["c0", "c1", "c2"]})
WORDS = ["the", "good", "fun", "movie", "was", "a", "bad", "dull", "plot", "with", "really", "great", "acting",
         "and", "an", "awful", "ending"]


def features(task: TaskSpec, tokenizer, n: int = 6) -> list[dict]:
    """Tokenised examples of clearly different lengths."""
    if task.kind.name == "token_classification":
        sentences = ner_sentences(n)
        data = TaskData(tokens=[w for w, _ in sentences],
                        tags=[[NER_LABELS.index(t) for t in ts] for _, ts in sentences])
    else:
        data = TaskData(text_a=[" ".join(WORDS[: 2 + 3 * i]) for i in range(n)],
                        text_b=[" ".join(WORDS[i: i + 2]) for i in range(n)], label=[float(i % 3) for i in range(n)])
    encoded = task.kind.tokenize(data.columns, task, tokenizer, 64)
    assert len(set(encoded["length"])) > 2, "the examples should differ in length"
    return [{"task": task.name, **{k: v[i] for k, v in encoded.items()}} for i in range(n)]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_packed_and_padded_batches_give_each_head_the_same_pooled_token_and_outputs(arch, caplog):
    tokenizer = roberta_tokenizer() if arch == "roberta" else build_demo_tokenizer()
    torch.manual_seed(0)
    encoder = transformers.AutoModel.from_config(encoder_configs(len(tokenizer))[arch])
    model = MultitaskModel(encoder, [PAIR, NER, MC]).eval()
    padded_collate = TaskBatchCollator(tokenizer, [PAIR, NER, MC])
    with torch.no_grad():
        padded = {t.name: (padded_collate(features(t, tokenizer)), ) for t in (PAIR, NER)}
        reference = {n: (model(**b), encoder(**{k: v for k, v in b.items() if k in ("input_ids", "attention_mask",
                                                                                    "token_type_ids")}))
                     for n, (b,) in padded.items()}
        with caplog.at_level(logging.WARNING, logger="trainer.data.packing"):
            packer = packer_for(encoder, [PAIR, NER, MC])
        assert packer is not None and attention(encoder) == "packed_sdpa"
        assert [r.getMessage() for r in caplog.records] == [
            "PACKING=1: task 'quiz' (multiple_choice) is padded: its head reshapes the batch into questions x choices"]
        collate = TaskBatchCollator(tokenizer, [PAIR, NER, MC], packer=packer)
        for task in (PAIR, NER):
            batch = collate(features(task, tokenizer))
            assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, no padding
            assert batch["input_ids"].shape[1] == sum(f["length"] for f in features(task, tokenizer))
            logits, hidden = model(**batch).logits, encoder(**{k: v for k, v in batch.items()
                                                               if k not in ("task", "labels")})
            ref_logits, ref_hidden = reference[task.name]
            mask = padded[task.name][0]["attention_mask"].bool()
            assert torch.allclose(hidden.last_hidden_state[:, 0], ref_hidden.last_hidden_state[:, 0], atol=1e-5)
            assert torch.allclose(hidden.last_hidden_state[mask], ref_hidden.last_hidden_state[mask], atol=1e-5)
            assert torch.allclose(hidden.pooler_output, ref_hidden.pooler_output, atol=1e-5)
            if task is NER:
                assert torch.allclose(logits[mask], ref_logits.logits[mask], atol=1e-5)
            else:
                assert torch.allclose(logits, ref_logits.logits, atol=1e-5)
            assert torch.allclose(model(**batch).loss, ref_logits.loss, atol=1e-5)
        quiz = collate(mc_features(tokenizer))
        assert quiz["input_ids"].dim() == 3  # padded: batch x choices x length


def mc_features(tokenizer) -> list[dict]:
    data = TaskData(text_a=["which word is good ?", "pick one"], choices=[["good", "bad", "dull"]] * 2, label=[0, 1])
    encoded = MC.kind.tokenize(data.columns, MC, tokenizer, 32)
    return [{"task": MC.name, **{k: v[i] for k, v in encoded.items()}} for i in range(2)]


def test_packing_in_bf16_stays_within_bf16_tolerance_of_the_padded_path():
    tokenizer = build_demo_tokenizer()
    torch.manual_seed(0)
    encoder = transformers.AutoModel.from_config(encoder_configs(len(tokenizer))["bert"]).eval()
    rows = features(PAIR, tokenizer)
    padded = TaskBatchCollator(tokenizer, [PAIR])(rows)
    inputs = {k: padded[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = encoder(**inputs).last_hidden_state[:, 0].float()
        packer = packer_for(encoder, [PAIR])
        batch = TaskBatchCollator(tokenizer, [PAIR], packer=packer)(rows)
        packed = encoder(**{k: v for k, v in batch.items() if k not in ("task", "labels")}).last_hidden_state[:, 0]
    assert torch.allclose(packed.float(), reference, atol=3e-2, rtol=2e-2)


def test_an_encoder_that_cannot_pack_says_so_once_and_pads(caplog):
    decoder = transformers.AutoModel.from_config(decoder_configs()["gpt2"])
    assert packing_problem(decoder) == "gpt2 is not a bidirectional encoder"
    with caplog.at_level(logging.WARNING, logger="trainer.data.packing"):
        assert packer_for(decoder, [PAIR]) is None
    assert [r.getMessage() for r in caplog.records] == [
        "PACKING=1: gpt2 is not a bidirectional encoder; every batch is padded instead"]
    assert attention(decoder) == "sdpa"


def test_encoders_load_with_sdpa_attention_by_default(tmp_path):
    from .tiny import save_tiny_pretrained

    _, demo = load_encoder("demo")
    _, local = load_encoder(str(save_tiny_pretrained(tmp_path / "tiny")))
    assert attention(demo) == attention(local) == "sdpa"


def test_gpu_arguments_on_cuda_and_cpu():
    from transformers.utils.import_utils import is_torch_tf32_available

    gpu = gpu_arguments(None, cuda=True)
    assert gpu["optim"] == "adamw_torch_fused" and gpu["dataloader_pin_memory"] is True
    assert gpu["dataloader_num_workers"] == 2
    assert gpu.get("tf32", False) == is_torch_tf32_available()  # False on this CPU-only machine
    assert gpu_arguments(None, cuda=False) == {"dataloader_num_workers": 0, "dataloader_pin_memory": False}
    assert gpu_arguments(3, cuda=False)["dataloader_num_workers"] == 3
    settings = settings_of(dataloader_workers="1")
    assert settings.dataloader_workers == 1
    with pytest.raises(UserError, match=r"^DATALOADER_WORKERS=-1 must be 0 or more \(empty = auto\)$"):
        load_settings({}, environ={"DATALOADER_WORKERS": "-1"}, dotenv_path=None)


def test_dataloader_workers_give_the_same_batches_as_the_training_process(tmp_path):
    import datasets

    tokenizer = build_demo_tokenizer()
    tasks = list(DEMO_TASKS.values())[:2]
    splits = {}
    for task in tasks:
        rows = features(PAIR, tokenizer, n=20)
        splits[task.name] = datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "task"} for r in rows])
    model = MultitaskModel(transformers.AutoModel.from_config(encoder_configs(len(tokenizer))["bert"]), tasks)

    def epoch_batches(workers: int) -> list[dict]:
        args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                                              per_device_train_batch_size=4, dataloader_num_workers=workers)
        trainer = MultitaskTrainer(model=model, args=args, tasks=tasks, processing_class=tokenizer,
                                   train_dataset=MultitaskDataset(splits), group_by_length=True,
                                   data_collator=TaskBatchCollator(tokenizer, tasks))
        loader = trainer.get_train_dataloader()
        loader.set_epoch(1)
        return list(loader)

    serial, parallel = epoch_batches(0), epoch_batches(2)
    assert len(serial) == len(parallel) == 10
    for a, b in zip(serial, parallel, strict=True):
        assert a.keys() == b.keys() and a["task"] == b["task"]
        assert all(torch.equal(a[k], b[k]) for k in a if k != "task")


def test_torch_compile_keeps_the_encoder_its_class_and_its_weight_names():
    encoder = transformers.AutoModel.from_config(encoder_configs()["bert"])
    names = list(encoder.state_dict())
    assert compile_encoder(encoder) is encoder
    assert type(encoder) is transformers.BertModel and list(encoder.state_dict()) == names


@pytest.mark.slow
def test_torch_compile_compiles_the_encoder_once_for_every_batch_shape():
    """The real TORCH_COMPILE path (inductor; it needs the C compiler, minutes on 2 CPU cores, faster with
    its cache warm): batches of new sizes and lengths reuse the graph."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    encoder = compile_encoder(transformers.AutoModel.from_config(encoder_configs()["bert"]).eval())  # no dropout
    eager = transformers.AutoModel.from_config(encoder_configs()["bert"]).eval()
    eager.load_state_dict(encoder.state_dict())
    for size, length in ((4, 7), (3, 19), (5, 33), (2, 12)):
        ids = torch.randint(5, 400, (size, length))
        mask = torch.ones_like(ids)
        mask[0, length // 2:] = 0
        out = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        out.sum().backward()
        assert torch.allclose(out, eager(input_ids=ids, attention_mask=mask).last_hidden_state, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(counters["recompiles"].values()) <= 1  # at most the first change from static to dynamic


@pytest.mark.slow
def test_torch_compile_with_an_adapter_per_task_runs_each_tasks_adapter():
    """TORCH_COMPILE with ADAPTER=lora_per_task: the compiled encoder follows the active adapter (each task's
    output equals the eager encoder's with that adapter), and switching adapters recompiles at most once per
    adapter, not at every step."""
    from torch._dynamo.utils import counters

    from trainer.model.adapters import ADAPTERS, LoraOptions

    def with_adapters():
        torch.manual_seed(0)
        encoder = transformers.AutoModel.from_config(encoder_configs()["bert"]).eval()
        adapter = ADAPTERS["lora_per_task"](LoraOptions(dropout=0.0), ["a", "b", "c"])
        adapter.attach(encoder)
        with torch.no_grad():
            for name, param in encoder.named_parameters():
                if ".lora_B." in name:
                    param.normal_(0, 0.5)  # each adapter changes the output differently
        return encoder, adapter

    torch._dynamo.reset()
    counters.clear()
    compiled, compiled_adapter = with_adapters()
    compile_encoder(compiled)
    eager, eager_adapter = with_adapters()
    ids = torch.randint(5, 400, (3, 11))
    outputs = {}
    for step in range(9):
        task = "abc"[step % 3]
        compiled_adapter.activate(task)
        eager_adapter.activate(task)
        got = compiled(input_ids=ids).last_hidden_state
        torch.testing.assert_close(got, eager(input_ids=ids).last_hidden_state, atol=1e-4, rtol=1e-4)
        outputs.setdefault(task, got.detach())
    assert not torch.allclose(outputs["a"], outputs["b"], atol=1e-3)  # the adapters differ, and so do the outputs
    assert sum(counters["recompiles"].values()) <= 3
