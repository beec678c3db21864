"""`causal_lm`: next-token prediction on raw text, on a decoder (GPT-2, Llama) shared with other heads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from trainer.errors import UserError
from trainer.tasks.encode import encode_texts
from trainer.tasks.kinds.language_model import LanguageModelKind

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from trainer.tasks.spec import TaskSpec

CONTINUATION_TOKENS = 30


class CausalLM(LanguageModelKind):
    name = "causal_lm"
    summary = "next-token prediction on raw text, on a decoder model (GPT-2, Llama, ...)"
    pipeline = "text-generation"

    def token_stream(self, texts: list[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
        """Each text's tokens followed by EOS, so the model learns where a text ends."""
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return [ids + eos for ids in encode_texts(tokenizer, texts, add_special_tokens=False)["input_ids"]]

    def shift(self) -> int:
        return 1

    def check_model(self, task: TaskSpec, config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        encoder_only = type(config) in AutoModelForMaskedLM._model_mapping and not getattr(config, "is_decoder", False)
        if encoder_only:
            raise UserError(
                f"task {task.name!r} is causal_lm, but {config.model_type} is an encoder-only model; use a decoder "
                "(GPT-2, Llama, ...) or masked_lm"
            )
        super().check_model(task, config, tokenizer)

    def model_class(self) -> type:
        return AutoModelForCausalLM

    def predict(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        inputs: list[dict[str, Any]], max_length: int,
    ) -> list[dict[str, Any]]:
        results = []
        for item in inputs:
            if not item["text"].strip():
                raise UserError(f"task {task.name!r} continues a text: --text must not be empty")
            encoded = tokenizer(item["text"], return_tensors="pt", add_special_tokens=False)
            room = max(1, min(CONTINUATION_TOKENS, max_length - encoded["input_ids"].shape[1]))
            out = model.generate(**encoded, max_new_tokens=room, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            results.append({"continuation": tokenizer.decode(out[0, encoded["input_ids"].shape[1]:],
                                                             skip_special_tokens=True)})
        return results


KIND = CausalLM()
