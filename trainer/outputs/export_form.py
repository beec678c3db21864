"""Which form `export/<task>` takes with an adapter: merged (a plain Transformers model) or unmerged (a peft adapter
directory plus the head). EXPORT_MERGED decides; empty = merged for a base under 1 B parameters, where a full copy
per task is cheap and loads with nothing but Transformers, unmerged above, where the copy is what is not worth
shipping."""

from __future__ import annotations

from trainer.config.settings import DEMO_MODEL, DEMO_UNMERGED
from trainer.errors import UserError
from trainer.model.modeling import MultitaskModel

MERGE_BELOW = 1_000_000_000  # parameters of the base


def export_merged(setting: bool | None, model: MultitaskModel) -> bool:
    """The form for this model: always merged without an adapter (there is nothing to keep apart); the unmerged
    form names its base by MODEL_NAME, which the in-memory demo base does not have, so that is refused."""
    if model.adapter.mode == "none":
        return True
    merged = setting if setting is not None else sum(p.numel() for p in model.encoder.parameters()) < MERGE_BELOW
    if not merged and model.base is not None and model.base.model_name == DEMO_MODEL:
        raise UserError(DEMO_UNMERGED)
    return merged
