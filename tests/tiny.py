"""Tiny models and helpers for tests: everything is built offline in a few milliseconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import transformers

from trainer.config.settings import Settings, load_settings
from trainer.tasks.demo import build_demo_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_configs() -> dict[str, transformers.PreTrainedConfig]:
    """Random tiny configs of four architectures with different `base_model_prefix`es."""
    common = {"vocab_size": 400, "num_attention_heads": 2, "max_position_embeddings": 64}
    return {
        "bert": transformers.BertConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=37, **common),
        "roberta": transformers.RobertaConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=37, **common),
        "distilbert": transformers.DistilBertConfig(
            vocab_size=400, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64
        ),
        "electra": transformers.ElectraConfig(
            hidden_size=32, embedding_size=16, num_hidden_layers=2, intermediate_size=37, **common
        ),
    }


def save_tiny_pretrained(directory: Path, seed: int = 0) -> Path:
    """A tiny BERT plus WordPiece tokenizer saved like a hub model, for MODEL_NAME=<dir>."""
    torch.manual_seed(seed)
    tokenizer = build_demo_tokenizer()
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=128,
    )
    transformers.BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600):
    """Run `python -m trainer ...` with a clean, offline environment plus `env`."""
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=cwd or ROOT, env=cli_environ(env), capture_output=True, text=True, timeout=timeout,
    )


def cli_environ(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI run in tests: this one without any setting, offline, plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES}
    full_env.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"})
    full_env.update(env or {})
    return full_env


def quick_env(output_dir: Path, **extra: str) -> dict[str, str]:
    """Settings for a short demo run."""
    env = {"OUTPUT_DIR": str(output_dir), "MAX_STEPS": "12", "BATCH_SIZE": "8", "MAX_TRAIN_SAMPLES": "64",
           "MAX_EVAL_SAMPLES": "32", "LOGGING_STEPS": "4"}
    env.update(extra)
    return env


def settings_of(**flags: Any) -> Settings:
    """Settings from `flags` (lower-case names, like the CLI's) over the defaults; this process's environment and any
    .env file are ignored, so a developer's own settings cannot leak into a test."""
    return load_settings(flags, environ={}, dotenv_path=None)[0]


def _setting_names() -> set[str]:
    from trainer.config.settings import ENV_NAMES

    return set(ENV_NAMES)


_SETTING_NAMES = _setting_names()


# --- byte-level BPE (GPT-2/RoBERTa style), decoders, and data for the newer task kinds -------------

_BPE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _byte_level_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary trained on the demo corpus, deterministically, in well under a second."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from trainer.tasks.demo import _corpus

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=_BPE_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(sorted(set(_corpus())), trainer)
    state = json.loads(bpe.to_str())["model"]
    return state["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in state["merges"]]


def roberta_tokenizer() -> transformers.PreTrainedTokenizerBase:
    vocab, merges = _byte_level_bpe()
    return transformers.RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=128)


def gpt2_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """GPT-2 style: byte-level BPE, EOS only, no pad token (the trainer pads with EOS)."""
    vocab, merges = _byte_level_bpe()
    return transformers.GPT2Tokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="</s>",
                                      eos_token="</s>", model_max_length=128)


def encoder_configs(vocab_size: int = 500) -> dict[str, transformers.PreTrainedConfig]:
    """Tiny random configs of every encoder family the task kinds are tested on."""
    common = {"vocab_size": vocab_size, "num_attention_heads": 2, "max_position_embeddings": 130}
    return {
        "bert": transformers.BertConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=37, **common),
        "roberta": transformers.RobertaConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=37,
                                              pad_token_id=1, **common),
        "distilbert": transformers.DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2,
                                                    hidden_dim=37, max_position_embeddings=130),
        "electra": transformers.ElectraConfig(hidden_size=32, embedding_size=16, num_hidden_layers=2,
                                              intermediate_size=37, **common),
        "deberta-v2": transformers.DebertaV2Config(hidden_size=32, num_hidden_layers=2, intermediate_size=37,
                                                   **common),
        "modernbert": transformers.ModernBertConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=48,
                                                    vocab_size=vocab_size, num_attention_heads=2,
                                                    max_position_embeddings=130, pad_token_id=0,
                                                    bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3),
    }


def decoder_configs(vocab_size: int = 500, pad_token_id: int = 2) -> dict[str, transformers.PreTrainedConfig]:
    return {
        "gpt2": transformers.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=130,
                                        pad_token_id=pad_token_id, bos_token_id=2, eos_token_id=2),
        "llama": transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
                                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                          max_position_embeddings=130, pad_token_id=pad_token_id,
                                          bos_token_id=2, eos_token_id=2),
    }


def save_tiny_gpt2(directory: Path, seed: int = 0) -> Path:
    """A tiny GPT-2 plus its byte-level BPE tokenizer (no pad token), saved like a hub model."""
    torch.manual_seed(seed)
    tokenizer = gpt2_tokenizer()
    config = decoder_configs(len(tokenizer), pad_token_id=tokenizer.eos_token_id)["gpt2"]
    config.pad_token_id = None  # as on the hub: GPT-2 has none
    transformers.GPT2Model(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


NER_TYPES = {"PER": ["alice", "bob", "carol", "dave", "erin", "frank"],
             "LOC": ["paris", "london", "berlin", "rome", "oslo", "madrid"],
             "ORG": ["acme", "globex", "initech", "umbrella", "hooli", "vandelay"]}
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
_NER_TEMPLATES = ["{PER} lives in {LOC}", "{PER} works for {ORG} in {LOC}", "the {ORG} office is in {LOC}",
                  "{PER} met {PER} at {ORG}", "we flew from {LOC} to {LOC} yesterday"]


def ner_sentences(count: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Templated sentences with two-word names sometimes (`alice bob` -> B-PER I-PER)."""
    import random

    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        words, tags = [], []
        for part in rng.choice(_NER_TEMPLATES).split():
            if part.startswith("{"):
                kind = part[1:-1]
                names = [rng.choice(NER_TYPES[kind]) for _ in range(1 + (rng.random() < 0.3))]
                words += names
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(names) - 1)
            else:
                words.append(part)
                tags.append("O")
        sentences.append((words, tags))
    return sentences


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(ws, ts, strict=True)) + "\n"
                            for ws, ts in sentences), encoding="utf-8")
    return path


def write_text(path: Path, lines: int, seed: int = 0) -> Path:
    """Raw text for language modelling: the demo's sentences, one per line, with blank lines between."""
    from trainer.tasks.demo import demo_columns

    texts = demo_columns("demo_sentiment", "train")["text_a"]
    path.write_text("\n".join(t + ("\n" if i % 7 == 0 else "") for i, t in enumerate(texts[:lines])) + "\n",
                    encoding="utf-8")
    return path


def save_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """A tiny Llama (untied LM head, as Llama's config has it) with the byte-level BPE tokenizer, saved like a hub
    model."""
    torch.manual_seed(seed)
    tokenizer = gpt2_tokenizer()
    config = decoder_configs(len(tokenizer), pad_token_id=tokenizer.eos_token_id)["llama"]
    transformers.LlamaModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_ner_and_text_tasks(directory: Path, text_kind: str = "masked_lm", sentences: int = 96,
                             lines: int = 300) -> None:
    """tasks.yaml with a token-classification task (ner) and a language-model task (text, masked or causal), and
    their data."""
    write_conll(directory / "ner.conll", ner_sentences(sentences))
    write_text(directory / "text.txt", lines)
    (directory / "tasks.yaml").write_text(
        "tasks:\n"
        f"  - {{name: ner, type: token_classification, labels: [{', '.join(NER_LABELS)}], train_file: ner.conll,"
        " dev_file: ner.conll}\n"
        f"  - {{name: text, type: {text_kind}, train_file: text.txt, dev_file: text.txt}}\n")


def t5_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """T5 style: a Unigram (SentencePiece) vocabulary trained on the demo corpus, <pad>=0 </s>=1 <unk>=2, every
    text ending in </s>; no sentinel tokens."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from trainer.tasks.demo import _corpus

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    unigram.train_from_iterator(sorted(set(_corpus())), trainer)
    vocab = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]]
    return transformers.T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=128)


def save_tiny_t5(directory: Path, seed: int = 0) -> Path:
    """A tiny random T5 (encoder-decoder, tied LM head as t5-small) plus its Unigram tokenizer, saved like a hub
    model: AutoModel gives its T5Model."""
    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    config = transformers.T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                   num_decoder_layers=2, num_heads=2, relative_attention_num_buckets=8,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    transformers.T5Model(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
