"""The unmerged export (EXPORT_MERGED=false): one task as a peft adapter directory, loadable without this project.

Why a second form: a merged export copies the whole base per task; for a large base the adapter alone (a few MB)
plus the task head is what is worth shipping, and the base is fetched from MODEL_NAME by peft. The head trains in
full, so it travels as peft `modules_to_save`; the adapter is saved under peft's name `default`, whatever the
task's adapter is called in the multitask model.
"""

from __future__ import annotations

import json
from pathlib import Path

from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainer.errors import UserError
from trainer.layout import TASK_FILE
from trainer.model.adapters.lora import tuner_layers
from trainer.model.modeling import MultitaskModel, encoder_parts, encoder_weights_in

ADAPTER_CONFIG = "adapter_config.json"  # peft's CONFIG_NAME: what marks an adapter directory
EXPORTED_ADAPTER = "default"  # peft's default adapter name: what `from_pretrained(dir)` loads without arguments
# Kinds whose export loads with an AutoPeftModelFor... class. Not question answering: peft 0.21's
# PeftModelForQuestionAnswering.forward drops `token_type_ids` (BERT's segment ids) and gives other logits, so a QA
# export loads as PeftModel on AutoModelForQuestionAnswering, like the kinds peft has no class for.
PEFT_TASK_TYPES = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "token_classification": "TOKEN_CLS",
                   "causal_lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


def unmerged_task_model(model: MultitaskModel, name: str) -> PreTrainedModel:
    """The task's plain Transformers model on the untouched base (no adapter merged), heads copied in."""
    task = model.tasks[name]
    shared = model.task_models[name]
    plain = task.kind.model_class().from_config(shared.config)
    state = encoder_weights_in(plain, model.encoder, model.adapter.encoder_weights(model.encoder, None))
    state.update(shared.state_dict())
    plain.load_state_dict({k: state[k] for k in plain.state_dict()}, strict=True)  # copies: the only copy
    return plain


def save_peft_task(model: MultitaskModel, tokenizer: PreTrainedTokenizerBase, name: str, directory: Path,
                   base_name: str) -> None:
    """Task `name` as `adapter_config.json` + `adapter_model.safetensors` (its LoRA weights and its head as
    `modules_to_save`), the tokenizer, the task's Transformers config (its labels) and its declaration for
    `predict`. `base_name` (MODEL_NAME) is what peft loads the base from."""
    if model.adapter.mode == "none":
        raise UserError("EXPORT_MERGED=false needs ADAPTER=lora or lora_per_task (there is no adapter to export)")
    adapter = model.adapter.adapter_of(name)
    plain = unmerged_task_model(model, name)
    source = model.encoder.peft_config[adapter]
    config = LoraConfig(r=source.r, lora_alpha=source.lora_alpha, lora_dropout=source.lora_dropout, bias="none",
                        target_modules=list(encoder_weights_in(plain, model.encoder,
                                                               dict.fromkeys(tuner_layers(model.encoder)))),
                        fan_in_fan_out=source.fan_in_fan_out, modules_to_save=task_heads(plain, model.encoder),
                        task_type=PEFT_TASK_TYPES.get(model.tasks[name].type))
    peft_model = get_peft_model(plain, config, adapter_name=EXPORTED_ADAPTER)
    lora = {k.replace(f".{adapter}.", f".{EXPORTED_ADAPTER}."): v for k, v in model.encoder.state_dict().items()
            if f".lora_A.{adapter}." in k or f".lora_B.{adapter}." in k}
    renamed = encoder_weights_in(plain, model.encoder, lora)  # the layers' names in the task model
    target = peft_model.base_model.model
    missing = set(renamed) - set(target.state_dict())
    if missing:
        raise ValueError(f"cannot export {name}: no place for {', '.join(sorted(missing)[:5])}")
    target.load_state_dict(renamed, strict=False)
    peft_model.peft_config[EXPORTED_ADAPTER].base_model_name_or_path = base_name
    peft_model.save_pretrained(directory)
    plain.config.save_pretrained(directory)  # the labels (id2label) and head size the base's config lacks
    tokenizer.save_pretrained(directory)
    (directory / TASK_FILE).write_text(json.dumps(model.tasks[name].to_dict(), indent=2), encoding="utf-8")


def task_heads(plain: PreTrainedModel, encoder: nn.Module) -> list[str]:
    """The task model's own top-level modules with weights of their own (its head: `classifier`, BERT's `cls`), as
    peft's `modules_to_save`; not the base's parts, nor a head that only holds the base's tied embeddings (T5's
    `lm_head`)."""
    parts = {path.split(".")[0] for path, _ in encoder_parts(plain, encoder)}
    base = {id(p) for part in parts for p in plain.get_submodule(part).parameters()}
    return [child for child, module in plain.named_children()
            if child not in parts and any(id(p) not in base for p in module.parameters())]


def is_peft_export(directory: Path) -> bool:
    """An unmerged export (or any peft adapter directory): what `predict`, `evaluate` and `push` load via peft."""
    return (directory / ADAPTER_CONFIG).is_file()


def load_peft_task(model_class: type[PreTrainedModel], directory: Path) -> PreTrainedModel:
    """An unmerged export as a plain Transformers model: the base from its `base_model_name_or_path`, with the
    export's own config (the head's labels), the adapter and head loaded by peft and merged in, so that prediction
    runs the same code as on a merged export."""
    from peft import PeftModel
    from transformers import AutoConfig

    base_name = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"]
    base = model_class.from_pretrained(base_name, config=AutoConfig.from_pretrained(directory))
    return PeftModel.from_pretrained(base, directory).merge_and_unload().eval()
