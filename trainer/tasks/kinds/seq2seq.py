"""`seq2seq`: text in, text out on an encoder-decoder (T5, BART and their families), as T5 casts every task.

Training is teacher forcing: the model builds its decoder inputs from the labels (the target's ids, padded with
-100 per batch). Evaluation generates (`eval_predictions`, greedy or beam search) and scores the generated texts
against the targets. With `target_template` a classification label is written as words (T5's GLUE), and the
generated text is mapped back to a label for `accuracy`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sacrebleu
import torch
from rouge_score import rouge_scorer
from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM

from trainer.errors import UserError
from trainer.tasks.encode import encode_texts
from trainer.tasks.kinds import columns
from trainer.tasks.kinds.base import (
    IGNORE_INDEX,
    Field,
    TaskKind,
    class_label_names,
    has_column,
    label_index,
    lookup,
    pad_inputs,
    pad_sequences,
)

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from trainer.tasks.spec import TaskSpec

ROUGE = ("rouge1", "rouge2", "rougeL")
SHORT_TARGET = 16  # max_target_length up to this many tokens: short answers, scored by exact match by default


@functools.cache
def _rouge() -> rouge_scorer.RougeScorer:
    """One scorer for the process (making one logs a line)."""
    return rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)


class Seq2Seq(TaskKind):
    name = "seq2seq"
    summary = "text in, text out on an encoder-decoder (T5, BART): summaries, translations, labels as words"
    fields = (
        Field("source_column", "the input text's column; several: each written 'column: text' (T5's GLUE)",
              required=True, list_of_str=True),
        Field("target_column", "the column holding the target text (with target_template: the label)",
              required=True),
        Field("prefix", "text put before every source (T5's 'summarize: ', 'sst2 sentence: ')", default=""),
        Field("target_template", "writes a classification label as the target, e.g. '{label}'; needs 'labels' "
              "or 'label_names'", default=""),
        Field("target_choices_column", "a list column (e.g. choices.text): the target is its item at the position "
              "of target_column's value among 'labels' (CommonsenseQA's answer text)", default=""),
        Field("labels", "with target_template or target_choices_column: the label values as the files hold them",
              list_of_str=True, unique=True, default=()),
        Field("label_names", "with target_template: the words for labels 0..n-1 (as a datasets ClassLabel)",
              list_of_str=True, unique=True, default=()),
        Field("max_target_length", "the target's length in tokens (MAX_SEQ_LENGTH is the source's)", default=128),
        Field("generation_max_length", "evaluation: the most tokens generated (0: max_target_length)", default=0),
        Field("num_beams", "evaluation and predict: beams of the search (1: greedy)", default=1),
    )
    metrics = {"exact_match": True, "rouge1": True, "rouge2": True, "rougeL": True, "bleu": True, "accuracy": True}
    pipeline = ""  # Transformers 5 removed text2text-generation: the export is used with AutoModelForSeq2SeqLM
    no_packing = "its targets are a second sequence per example, which packing has no place for"

    # -- declaration --------------------------------------------------------------------

    def validate(self, task: TaskSpec, where: str) -> None:
        if task.target_template and "{label}" not in task.target_template:
            raise UserError(f"{where}: 'target_template' ({task.target_template!r}) must contain {{label}}, where "
                            "the label's name goes")
        if task.target_template and not (task.labels or task.label_names or task.declared_source):
            raise UserError(f"{where}: 'target_template' needs 'labels' or 'label_names' (the labels' words)")
        if task.target_choices_column and (task.target_template or not task.labels):
            raise UserError(f"{where}: 'target_choices_column' needs 'labels' (the values target_column holds, in the "
                            "order of the choices) and no 'target_template'")
        if task.label_names and not task.target_template or task.labels and not (task.target_template
                                                                                 or task.target_choices_column):
            raise UserError(f"{where}: 'labels' and 'label_names' go with 'target_template' (targets as label words) "
                            "or 'target_choices_column' (the chosen item's text)")
        if task.labels and task.label_names and len(task.labels) != len(task.label_names):
            raise UserError(f"{where}: 'label_names' needs one name per label ({len(task.labels)})")
        for field in ("max_target_length", "num_beams"):
            if task.options[field] < 1:
                raise UserError(f"{where}: '{field}' must be at least 1")
        if task.generation_max_length < 0:
            raise UserError(f"{where}: 'generation_max_length' must be 0 (max_target_length) or more")

    def metrics_for(self, task: TaskSpec) -> list[str]:
        return [m for m in self.metrics if m != "accuracy" or task.target_template]

    def default_metric(self, task: TaskSpec) -> str:
        """accuracy for labels written as words, exact_match for short targets, else rougeL (free text)."""
        if task.target_template:
            return "accuracy"
        return "exact_match" if task.max_target_length <= SHORT_TARGET else "rougeL"

    @staticmethod
    def words(task: TaskSpec) -> tuple[str, ...]:
        """The labels' names as the targets write them: `label_names`, else `labels`."""
        return task.label_names or task.labels

    @staticmethod
    def label_values(task: TaskSpec) -> tuple[str, ...]:
        """The labels as the files hold them: `labels`, else 0..n-1 for `label_names` (a ClassLabel's integers)."""
        return task.labels or tuple(str(i) for i in range(len(task.label_names)))

    def label_targets(self, task: TaskSpec) -> list[str]:
        """Each label's target text (`target_template` filled with its name)."""
        return [task.target_template.replace("{label}", word) for word in self.words(task)]

    # -- data ---------------------------------------------------------------------------

    def features(self, task: TaskSpec) -> datasets.Features:
        return datasets.Features({"source": datasets.Value("string"), "target": datasets.Value("string")})

    def has_label(self, task: TaskSpec, row: dict[str, Any]) -> bool:
        return has_column(row, task.target_column)

    def hub_has_label(self, task: TaskSpec, row: dict[str, Any]) -> bool:
        return row.get(task.target_column) not in (None, "", -1)

    def source(self, task: TaskSpec, texts: list[str]) -> str:
        """The model's input: the prefix, then the text (several columns: 'column: text' each, as T5 wrote GLUE)."""
        if len(texts) == 1:
            return task.prefix + texts[0]
        return task.prefix + " ".join(f"{c.rsplit('.', 1)[-1]}: {t}" for c, t in zip(task.source_column, texts,
                                                                                     strict=True))

    def normalise(self, task: TaskSpec, row: dict[str, Any], where: str, labelled: bool = True) -> dict[str, Any]:
        source = self.source(task, [str(lookup(row, c, where)) for c in task.source_column])
        if not labelled:
            return {"source": source, "target": ""}
        raw = lookup(row, task.target_column, where)
        if task.target_choices_column:
            choices = lookup(row, task.target_choices_column, where)
            index = label_index(task, raw, where, values=task.labels)
            count = len(choices) if isinstance(choices, list) else 0
            if index >= count:
                raise UserError(f"{where}: {task.target_column}={raw!r} picks choice {index + 1} of "
                                f"{task.target_choices_column!r}, which has {count or 'no'} items")
            raw = choices[index]
        return {"source": source, "target": self.target(task, raw, where)}

    def normalise_arrow(self, task: TaskSpec, table: pa.Table) -> pa.Table | None:
        if task.target_choices_column:
            return None  # a per-row lookup into each row's choices: row by row
        texts = [columns.text(columns.find(table, c)) for c in task.source_column]
        raw = columns.find(table, task.target_column)
        if any(t is None for t in texts):
            return None
        if task.target_template:
            index = columns.label_indices(raw, self.label_values(task))
            target = None if index is None else pc.take(pa.array(self.label_targets(task)), index)
        else:
            target = columns.text(raw)  # numbers other than integers go row by row (`target` writes them)
            if target is not None and not pc.all(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(target)), 0)
                                                  ).as_py():
                target = None  # an empty target: row by row names its line
        if target is None:
            return None
        if len(texts) == 1:
            parts: list[Any] = [pa.scalar(task.prefix), texts[0]]
        else:  # as `source` writes them: "prefix" "c1: " t1 " c2: " t2 ...
            parts = []
            for i, (column, text) in enumerate(zip(task.source_column, texts, strict=True)):
                label = f"{column.rsplit('.', 1)[-1]}: "
                parts += [pa.scalar((task.prefix if i == 0 else " ") + label), text]
        return pa.table({"source": pc.binary_join_element_wise(*parts, ""), "target": target})

    def target(self, task: TaskSpec, raw: Any, where: str) -> str:
        if task.target_template:
            return self.label_targets(task)[label_index(task, raw, where, values=self.label_values(task))]
        text = f"{raw:g}" if isinstance(raw, float) else str(raw)  # STS-B's 3.8, not 3.799999952316284
        if not text.strip():
            raise UserError(f"{where}: the target ({task.target_column!r}) of task {task.name!r} is empty; every "
                            "row needs a target text")
        return text

    def source_options(self, task: TaskSpec, features: datasets.Features, where: str) -> dict[str, Any]:
        if not task.target_template:
            return {}
        names = class_label_names(task, features.get(task.target_column), where)
        if names is None and not self.words(task):
            raise UserError(f"{where}: 'target_template' needs 'labels' or 'label_names': the source's "
                            f"{task.target_column!r} is no datasets ClassLabel")
        return {} if names is None or task.label_names else {"label_names": names}

    def label_summary(self, task: TaskSpec, columns: dict[str, list[Any]]) -> str:
        targets = columns["target"]
        return f"{len(targets)} targets, {np.mean([len(t) for t in targets]) if targets else 0:.0f} characters each"

    def tokenize(
        self, batch: dict[str, list[Any]], task: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list[Any]]:
        out = encode_texts(tokenizer, batch["source"], None, max_length)
        out["length"] = [len(ids) for ids in out["input_ids"]]
        out["labels"] = encode_texts(tokenizer, batch["target"], None, task.max_target_length)["input_ids"]
        return out

    def check_label_lengths(self, task: TaskSpec, tokenizer: PreTrainedTokenizerBase) -> None:
        """A label's text cut by max_target_length could never be generated whole, nor mapped back to its label."""
        texts = self.label_targets(task)
        for text, ids in zip(texts, encode_texts(tokenizer, texts)["input_ids"], strict=True):
            if len(ids) > task.max_target_length:
                raise UserError(f"task {task.name!r}: the target of label {text!r} is {len(ids)} tokens, more than "
                                f"max_target_length ({task.max_target_length}); raise max_target_length")

    def collate(
        self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None
    ) -> dict[str, Any]:
        """Sources padded with the pad token, targets with -100 (unscored; the model's decoder inputs, built from
        the labels, get pad tokens there), each to its longest in the batch."""
        batch = pad_inputs(features, tokenizer, pad_to_multiple_of)
        labels = [f["labels"] for f in features]
        length = max(len(r) for r in labels)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        batch["labels"] = pad_sequences(labels, IGNORE_INDEX, length)
        return batch

    # -- model --------------------------------------------------------------------------

    def model_class(self) -> type:
        return AutoModelForSeq2SeqLM

    def check_model(self, task: TaskSpec, config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        if not getattr(config, "is_encoder_decoder", False):
            encoder_only = type(config) in AutoModelForMaskedLM._model_mapping and not getattr(config, "is_decoder",
                                                                                               False)
            raise UserError(f"task {task.name!r} is seq2seq, but {config.model_type} is "
                            f"{'an encoder-only' if encoder_only else 'a decoder-only'} model; seq2seq needs an "
                            "encoder-decoder (T5, FLAN-T5, mT5, BART, ...)")
        super().check_model(task, config, tokenizer)
        if task.target_template and self.words(task):
            self.check_label_lengths(task, tokenizer)

    # -- evaluation ---------------------------------------------------------------------

    def generate(self, task: TaskSpec, model: PreTrainedModel, batch: dict[str, Any], max_new_tokens: int
                 ) -> torch.Tensor:
        return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              max_new_tokens=max_new_tokens, num_beams=task.num_beams, do_sample=False)

    def eval_predictions(self, task: TaskSpec, model: PreTrainedModel, inputs: dict[str, Any],
                         tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """The generated token ids (the decoder's start token first)."""
        return self.generate(task, model, inputs, task.generation_max_length or task.max_target_length)

    def decode_predictions(self, task: TaskSpec, predictions: Any, labels: np.ndarray,
                           tokenizer: PreTrainedTokenizerBase) -> tuple[list[str], list[str]]:
        """Generated and target ids (padded with -100 across batches and ranks) -> texts."""
        return decode(tokenizer, predictions), decode(tokenizer, labels)

    def compute_metrics(self, task: TaskSpec, predictions: Any, labels: Any) -> dict[str, float]:
        """Scores of generated texts against targets: exact match (after stripping), ROUGE F1 (`rouge-score`,
        Porter-stemmed), corpus BLEU (`sacrebleu`, as a fraction); with `target_template`, accuracy: the share of
        generated texts that are the target label's text."""
        predicted, targets = list(predictions), list(labels)
        if not targets:
            return dict.fromkeys(self.metrics_for(task), 0.0)
        scorer = _rouge()
        scores = [scorer.score(t, p) for p, t in zip(predicted, targets, strict=True)]
        metrics = {"exact_match": float(np.mean([p == t for p, t in zip(predicted, targets, strict=True)]))}
        metrics.update({name: float(np.mean([s[name].fmeasure for s in scores])) for name in ROUGE})
        metrics["bleu"] = sacrebleu.corpus_bleu(predicted, [targets]).score / 100
        if task.target_template:
            metrics["accuracy"] = float(np.mean(self.label_ids(task, predicted) == self.label_ids(task, targets, -2)))
        return metrics

    def label_ids(self, task: TaskSpec, texts: list[str], missing: int = -1) -> np.ndarray:
        """The label each text writes, `missing` for none (targets pass another value than predictions)."""
        index = {text.strip(): i for i, text in enumerate(self.label_targets(task))}
        return np.asarray([index.get(t, missing) for t in texts])

    def chance_level(self, task: TaskSpec) -> float:
        return 1.0 / len(self.words(task)) if task.metric == "accuracy" and self.words(task) else 0.0

    # -- inference ----------------------------------------------------------------------

    def takes_text_pair(self, task: TaskSpec) -> bool:
        return len(task.source_column) == 2

    def generated(self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  sources: list[str], max_length: int) -> list[str]:
        """The generated text of each source, as evaluation generates it."""
        batch = self.encode(task, {"source": sources, "target": ["-"] * len(sources)}, tokenizer, max_length)
        ids = self.generate(task, model, batch, task.generation_max_length or task.max_target_length)
        return decode(tokenizer, ids)

    def predict(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        inputs: list[dict[str, Any]], max_length: int,
    ) -> list[dict[str, Any]]:
        if len(task.source_column) > 2 or (len(task.source_column) == 2 and not all(i.get("text_pair")
                                                                                      for i in inputs)):
            raise UserError(f"task {task.name!r} reads {len(task.source_column)} source columns: give --text and "
                            "--text_pair (two columns; more can only be predicted from a file with predict-file)")
        sources = [self.source(task, [i["text"], i.get("text_pair") or ""][:len(task.source_column)]) for i in inputs]
        texts = self.generated(task, model, tokenizer, sources, max_length)
        if not task.target_template:
            return [{"generated_text": text} for text in texts]
        return [{"generated_text": text, "label": self.words(task)[label] if label >= 0 else None}
                for text, label in zip(texts, self.label_ids(task, texts).tolist(), strict=True)]

    def predict_rows(
        self, task: TaskSpec, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        columns: dict[str, list[Any]], max_length: int,
    ) -> list[tuple[str, ...]]:
        return [(text,) for text in self.generated(task, model, tokenizer, columns["source"], max_length)]


def decode(tokenizer: PreTrainedTokenizerBase, ids: Any) -> list[str]:
    """Token ids (a batch; -100 where the Trainer padded across batches and ranks) -> stripped texts."""
    ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
    ids = np.where(ids == IGNORE_INDEX, tokenizer.pad_token_id, ids)
    return [t.strip() for t in tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)]


KIND = Seq2Seq()
