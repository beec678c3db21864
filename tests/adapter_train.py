"""`python -m tests.adapter_train`: `python -m trainer train` with an adapter on the frozen base, for the checkpoint
tests of issue 20 §2 (tests/test_adapter_checkpoints.py).

Until the adapters' own wiring (§1, `trainer/model/adapters/`) is merged, `StandInAdapter` puts the LoRA adapter
that ADAPTER=lora asks for into the model, with peft, when the Trainer is built (before its optimizer and before a
resume loads the checkpoint), as that wiring does: the base frozen, `model.adapter` set. Once the model arrives
with an adapter already, it does nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from transformers import TrainerCallback

from trainer.config.settings import Settings, load_settings


class StandInAdapter(TrainerCallback):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        s = self.settings
        if s.adapter == "none" or model.adapter != "none":
            return
        from peft import LoraConfig, inject_adapter_in_model

        names = list(model.tasks) if s.adapter == "lora_per_task" else ["default"]
        for name in names:
            config = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                                target_modules=list(s.lora_target_modules) if s.lora_target_modules else None)
            inject_adapter_in_model(config, model.encoder, adapter_name=name)
        model.adapter = s.adapter


def train_with_adapter(settings: Settings) -> dict[str, Any]:
    from trainer.train import train

    return train(settings, callbacks=[StandInAdapter(settings)])


def main() -> None:
    import logging

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    settings, _ = load_settings({}, environ=dict(os.environ), dotenv_path=None)
    train_with_adapter(settings)
    sys.exit(0)


if __name__ == "__main__":
    main()
