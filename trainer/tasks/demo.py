"""The offline demo: templated data for three tasks and a tiny encoder built from scratch.

Nothing here touches the network, so `make run-local` works on a fresh machine.
The data is generated from a fixed seed, so every run sees the same examples.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from typing import Any

from tokenizers import normalizers, pre_tokenizers
from transformers import BertConfig, BertModel, BertTokenizer, PreTrainedModel, PreTrainedTokenizerBase

SPLIT_SIZES = {"train": 4000, "dev": 300}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB_SIZE = 400  # at most; the demo corpus needs fewer

_POSITIVE = ["good", "great", "wonderful", "brilliant", "lovely", "superb", "charming", "delightful", "fun", "moving"]
_NEGATIVE = ["bad", "awful", "boring", "terrible", "dull", "poor", "weak", "clumsy", "tedious", "painful"]
_THINGS = ["movie", "film", "plot", "story", "cast", "ending", "script", "show", "music", "acting"]
_ADVERBS = ["really", "very", "quite", "truly", "rather", "so", "pretty", "simply"]
_SENTIMENT_TEMPLATES = [
    "the {thing} was {adv} {adj}",
    "i thought the {thing} was {adj}",
    "what a {adj} {thing}",
    "honestly , the {thing} is {adv} {adj} .",
    "a {adv} {adj} {thing} overall",
]

_SIZES = ["small", "big", "tiny", "huge", "tall", "short"]
_COLORS = ["red", "blue", "green", "black", "white", "yellow"]
_ANIMALS = ["dog", "cat", "horse", "bird", "fox", "rabbit"]
_ACTIONS = ["runs", "sleeps", "jumps", "eats", "sits", "swims"]

_CATEGORIES = {
    "color": ["red", "blue", "green", "purple", "orange", "pink", "brown", "grey"],
    "animal": ["dog", "cat", "horse", "mouse", "lion", "tiger", "sheep", "goat"],
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"],
    "vehicle": ["car", "bus", "train", "truck", "bike", "boat", "plane", "tram"],
    "tool": ["hammer", "saw", "drill", "wrench", "shovel", "rake", "chisel", "pliers"],
}
_QUESTIONS = ["which word is a {cat} ?", "pick the {cat} .", "one of these is a {cat} : which ?"]
NUM_CHOICES = 4


def _sentiment(rng: random.Random) -> dict[str, Any]:
    positive = rng.random() < 0.5
    words = _POSITIVE if positive else _NEGATIVE
    text = rng.choice(_SENTIMENT_TEMPLATES).format(
        thing=rng.choice(_THINGS), adv=rng.choice(_ADVERBS), adj=rng.choice(words)
    )
    return {"text_a": text, "text_b": "", "label": int(positive)}


def _similarity(rng: random.Random) -> dict[str, Any]:
    """Two descriptions; the score (0-5) is the share of the four attributes they have in common."""
    pools = [_SIZES, _COLORS, _ANIMALS, _ACTIONS]
    first = [rng.choice(pool) for pool in pools]
    shared = rng.randint(0, 4)
    keep = set(rng.sample(range(4), shared))
    second = [
        first[i] if i in keep else rng.choice([w for w in pools[i] if w != first[i]]) for i in range(4)
    ]

    def describe(attrs: list[str]) -> str:
        size, color, animal, action = attrs
        return f"the {size} {color} {animal} {action}"

    return {"text_a": describe(first), "text_b": describe(second), "label": 5.0 * shared / 4}


def _category(rng: random.Random) -> dict[str, Any]:
    cat, *others = rng.sample(sorted(_CATEGORIES), NUM_CHOICES)
    answer = rng.randrange(NUM_CHOICES)
    distractors = [rng.choice(_CATEGORIES[o]) for o in others]
    choices = distractors[:answer] + [rng.choice(_CATEGORIES[cat])] + distractors[answer:]
    return {"text_a": rng.choice(_QUESTIONS).format(cat=cat), "text_b": "", "choices": choices, "label": answer}


GENERATORS = {"demo_sentiment": _sentiment, "demo_similarity": _similarity, "demo_category": _category}


def demo_columns(task_name: str, split: str) -> dict[str, list[Any]]:
    """Column-wise rows of one demo split (deterministic per task and split)."""
    rng = random.Random(f"{task_name}/{split}")
    rows = [GENERATORS[task_name](rng) for _ in range(SPLIT_SIZES[split])]
    return {key: [row[key] for row in rows] for key in rows[0]}


def _corpus() -> list[str]:
    texts = []
    for name in GENERATORS:
        for split in SPLIT_SIZES:
            cols = demo_columns(name, split)
            texts += cols["text_a"] + cols["text_b"]
            texts += [" ".join(c) for c in cols.get("choices", [])]
    return [t for t in texts if t]


def build_demo_tokenizer() -> PreTrainedTokenizerBase:
    """A WordPiece vocabulary of the demo corpus, wrapped as a BERT tokenizer: the special tokens, every
    character alone and as a continuation (`##c`, so any word of these letters can be spelled), then the
    corpus' words, most frequent first, ties in alphabetical order.

    Counted, not trained: the `tokenizers` WordPiece trainer breaks ties in hash-map order, which differs
    between processes, so two processes got different ids. This vocabulary is the same everywhere.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in _corpus()
                     for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted(set(string.ascii_lowercase + string.digits) | {char for word in counts for char in word})
    words = sorted((w for w in counts if w not in chars), key=lambda w: (-counts[w], w))
    tokens = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars), *words][:VOCAB_SIZE]
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}, model_max_length=128)


def build_demo_encoder(vocab_size: int) -> PreTrainedModel:
    """A 2-layer, 64-wide BERT with random weights (seed it before calling)."""
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertModel(config)
