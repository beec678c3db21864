"""`masked_lm`: the BERT objective on raw text, an auxiliary task beside the real ones (PyText's setup).

15 % of the tokens are chosen; of those 80 % become the mask token, 10 % a random token and
10 % stay. The choice is drawn per batch from a generator the Trainer seeds with
(seed, step, rank), so it changes every step and epoch and a resumed run sees the same masks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForMaskedLM

from trainer.errors import UserError
from trainer.tasks.encode import encode_texts
from trainer.tasks.kinds.base import IGNORE_INDEX
from trainer.tasks.kinds.language_model import LanguageModelKind

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from trainer.tasks.spec import TaskSpec

MASK_PROBABILITY = 0.15


class MaskedLM(LanguageModelKind):
    name = "masked_lm"
    summary = "masked language modelling on raw text (auxiliary: outside eval_average by default)"
    pipeline = "fill-mask"

    def token_stream(self, texts: list[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
        return encode_texts(tokenizer, texts)["input_ids"]

    def check_model(self, task: TaskSpec, config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        if tokenizer.mask_token_id is None:
            raise UserError(
                f"task {task.name!r} is masked_lm, but the tokenizer of this {config.model_type} model has no mask "
                "token; use an encoder with one (BERT, RoBERTa, ...) or causal_lm for a decoder"
            )
        super().check_model(task, config, tokenizer)

    def prepare_inputs(
        self, batch: dict[str, Any], tokenizer: PreTrainedTokenizerBase, generator: torch.Generator
    ) -> dict[str, Any]:
        input_ids = batch["input_ids"].clone()
        labels = input_ids.clone()
        special = torch.zeros_like(input_ids, dtype=torch.bool)
        for token in tokenizer.all_special_ids:
            special |= input_ids == token
        candidates = (batch["attention_mask"] == 1) & ~special
        draw = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
        masked = candidates & (draw < MASK_PROBABILITY)
        labels[~masked] = IGNORE_INDEX
        # 80 % mask token, 10 % random token, 10 % unchanged: split the masked draw's range
        to_mask = masked & (draw < MASK_PROBABILITY * 0.8)
        to_random = masked & ~to_mask & (draw < MASK_PROBABILITY * 0.9)
        input_ids[to_mask] = tokenizer.mask_token_id
        random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=generator).to(input_ids.device)
        input_ids[to_random] = random_ids[to_random]
        return {**batch, "input_ids": input_ids, "labels": labels}

    def model_class(self) -> type:
        return AutoModelForMaskedLM

    def predict(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        inputs: list[dict[str, Any]], max_length: int,
    ) -> list[dict[str, Any]]:
        results = []
        for item in inputs:
            encoded = tokenizer(item["text"], truncation=True, max_length=max_length, return_tensors="pt")
            positions = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
            if not positions:
                raise UserError(f"task {task.name!r} fills masks: put {tokenizer.mask_token} in --text")
            logits = model(**encoded).logits[0].float()
            fills = []
            for pos in positions:
                probs = logits[pos].softmax(-1)
                top = probs.topk(5)
                fills.append([{"token": tokenizer.decode([int(i)]).strip(), "score": round(float(p), 4)}
                              for p, i in zip(top.values, top.indices, strict=True)])
            results.append({"masks": fills})
        return results


KIND = MaskedLM()
