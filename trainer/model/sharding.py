"""FSDP=true: full fine-tuning sharded across the processes of a torchrun launch, with the stock Trainer's FSDP
integration (accelerate's FSDP2 path, `fully_shard`), one transformer block per unit.

Every process holds a shard of each block, of the embeddings and of every head; a block's weights are gathered
for its forward and backward and freed again. Our sampler gives every rank the same task in a step, so every rank
computes the same heads' gradients and FSDP2 reduce-scatters those only: a head not used in a step has no
gradient on any rank, and AdamW leaves it (and its state) alone, as under DDP.

Checkpoints use the full state dict (FSDP's FULL_STATE_DICT, the Trainer's default): at a save the shards are
gathered into the main process, which writes `model.safetensors` (the same file a DDP run writes, so selection,
exports, `predict` and the bucket's commit protocol see no difference) plus the Trainer's FSDP files, the gathered
weights (`pytorch_model_fsdp.bin`) and optimizer state (`optimizer.bin`). A sharded state dict would write one
file per rank on each rank's own disk, and only the main process uploads to the bucket: on several machines the
other ranks' shards would never reach it. A full state dict is resharded when it is loaded, so a resume may run on
other machines (and another process count). Its cost: the main process holds the whole model and its optimizer
state in CPU memory while saving.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel
from transformers.modeling_layers import GradientCheckpointingLayer

from trainer.errors import UserError
from trainer.model.modeling import MultitaskModel

logger = logging.getLogger(__name__)


def check_fsdp(fsdp: bool, processes: int) -> None:
    """FSDP shards across processes: one process has nothing to shard across."""
    if fsdp and processes < 2:
        raise UserError("FSDP=true shards the model across processes, and this is one process; launch it with "
                        "torchrun --nproc_per_node=N (N >= 2, `python -m trainer launch` on a GPU machine), or set "
                        "FSDP=false")


FSDP_WEIGHTS_FILE = "pytorch_model_fsdp.bin"  # the Trainer's FSDP_MODEL_NAME, full state dict


def check_resume_format(checkpoint: str | os.PathLike[str] | None, fsdp: bool) -> None:
    """A checkpoint resumes only with the FSDP setting that wrote it: the Trainer reads an FSDP checkpoint's weights
    and optimizer state from its FSDP files (`optimizer.bin` keyed by parameter name) and a DDP one's from
    `optimizer.pt` (keyed by position), and fails with a traceback on the other kind."""
    if checkpoint is None:
        return
    written_with = Path(checkpoint, FSDP_WEIGHTS_FILE).is_file()
    if written_with != fsdp:
        raise UserError(f"{Path(checkpoint).name} was written with FSDP={str(written_with).lower()} and this run has "
                        f"FSDP={str(fsdp).lower()}; resume it with FSDP={str(written_with).lower()} (the optimizer "
                        "state is stored differently), or start over with RESUME=never in a new OUTPUT_DIR")


def block_classes(encoder: nn.Module) -> list[str]:
    """The class names of the encoder's repeated transformer blocks (`BertLayer`, `LlamaDecoderLayer`, ...): the
    layers Transformers checkpoints, found in the model itself, so any architecture works."""
    names = sorted({type(m).__name__ for m in encoder.modules() if isinstance(m, GradientCheckpointingLayer)})
    if not names:
        raise UserError(f"FSDP=true: {type(encoder).__name__} has no transformer blocks Transformers knows of to "
                        "shard one by one; set FSDP=false")
    return names


def fsdp_arguments(fsdp: bool, encoder: nn.Module) -> dict[str, Any]:
    """The `TrainingArguments` of FSDP=true: FSDP2, one unit per transformer block, full state dict checkpoints."""
    if not fsdp:
        return {}
    blocks = block_classes(encoder)
    logger.info("FSDP=true: FSDP2, one unit per %s, full state dict checkpoints", " / ".join(blocks))
    return {"fsdp": True,
            "fsdp_config": {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                            "transformer_layer_cls_to_wrap": blocks, "state_dict_type": "FULL_STATE_DICT",
                            "reshard_after_forward": True}}


def is_sharded(model: nn.Module) -> bool:
    """The model's parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every process gathers the sharded model into full CPU tensors (a collective: all ranks call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded(model: MultitaskModel) -> MultitaskModel | None:
    """`model` itself when it is not sharded; under FSDP a plain copy gathered from every process, on the main
    process (None on the others). A collective under FSDP: every process calls it at the same point.

    Per-task selection and the final export write standalone task models from full weights (the model's
    `standalone_task_model`), which a shard is not.
    """
    if not is_sharded(model):
        return model
    state = full_state_dict(model)
    if torch.distributed.get_rank() != 0:
        return None
    # static TASK_WEIGHTS are no weights and stay behind: the copy is for writing task models, not for training
    copy = MultitaskModel(AutoModel.from_config(model.config), list(model.tasks.values()), model.task_weighting)
    copy.load_state_dict(state, strict=True)
    return copy.train(model.training)


def keep_fsdp_on_cpu(accelerator: Any, plugin_args: dict[str, Any] | None) -> bool:
    """Give the accelerator the FSDP plugin it dropped on CPU; True when it did.

    accelerate (1.15) turns a multi-process CPU run into `MULTI_CPU` and ignores the FSDP plugin there, so the
    Trainer would run DDP while FSDP=true claims otherwise. `fully_shard` itself runs on CPU with gloo, and
    accelerate's FSDP2 path (preparing, saving, loading) reads only the state's `distributed_type` and
    `fsdp_plugin`: setting the two runs the same FSDP2 code on CPU as on GPUs.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if plugin_args is None or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
    # where accelerate records it on GPUs too (`AcceleratorState.__init__`): every later state reads it from there
    state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True
