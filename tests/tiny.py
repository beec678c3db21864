"""Tiny models and helpers for tests: everything is built offline in a few milliseconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import transformers

from trainer.demo import build_demo_tokenizer

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
    full_env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES}
    full_env.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"})
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def quick_env(output_dir: Path, **extra: str) -> dict[str, str]:
    """Settings for a short demo run."""
    env = {"OUTPUT_DIR": str(output_dir), "MAX_STEPS": "12", "BATCH_SIZE": "8", "MAX_TRAIN_SAMPLES": "64",
           "MAX_EVAL_SAMPLES": "32", "LOGGING_STEPS": "4"}
    env.update(extra)
    return env


def _setting_names() -> set[str]:
    from trainer.settings import ENV_NAMES

    return set(ENV_NAMES)


_SETTING_NAMES = _setting_names()
