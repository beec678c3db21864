"""ADAPTER=lora_per_task: one LoRA adapter per task (named after the task) on the frozen shared encoder; the task of
a forward picks the adapter it runs through (with SAMPLING=all_tasks, each task's sub-batch through its own).

Switching uses peft's `set_adapter`, which also turns the other adapters' `requires_grad` off; it is turned back on
at once, so every adapter stays in the optimizer and in DDP's reducer for the whole run. A step of one task gives no
other adapter a gradient: its `.grad` stays None, and AdamW skips it and its state.
"""

from __future__ import annotations

from peft.functional import set_adapter, set_requires_grad
from torch import nn

from trainer.errors import UserError
from trainer.model.adapters.lora import SharedLora


class LoraPerTask(SharedLora):
    mode = "lora_per_task"

    def adapter_names(self) -> list[str]:
        return list(self.tasks)

    def adapter_of(self, task: str) -> str:
        return task

    def check(self, encoder: nn.Module) -> None:
        dotted = [t for t in self.tasks if "." in t]
        if dotted:  # an adapter is a key of the layers' ModuleDicts, which refuse dots
            raise UserError(f"ADAPTER=lora_per_task names each adapter after its task, and a name can't hold '.': "
                            f"rename task {dotted[0]!r}")
        super().check(encoder)

    def activate(self, task: str) -> None:
        if task == self.active:
            return
        set_adapter(self.encoder, task)
        set_requires_grad(self.encoder, self.adapter_names(), requires_grad=True)  # set_adapter turned them off
        self.active = task
