"""`encode_texts` (the Rust tokenizer called directly) gives the ids `tokenizer(...)` gives, for WordPiece, byte-level
BPE (RoBERTa, GPT-2) and a real pretrained tokenizer, on single texts, pairs and truncated pairs."""

import functools

import pytest
from transformers import AutoTokenizer

from trainer.data.read import read_split
from trainer.tasks.catalog import BUILTIN_TASKS
from trainer.tasks.demo import build_demo_tokenizer
from trainer.tasks.encode import encode_texts

from .tiny import ROOT, SHARED_DATA, gpt2_tokenizer, roberta_tokenizer

MINILM = ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"
TEXTS = ["The cat sat on the mat.", "", "  spaces  around  ", "naïve café – ünïcode ✓ 😀", "a " * 300,
         "Hello, world!\nA second line.\tTab."]
PAIRS = ["A short one.", "x", "", "b " * 200, "Pairs of texts", "?"]


@functools.cache
def tokenizers():
    found = {"wordpiece (demo)": build_demo_tokenizer(), "byte-level BPE (RoBERTa)": roberta_tokenizer(),
             "byte-level BPE (GPT-2)": gpt2_tokenizer()}
    if MINILM.is_dir():
        found["MiniLM (pretrained)"] = AutoTokenizer.from_pretrained(str(MINILM))
    return found


def expected(tokenizer, texts, pairs=None, max_length=None, add_special_tokens=True):
    encoded = tokenizer(texts, pairs, truncation=max_length is not None, max_length=max_length,
                        add_special_tokens=add_special_tokens, verbose=False)
    return {k: v for k, v in encoded.items() if k != "attention_mask"}


@pytest.mark.parametrize("name", list(tokenizers()))
@pytest.mark.parametrize("max_length", [None, 128, 9])
def test_the_same_ids_as_the_tokenizer_call(name, max_length):
    tokenizer = tokenizers()[name]
    assert encode_texts(tokenizer, TEXTS, max_length=max_length) == expected(tokenizer, TEXTS, max_length=max_length)
    assert encode_texts(tokenizer, TEXTS, PAIRS, max_length) == expected(tokenizer, TEXTS, PAIRS, max_length)
    assert encode_texts(tokenizer, TEXTS, add_special_tokens=False) == expected(tokenizer, TEXTS,
                                                                                 add_special_tokens=False)


def test_truncation_from_the_left_follows_the_tokenizer():
    tokenizer = build_demo_tokenizer()
    assert encode_texts(tokenizer, TEXTS, PAIRS, 9) == expected(tokenizer, TEXTS, PAIRS, 9)
    tokenizer.truncation_side = "left"
    assert encode_texts(tokenizer, TEXTS, PAIRS, 9) == expected(tokenizer, TEXTS, PAIRS, 9)


def test_the_tokenizers_own_calls_are_untouched():
    tokenizer = build_demo_tokenizer()
    before = tokenizer(TEXTS, padding=True)
    encode_texts(tokenizer, TEXTS, max_length=5)  # its private copy truncates; the tokenizer doesn't
    assert tokenizer(TEXTS, padding=True) == before


@pytest.mark.skipif(not (SHARED_DATA.is_dir() and MINILM.is_dir()), reason="needs ../shared data and model")
@pytest.mark.parametrize("task", ["rte", "stsb"])
def test_real_pairs_with_the_pretrained_tokenizer(task):
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    split = read_split(BUILTIN_TASKS[task], "dev", str(SHARED_DATA))
    columns = split.columns
    firsts, seconds = list(columns["text_a"])[:500], list(columns["text_b"])[:500]
    for max_length in (128, 32):
        assert encode_texts(tokenizer, firsts, seconds, max_length) == expected(tokenizer, firsts, seconds,
                                                                                max_length)
