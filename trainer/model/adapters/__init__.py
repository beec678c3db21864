"""Adapters on the shared encoder (ADAPTER): which of its weights train, which adapter a task's forward runs
through, and the plain encoder a task's export is made of. One module per mode plus one line in `ADAPTERS`:
`none.py` (full fine-tuning), `lora.py` (one peft LoRA adapter on the frozen base), `lora_per_task.py` (one per task);
`base.py` is the interface and the LoRA options. LoRA is peft's, injected in place: nothing here is hand-written LoRA.

May import: peft, `trainer.config`, `trainer.errors` and below; not `trainer.model.modeling`, which imports this.
"""

from trainer.model.adapters.base import Adapter, LoraOptions
from trainer.model.adapters.lora import SharedLora
from trainer.model.adapters.lora_per_task import LoraPerTask
from trainer.model.adapters.none import FullFineTuning

ADAPTERS: dict[str, type[Adapter]] = {
    "none": FullFineTuning,
    "lora": SharedLora,
    "lora_per_task": LoraPerTask,
}


def adapter_from_dict(record: dict | None, tasks: list[str]) -> Adapter:
    """The adapter `multitask.json` recorded (`Adapter.to_dict`); full fine-tuning when it records none."""
    if not record or record["mode"] == "none":
        return FullFineTuning(LoraOptions(), tasks)
    return ADAPTERS[record["mode"]](LoraOptions.from_dict(record), tasks)


__all__ = ["ADAPTERS", "Adapter", "LoraOptions", "adapter_from_dict"]
