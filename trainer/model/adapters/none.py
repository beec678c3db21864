"""ADAPTER=none: full fine-tuning. The encoder is left exactly as it was; every weight trains."""

from __future__ import annotations

from typing import Any

from trainer.model.adapters.base import Adapter


class FullFineTuning(Adapter):
    mode = "none"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode}
