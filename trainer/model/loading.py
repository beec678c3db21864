"""Loading MODEL_NAME: its tokenizer and config (checked by every task kind), then the shared encoder."""

from __future__ import annotations

import logging

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from trainer.config.settings import DEMO_MODEL
from trainer.errors import UserError, first_line
from trainer.model.positions import check_max_seq_length
from trainer.model.precision import BaseDtype
from trainer.model.quantize import prepare_quantized, quantization_config
from trainer.tasks import demo
from trainer.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)


def _unloadable(model_name: str, err: Exception) -> UserError:
    return UserError(
        f"MODEL_NAME={model_name!r} can't be loaded ({first_line(err)}); use a local model directory, "
        f"a Hugging Face hub id (needs network), or '{DEMO_MODEL}'"
    )


def load_tokenizer(
    model_name: str, tasks: list[TaskSpec] = ()
) -> tuple[PreTrainedTokenizerBase, PreTrainedConfig | None]:
    """The tokenizer (and config) of MODEL_NAME, checked by every task's kind; no weights are loaded.

    A tokenizer without a pad token (GPT-2 and most decoders) pads with EOS.
    """
    if model_name == DEMO_MODEL:
        return demo.build_demo_tokenizer(), None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        config = AutoConfig.from_pretrained(model_name)
    except (OSError, ValueError) as err:
        raise _unloadable(model_name, err) from None
    for task in tasks:
        task.kind.check_model(task, config, tokenizer)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, config


def load_encoder(
    model_name: str, tasks: list[TaskSpec] = (), max_seq_length: int | None = None, quantize: str | None = None,
    gradient_checkpointing: bool = False, dtype: BaseDtype | None = None,
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The tokenizer and base encoder: the offline demo, a local directory or a hub id.

    Each task's kind checks the config and tokenizer, and MAX_SEQ_LENGTH is checked against the model's
    positions, before any weights are loaded. QUANTIZE loads the weights quantized and frozen (`quantize.py`;
    checked by `check_quantize` before this runs). `dtype`: what the weights load in (`precision.base_dtype`);
    None loads them in the checkpoint's own dtype.
    """
    tokenizer, config = load_tokenizer(model_name, tasks)
    if max_seq_length is not None:
        check_max_seq_length(max_seq_length, config, tokenizer, f"MODEL_NAME={model_name}")
    if config is None and quantize:
        raise UserError(f"QUANTIZE={quantize} quantizes the weights MODEL_NAME loads, and the demo model is built "
                        "without any; set MODEL_NAME to a model directory or hub id")
    if config is None:  # the demo
        encoder = demo.build_demo_encoder(len(tokenizer))  # tiny: fp32 always
        for task in tasks:
            task.kind.check_model(task, encoder.config, tokenizer)
        return tokenizer, encoder
    try:
        quantized = {"quantization_config": quantization_config(quantize)} if quantize else {}
        encoder = AutoModel.from_pretrained(model_name, config=config, dtype=dtype.dtype if dtype else "auto",
                                            **quantized)
    except (OSError, ValueError, EOFError, SafetensorError) as err:  # SafetensorError: truncated or damaged weights
        raise _unloadable(model_name, err) from None
    if tokenizer.pad_token_id is not None:
        encoder.config.pad_token_id = tokenizer.pad_token_id  # every task config copies it
    stored = getattr(config, "dtype", None)
    if dtype and stored is not None and not quantize and stored != dtype.dtype:
        logger.info("MODEL_NAME holds %s weights; the base is loaded in %s: %s", str(stored).removeprefix("torch."),
                    str(dtype.dtype).removeprefix("torch."), dtype.why)
    if quantize:
        encoder = prepare_quantized(encoder, gradient_checkpointing)
    return tokenizer, encoder


def encoder_skeleton(config: PreTrainedConfig | None, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The base's modules without weights (on the meta device), from `load_tokenizer`'s config (None: the demo):
    what `check` inspects without reading or allocating any weight."""
    with torch.device("meta"):
        return demo.build_demo_encoder(len(tokenizer)) if config is None else AutoModel.from_config(config)
