"""One shared encoder, one Transformers task model per task.

Each task gets a stock `AutoModelFor...` model whose base model (found through
`base_model_prefix`, so any architecture works) is replaced by the single shared
encoder. The encoder is registered once, under `encoder`; task models hold a plain
reference to it, so `state_dict()` holds each shared weight exactly once: no
"tensors share memory" failure and no duplicated weights on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import ModelOutput

from trainer.tasks import TaskSpec

MULTITASK_FILE = "multitask.json"
WEIGHTS_FILE = "model.safetensors"


def task_model_class(task: TaskSpec) -> type:
    return AutoModelForMultipleChoice if task.type == "multiple_choice" else AutoModelForSequenceClassification


def task_config(encoder_config: PreTrainedConfig, task: TaskSpec) -> PreTrainedConfig:
    """The encoder's config with this task's labels and problem type."""
    config = encoder_config.__class__.from_dict(encoder_config.to_dict())
    if task.type != "multiple_choice":
        config.num_labels = task.num_labels
        config.problem_type = "regression" if task.type == "regression" else "single_label_classification"
        if task.type == "classification":
            config.id2label = dict(enumerate(task.labels))
            config.label2id = {label: i for i, label in enumerate(task.labels)}
    config.finetuning_task = task.name
    return config


def _attach_encoder(task_model: PreTrainedModel, encoder: nn.Module) -> None:
    """Point the task model's base model at the shared encoder without registering it as a child."""
    prefix = task_model.base_model_prefix
    own = task_model._modules.pop(prefix, None)
    if own is None:
        raise ValueError(f"{type(task_model).__name__} has no submodule {prefix!r} to share")
    if type(own) is not type(encoder):
        raise ValueError(f"{type(task_model).__name__} expects a {type(own).__name__}, got {type(encoder).__name__}")
    object.__setattr__(task_model, prefix, encoder)


class MultitaskModel(nn.Module):
    """`forward(task=..., **inputs)` runs the named task's model on the shared encoder."""

    def __init__(self, encoder: PreTrainedModel, tasks: list[TaskSpec]):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.tasks = {t.name: t for t in tasks}
        self.task_models = nn.ModuleDict()
        for task in tasks:
            model = task_model_class(task).from_config(task_config(encoder.config, task))
            _attach_encoder(model, encoder)
            self.task_models[task.name] = model

    def forward(
        self,
        task: str,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.task_models[task](**inputs)

    def shares_encoder(self) -> bool:
        return all(getattr(m, m.base_model_prefix) is self.encoder for m in self.task_models.values())

    # -- saving and loading -------------------------------------------------------------

    def save_config(self, directory: str | os.PathLike[str]) -> None:
        """Write what is needed to rebuild the model: the encoder config and the task specs."""
        os.makedirs(directory, exist_ok=True)
        self.config.save_pretrained(directory)
        payload = {"tasks": [t.to_dict() for t in self.tasks.values()]}
        Path(directory, MULTITASK_FILE).write_text(json.dumps(payload, indent=2), encoding="utf-8")

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike[str]) -> MultitaskModel:
        """Rebuild from a checkpoint or final model directory (config, task specs, weights)."""
        payload = json.loads(Path(directory, MULTITASK_FILE).read_text(encoding="utf-8"))
        tasks = [TaskSpec.from_dict(t) for t in payload["tasks"]]
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(directory))
        model = cls(encoder, tasks)
        model.load_state_dict(load_file(os.path.join(directory, WEIGHTS_FILE)), strict=True)
        return model.eval()

    def standalone_task_model(self, name: str) -> PreTrainedModel:
        """A plain Transformers model for one task, with a copy of the encoder's weights."""
        task = self.tasks[name]
        shared = self.task_models[name]
        model = task_model_class(task).from_config(shared.config)
        prefix = model.base_model_prefix
        state = {f"{prefix}.{k}": v for k, v in self.encoder.state_dict().items()}
        state.update(shared.state_dict())
        wanted = model.state_dict().keys()
        missing = sorted(set(wanted) - set(state))
        if missing:
            raise ValueError(f"cannot export {name}: no weights for {', '.join(missing[:5])}")
        model.load_state_dict({k: state[k].detach().clone() for k in wanted}, strict=True)
        return model.eval()
