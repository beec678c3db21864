"""ADAPTER=lora and lora_per_task (peft LoRA on the frozen shared encoder): the registry, what a step changes and
what it leaves bit-equal (weights and AdamW state), the frozen base, every kind learning, and the merged exports."""

import typing

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import TrainerCallback

from trainer.config.settings import AdapterMode
from trainer.model.adapters import ADAPTERS, LoraOptions
from trainer.model.modeling import MultitaskModel
from trainer.tasks.demo import build_demo_tokenizer
from trainer.train import train

from .ddp_worker import owner
from .test_kinds import CLM, CLS, MC, MLM, NER, REG, batch
from .tiny import (
    decoder_configs,
    encoder_configs,
    gpt2_tokenizer,
    save_tiny_pretrained,
    settings_of,
    write_ner_and_text_tasks,
)


def test_adapter_modes_are_the_settings_choices_one_module_each():
    assert set(typing.get_args(AdapterMode)) == set(ADAPTERS)
    for mode, adapter in ADAPTERS.items():
        assert adapter.mode == mode
        assert adapter.__module__ == f"trainer.model.adapters.{mode}"


class StepIsolation(TrainerCallback):
    """Before and after every step, each parameter and its AdamW state: a step may change one task's only."""

    def __init__(self):
        self.trained: list[str] = []
        self.initial: dict[str, torch.Tensor] = {}

    @staticmethod
    def _snapshot(model, optimizer):
        state = {}
        for name, param in model.named_parameters():
            state[name] = param.detach().clone()
            for key, value in optimizer.state.get(param, {}).items():
                state[f"{name}#{key}"] = value.detach().clone()
        return state

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.initial = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.final = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.before = self._snapshot(model, optimizer)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        after = self._snapshot(model, optimizer)
        changed = {owner(k.partition("#")[0]) for k in after if k not in self.before
                   or not torch.equal(after[k], self.before[k])}
        assert len(changed) == 1 and "base" not in changed, f"step {state.global_step} changed {sorted(changed)}"
        self.trained.append(changed.pop())


@pytest.fixture(scope="module")
def lora_per_task_run(tmp_path_factory):
    """A real run (the recipe, the stock Trainer loop) of lora_per_task on a tiny BERT: classification, token
    classification and masked LM, one task per step."""
    root = tmp_path_factory.mktemp("lora_per_task")
    model_dir = save_tiny_pretrained(root / "tiny")
    write_ner_and_text_tasks(root, sentences=64, lines=200)
    isolation = StepIsolation()
    settings = settings_of(model_name=str(model_dir), tasks="demo_sentiment,ner,text",
                           tasks_file=str(root / "tasks.yaml"), adapter="lora_per_task", output_dir=str(root / "out"),
                           max_steps=12, batch_size=8, max_train_samples=48, max_eval_samples=16, max_seq_length=32,
                           sampling="uniform", eval_steps=100, save_steps=100, select_best="last", seed=1)
    metrics = train(settings, callbacks=[isolation])
    return root, model_dir, isolation, metrics


def test_a_step_of_one_task_changes_only_its_adapter_and_head(lora_per_task_run):
    _, _, isolation, _ = lora_per_task_run
    assert len(isolation.trained) == 12
    assert set(isolation.trained) == {"demo_sentiment", "ner", "text"}  # every adapter trained when its turn came


def test_the_base_is_bit_equal_to_the_pretrained_weights_after_training(lora_per_task_run):
    root, model_dir, isolation, _ = lora_per_task_run
    pretrained = load_file(model_dir / "model.safetensors")
    final = load_file(root / "out" / "model" / "model.safetensors")
    assert not [k for k in final if k.startswith("encoder.") and ".lora_" not in k]  # saved without its base (§2)
    base = {k.replace(".base_layer.", "."): v for k, v in isolation.final.items() if ".lora_" not in k}
    assert base.keys() == pretrained.keys()
    assert all(torch.equal(base[k], pretrained[k]) for k in base), "the frozen base changed"
    adapters = [k for k in final if ".lora_B." in k]
    assert {k.split(".lora_B.")[1].split(".")[0] for k in adapters} == {"demo_sentiment", "ner", "text"}
    assert all(final[k].abs().sum() > 0 for k in adapters), "an adapter never trained"  # lora_B starts at zero


def test_the_merged_exports_load_with_their_auto_class_and_predict_as_the_multitask_model(lora_per_task_run):
    root, _, _, metrics = lora_per_task_run
    assert set(metrics["tasks"]) == {"demo_sentiment", "ner", "text"}
    model = MultitaskModel.from_checkpoint(root / "out" / "model")  # multitask.json records the adapters
    assert model.adapter.mode == "lora_per_task"
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "out" / "export" / "ner")
    for task in model.tasks.values():
        export = task.kind.model_class().from_pretrained(root / "out" / "export" / task.name).eval()
        assert not any("lora" in k for k in export.state_dict())
        inputs = batch(task, tokenizer)
        expected = model(**inputs).logits
        torch.testing.assert_close(export(**{k: v for k, v in inputs.items() if k != "task"}).logits, expected,
                                   rtol=0, atol=1e-5)
    other = model.standalone_task_model("demo_sentiment").state_dict()
    mine = model.standalone_task_model("ner").state_dict()
    assert not torch.equal(other["bert.encoder.layer.0.attention.self.query.weight"],
                           mine["bert.encoder.layer.0.attention.self.query.weight"])  # each task its own merge


BERT_TASKS = [CLS, REG, MC, NER, MLM]
LLAMA_TASKS = [CLS, NER, CLM]


def tiny_model(arch: str, tasks, mode: str):
    """A tiny random BERT or Llama with `tasks` and the mode's adapter (no LoRA dropout: a deterministic step)."""
    decoder = arch == "llama"
    tokenizer = gpt2_tokenizer() if decoder else build_demo_tokenizer()
    if decoder:
        tokenizer.pad_token = tokenizer.eos_token
    config = (decoder_configs(len(tokenizer), tokenizer.pad_token_id) if decoder
              else encoder_configs(len(tokenizer)))[arch]
    torch.manual_seed(0)
    adapter = ADAPTERS[mode](LoraOptions(dropout=0.0), [t.name for t in tasks])
    model = MultitaskModel(transformers.AutoModel.from_config(config), tasks, "uncertainty", adapter=adapter)
    return model.train(), tokenizer


@pytest.mark.parametrize("mode", ["lora", "lora_per_task"])
@pytest.mark.parametrize(("arch", "tasks"), [("bert", BERT_TASKS), ("llama", LLAMA_TASKS)])
def test_every_kind_trains_its_adapter_and_head_on_the_frozen_base(arch, tasks, mode):
    """Only the adapters, heads and learned loss weights train (a tied LM head is the frozen embeddings, an untied
    one trains); each kind's loss reaches its own adapter and head and nothing else, in a few steps."""
    model, tokenizer = tiny_model(arch, tasks, mode)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(owner(n) != "base" for n in trainable)
    assert "loss_weighting.log_variance" in trainable
    assert {owner(n) for n in trainable} >= {t.name for t in tasks}  # every head (and, per task, every adapter)
    embeddings = model.encoder.get_input_embeddings().weight
    assert not embeddings.requires_grad
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        for task in tasks:
            out = model(**batch(task, tokenizer))
            assert torch.isfinite(out.loss), (arch, task.type)
            out.loss.backward()
            got = {owner(n) for n, p in model.named_parameters() if p.grad is not None}
            adapter = task.name if mode == "lora_per_task" else "default"
            assert got == {task.name, adapter, "loss_weighting"}, (task.type, got)
            optimizer.step()
            optimizer.zero_grad()


@pytest.mark.parametrize("mode", list(ADAPTERS))
def test_the_loss_falls_with_each_mode(mode):
    """Token classification and causal LM taking turns on a tiny Llama: each task's loss falls by 15 % in a dozen
    steps."""
    tasks = [NER, CLM]
    model, tokenizer = tiny_model("llama", tasks, mode)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=3e-3 if mode == "none" else 1e-2)
    inputs = {t.name: batch(t, tokenizer) for t in tasks}
    curves: dict[str, list[float]] = {t.name: [] for t in tasks}
    for _ in range(12):
        for task in tasks:
            out = model(**inputs[task.name])
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            curves[task.name].append(out.task_losses[task.name].item())
    for name, curve in curves.items():
        assert sum(curve[-3:]) < 0.85 * sum(curve[:3]), f"{mode} {name}: {curve[:3]} -> {curve[-3:]}"


def test_an_all_tasks_step_runs_each_sub_batch_through_its_own_adapter_and_sums_the_losses():
    """SAMPLING=all_tasks with lora_per_task: the summed loss is each task's own forward (its own adapter) weighted
    and added, and the backward reaches every task's adapter and head."""
    tasks = [CLS, NER, CLM]
    model, tokenizer = tiny_model("llama", tasks, "lora_per_task")
    for param in model.parameters():  # adapters away from their zero start, so each one changes the output
        if param.requires_grad:
            torch.nn.init.normal_(param, std=0.1)
    batches = {t.name: batch(t, tokenizer) for t in tasks}
    model.eval()  # no dropout (Llama's token-classification head has some): forwards repeat exactly
    summed = model(batches=batches)
    summed.loss.backward()
    assert {owner(n) for n, p in model.named_parameters() if p.grad is not None} == \
        {t.name for t in tasks} | {"loss_weighting"}
    alone = {name: model(**inputs).loss for name, inputs in batches.items()}  # each task on its own
    assert all(torch.equal(summed.task_losses[name], loss) for name, loss in alone.items())
    assert torch.equal(summed.loss, sum(model.loss_weighting(name, loss) for name, loss in alone.items()))
    model.adapter.activate("ner")
    wrong = model.task_models["clm"](**{k: v for k, v in batches["clm"].items() if k != "task"}).loss
    assert not torch.equal(wrong, alone["clm"])  # another task's adapter gives another loss


def test_a_lora_run_of_the_demo_logs_its_layers_and_predicts_from_its_merged_export(tmp_path, cli):
    """ADAPTER=lora through the CLI, end to end: the log names the layers LoRA wraps, export/<task> is a plain
    model, and `predict` (export) and `predict --model_dir=model` (the adapters rebuilt) agree."""
    from .tiny import quick_env

    env = quick_env(tmp_path / "out", ADAPTER="lora", SELECT_BEST="last")  # export/ = model/: the last step
    result = cli("train", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ADAPTER=lora: 1 LoRA adapter(s)" in result.stderr and "query, value (peft's default for bert)" in \
        result.stderr
    export = tmp_path / "out" / "export" / "demo_sentiment"
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(export)
    assert not any("lora" in k for k in plain.state_dict())
    text = "--text=[\"what a wonderful film\",\"the plot was dull\"]"
    predicted = [cli("predict", "--task=demo_sentiment", text, *where, env=env) for where in
                 ((), (f"--model_dir={tmp_path / 'out' / 'model'}",))]
    assert all(r.returncode == 0 for r in predicted), predicted[-1].stderr[-2000:]
    assert predicted[0].stdout == predicted[1].stdout


def test_check_names_the_layers_lora_would_wrap_without_loading_weights(cli):
    """`check` attaches ADAPTER to the base's skeleton on the meta device: the line the run would log."""
    result = cli("check", env={"ADAPTER": "lora_per_task", "LORA_TARGET_MODULES": "query,key"})
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("ADAPTER="))
    assert line.startswith("ADAPTER=lora_per_task: 3 LoRA adapter(s) (r=8")
    assert "key, query (LORA_TARGET_MODULES)" in line
