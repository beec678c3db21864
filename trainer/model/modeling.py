"""One shared encoder, one Transformers task model per task.

Each task gets a stock `AutoModelFor...` model whose base model (found through
`base_model_prefix`, so any architecture works) is replaced by the single shared
encoder. The encoder is registered once, under `encoder`; task models hold a plain
reference to it, so `state_dict()` holds each shared weight exactly once: no
"tensors share memory" failure and no duplicated weights on disk.

An adapter (`trainer.model.adapters`, ADAPTER) may change the encoder in place: LoRA layers on a frozen base, the
task of each forward picking its adapter; a task's standalone model then gets the adapter merged into a copy.
Its checkpoints then hold only what trains (`state_dict` leaves the frozen base out), and `from_checkpoint` loads
the base again from the MODEL_NAME that `multitask.json` records (`trainer.model.base_record`), checked.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from trainer.errors import UserError
from trainer.model.adapters import ADAPTERS, Adapter, LoraOptions, adapter_from_dict
from trainer.model.base_record import BaseRecord, load_base
from trainer.model.weighting import WEIGHTINGS
from trainer.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)

MULTITASK_FILE = "multitask.json"
WEIGHTS_FILE = "model.safetensors"


def encoder_parts(task_model: PreTrainedModel, encoder: nn.Module) -> list[tuple[str, str]]:
    """Where the shared encoder sits in a task model: (path in the task model, path in the encoder) pairs.

    Most task models hold the whole base model under `base_model_prefix` (one pair, the encoder's path ""). T5's
    family has no single base-model attribute in its seq2seq model: `T5ForConditionalGeneration` holds the base's
    parts (`shared`, `encoder`, `decoder`) itself, and `T5ForTokenClassification` holds an encoder-only base
    (`T5EncoderModel`: `shared`, `encoder`); each such part is the base's part of the same name and type.
    """
    prefix = task_model.base_model_prefix
    own = task_model._modules.get(prefix)
    if own is not None and type(own) is type(encoder):
        return [(prefix, "")]
    holder, at = (task_model, "") if own is None else (own, f"{prefix}.")
    parts = [(at + name, name) for name, part in encoder.named_children()
             if type(holder._modules.get(name)) is type(part)]
    if not parts:
        raise ValueError(f"{type(task_model).__name__} has no {type(encoder).__name__} (or its parts) to share")
    return parts


def encoder_weights_in(task_model: PreTrainedModel, encoder: nn.Module, weights: dict[str, torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    """The encoder's `weights` (by the encoder's names) under their names in a standalone `task_model`."""
    state = {}
    for path, part in encoder_parts(task_model, encoder):
        inner = f"{part}." if part else ""
        state.update({f"{path}.{k[len(inner):]}": v for k, v in weights.items() if k.startswith(inner)})
    return state


def _attach_encoder(task_model: PreTrainedModel, encoder: nn.Module) -> None:
    """Point the task model's base model (or each of its parts, `encoder_parts`) at the shared encoder's without
    registering it as a child."""
    for path, part in encoder_parts(task_model, encoder):
        owner, _, name = path.rpartition(".")
        holder = task_model.get_submodule(owner)
        holder._modules.pop(name)
        object.__setattr__(holder, name, encoder.get_submodule(part))
    # A head tied to the input embeddings (masked/causal LM) must follow them to the shared encoder.
    output = task_model.get_output_embeddings()
    if output is not None and getattr(task_model.config, "tie_word_embeddings", False):
        output.weight = encoder.get_input_embeddings().weight


@dataclass
class TrainingLoss(ModelOutput):
    """What a training forward returns: the weighted loss to backpropagate and each task's own loss."""

    loss: torch.Tensor | None = None
    task_losses: dict[str, torch.Tensor] | None = None


class MultitaskModel(nn.Module):
    """`forward(task=..., **inputs)` runs the named task's model on the shared encoder.

    In training, the forward weights the task's loss (`trainer.model.weighting`), and `forward(batches=...)`
    runs one batch of several tasks and sums their weighted losses (SAMPLING=all_tasks).
    """

    def __init__(self, encoder: PreTrainedModel, tasks: list[TaskSpec], task_weighting: str = "static",
                 task_weights: dict[str, float] | None = None, task_models: dict[str, PreTrainedModel] | None = None,
                 adapter: Adapter | None = None):
        """New task models on `encoder`, or the given ones (built on it already) when `task_models` is set.
        `adapter` is attached to the encoder once the task models share it (none: full fine-tuning)."""
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.tasks = {t.name: t for t in tasks}
        self.task_models = nn.ModuleDict()
        for task in tasks:
            if task_models:
                model = task_models[task.name]
            else:
                model = task.kind.model_class().from_config(task.kind.config(encoder.config, task))
            _attach_encoder(model, encoder)
            self.task_models[task.name] = model
        self.task_weighting = task_weighting
        self.loss_weighting = WEIGHTINGS[task_weighting](list(self.tasks), task_weights)
        self.adapter = adapter or ADAPTERS["none"](LoraOptions(), list(self.tasks))
        self.adapter.attach(encoder)
        self.base: BaseRecord | None = None  # which base the encoder was loaded from (multitask.json records it)

    @classmethod
    def from_task_model(cls, task: TaskSpec, model: PreTrainedModel) -> MultitaskModel:
        """A one-task model around a standalone task model (an export), sharing nothing: its own encoder."""
        base, mapping = model._modules.get(model.base_model_prefix), AutoModel._model_mapping
        if base is not None and (type(model.config) not in mapping or type(base) is mapping[type(model.config)]):
            return cls(base, [task], task_models={task.name: model})
        encoder = AutoModel.from_config(model.config)
        for path, part in encoder_parts(model, encoder):  # T5's family: the model's parts make up the encoder
            encoder._modules[part] = model.get_submodule(path)
        return cls(encoder, [task], task_models={task.name: model})

    def _tied_aliases(self) -> dict[str, str]:
        """Parameter names that are another name's tensor (LM heads tied to the shared embeddings)."""
        first: dict[int, str] = {}
        aliases = {}
        for name, param in self.named_parameters(remove_duplicate=False):
            if id(param) in first:
                aliases[name] = first[id(param)]
            else:
                first[id(param)] = name
        return aliases

    def frozen_base_keys(self) -> set[str]:
        """State-dict keys of the frozen base, which a checkpoint leaves out: with an adapter, the encoder's
        parameters that do not train and its buffers (all loaded again from MODEL_NAME). Everything else is
        saved: adapters, heads (a frozen head too: it is no part of the base) and learned loss weights. Without
        an adapter there is none: the whole model trains, and is saved."""
        if self.adapter.mode == "none":
            return set()
        prefix, adapters = "encoder.", self.adapter_names()
        keys = {prefix + n for n, p in self.encoder.named_parameters(remove_duplicate=False)
                if not p.requires_grad and not set(n.split(".")) & adapters}  # a frozen adapter weight is no base
        return keys | {prefix + n for n, _ in self.encoder.named_buffers(remove_duplicate=False)}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Each tensor once: tied heads are left out (safetensors refuses shared tensors). With an adapter, only
        what trains (`frozen_base_keys`): the Trainer saves checkpoints through this."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in [*self._tied_aliases(), *self.frozen_base_keys()]:
            state.pop(prefix + key, None)
        return state

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As `nn.Module.load_state_dict`; the frozen base's keys may be missing (an adapter checkpoint holds none:
        the base is already loaded), and are not reported missing."""
        state = dict(state_dict)
        aliases = self._tied_aliases()
        for alias, source in aliases.items():
            if source in state:
                state.setdefault(alias, state[source])
        base = self.frozen_base_keys()
        base |= {alias for alias, source in aliases.items() if source in base}  # an LM head tied to the base
        if not base:
            return super().load_state_dict(state, strict=strict, assign=assign)
        result = super().load_state_dict(state, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if k not in base]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: missing keys "
                               f"{missing[:5]}, unexpected keys {result.unexpected_keys[:5]}")
        return type(result)(missing, result.unexpected_keys)

    def forward(
        self,
        task: str | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        batches: dict[str, dict[str, Any]] | None = None,
        **packed: Any,
    ) -> ModelOutput:
        """`packed`: a packed batch's position_ids and sequence boundaries (PACKING=1, `trainer.data.packing`)."""
        if batches is not None:  # one batch per task: the sum of their weighted losses
            losses = {name: self._task_forward(**batch).loss for name, batch in batches.items()}
            total = sum(self.loss_weighting(name, loss) for name, loss in losses.items())
            return TrainingLoss(loss=total, task_losses=losses)
        output = self._task_forward(task, input_ids, attention_mask, token_type_ids, labels, **packed)
        if not self.training or output.loss is None:
            return output
        return TrainingLoss(loss=self.loss_weighting(task, output.loss), task_losses={task: output.loss})

    def _task_forward(
        self,
        task: str,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **packed: Any,
    ) -> ModelOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **packed}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        self.adapter.activate(task)
        return self.task_models[task](**self.tasks[task].kind.model_inputs(inputs))

    def active_task_model(self, task: str) -> PreTrainedModel:
        """Task `task`'s model with its adapter switched on, for calls other than `forward` (`generate`)."""
        self.adapter.activate(task)
        return self.task_models[task]

    # -- memory -------------------------------------------------------------------------

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """GRADIENT_CHECKPOINTING: recompute the shared encoder's activations in the backward pass.

        The stock Trainer calls this hook for `TrainingArguments(activation_checkpointing=True)`; being no
        `PreTrainedModel`, this model passes it on to the encoder, where Transformers' blocks are. The heads
        are a layer deep and keep their activations. Non-reentrant checkpointing (`use_reentrant=False`, the
        default here) gives frozen weights (an adapter's base) and inputs without gradients a correct backward;
        Transformers also makes the embeddings' output require a gradient (`enable_input_require_grads`).
        """
        self.encoder.activation_checkpointing_enable(
            activation_checkpointing_kwargs=activation_checkpointing_kwargs or {"use_reentrant": False},
            every_n_layers=every_n_layers, offload=offload)
        blocks = sum(getattr(m, "gradient_checkpointing", False) is True for m in self.encoder.modules())
        logger.info("GRADIENT_CHECKPOINTING: %d module(s) of the shared encoder recompute their activations in the "
                    "backward pass", blocks)

    # -- saving and loading -------------------------------------------------------------

    def save_config(self, directory: str | os.PathLike[str]) -> None:
        """Write what is needed to rebuild the model: the encoder config and the task specs; with an adapter also
        the adapter's record and the base to load again (MODEL_NAME, its fingerprint)."""
        os.makedirs(directory, exist_ok=True)
        self.config.save_pretrained(directory)
        payload: dict[str, Any] = {"tasks": [t.to_dict() for t in self.tasks.values()],
                                   "task_weighting": self.task_weighting}
        if self.adapter.mode != "none":
            payload["adapter"] = self.adapter.to_dict()
        if self.base is not None:
            payload["base"] = self.base.to_dict()
        Path(directory, MULTITASK_FILE).write_text(json.dumps(payload, indent=2), encoding="utf-8")

    def adapter_names(self) -> set[str]:
        """The names of the adapters in the encoder (peft's; none without an adapter)."""
        return set(getattr(self.encoder, "peft_config", None) or {})

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike[str]) -> MultitaskModel:
        """Rebuild from a checkpoint or final model directory (config, task specs, weights).

        An adapter checkpoint holds no base: it is loaded again from the MODEL_NAME `multitask.json` records, must
        match the recorded fingerprint (else `UserError`), gets its adapters back, and then the saved weights."""
        payload = json.loads(Path(directory, MULTITASK_FILE).read_text(encoding="utf-8"))
        tasks = [TaskSpec.from_dict(t) for t in payload["tasks"]]
        adapter = adapter_from_dict(payload.get("adapter"), [t.name for t in tasks])
        base = BaseRecord.from_dict(payload["base"]) if "base" in payload else None
        if adapter.mode == "none":
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(directory))
        elif base is None:
            raise UserError(f"{directory} holds an adapter checkpoint but no record of its base ({MULTITASK_FILE} has "
                            "no 'base'): it can't be rebuilt")
        else:
            encoder = load_base(base, f"{directory}'s base")
        model = cls(encoder, tasks, payload.get("task_weighting", "static"), adapter=adapter)
        model.base = base
        model.load_state_dict(load_file(os.path.join(directory, WEIGHTS_FILE)), strict=True)
        return model.eval()

    def task_keys(self, name: str) -> list[str]:
        """The state-dict keys of what task `name` alone needs on top of the frozen base: its head and its
        adapter (its own with one adapter per task, else the shared one). What `best/` keeps with an adapter."""
        state = self.state_dict()
        adapters = self.adapter_names()
        own = {name} if name in adapters else adapters
        head = f"task_models.{name}."

        def needed(key: str) -> bool:
            if key.startswith(head):
                return True
            parts = set(key.split("."))
            return key.startswith("encoder.") and bool(parts & own) and not (parts & (adapters - own))

        return [key for key in state if needed(key)]

    def standalone_task_model(self, name: str) -> PreTrainedModel:
        """A plain Transformers model for one task, with a copy of the encoder's weights (with an adapter: the
        task's adapter merged into them); the only copy is the returned model's."""
        task = self.tasks[name]
        shared = self.task_models[name]
        model = task.kind.model_class().from_config(shared.config)
        state = encoder_weights_in(model, self.encoder, self.adapter.encoder_weights(self.encoder, name))
        state.update(shared.state_dict())
        wanted = model.state_dict().keys()
        missing = sorted(set(wanted) - set(state))
        if missing:
            raise ValueError(f"cannot export {name}: no weights for {', '.join(missing[:5])}")
        model.load_state_dict({k: state[k] for k in wanted}, strict=True)  # copies into the model's own tensors
        return model.eval()
