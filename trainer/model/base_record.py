"""Which base a model was built on: MODEL_NAME and a fingerprint of its weights.

With an adapter, checkpoints hold only what trains (`modeling.MultitaskModel.state_dict`): the frozen base is
loaded again from MODEL_NAME on resume and by `MultitaskModel.from_checkpoint`. A checkpoint is only right on
the very base it was trained on, and a MODEL_NAME (a local folder, a hub id whose revision moved) can come to
hold other weights; so the run identity and `multitask.json` record a fingerprint, and a base that differs is
refused instead of silently giving another model.

The fingerprint reads little: per weights file, its size and a sha256 of its first and last MB (a 16 GB base is
fingerprinted in milliseconds; a changed file changes its header, which lists every tensor's offsets, or its
size). The offline demo base is built in memory, so its tensors are hashed (it is tiny).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.config.settings import DEMO_MODEL
from trainer.errors import UserError
from trainer.model.loading import load_encoder

_EDGE = 1 << 20  # bytes read at each end of a weights file


def _is_weights(name: str) -> bool:
    """A weights file of a model folder (not its training_args.bin or tokenizer): safetensors, PyTorch's
    pytorch_model*.bin, gguf."""
    return name.endswith((".safetensors", ".gguf")) or (name.startswith("pytorch_model") and name.endswith(".bin"))


def _short_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def file_fingerprint(path: Path) -> dict[str, Any]:
    """A weights file's size and the sha256 of its first and last MB (the whole file when it is smaller)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(_EDGE))
        if size > _EDGE:
            f.seek(max(_EDGE, size - _EDGE))
            digest.update(f.read(_EDGE))
    return {"size": size, "sha256": digest.hexdigest()}


def tensors_fingerprint(module: nn.Module) -> str:
    """A sha256 of every parameter and buffer of an in-memory base, by name (the demo's)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_files(model_name: str) -> dict[str, Path]:
    """MODEL_NAME's weights files by name: a local folder's, else the hub cache's snapshot (no network)."""
    folder = Path(model_name)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model_name, local_files_only=True))
        except Exception:  # not cached, or not a repo id: fingerprint the tensors instead
            return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and _is_weights(p.name)}


@dataclass(frozen=True)
class BaseRecord:
    """MODEL_NAME, the fingerprint of its weights, and (for the demo, built from random numbers) the seed it was
    built with; `path`: a local MODEL_NAME's absolute folder, so that `predict` run from another folder finds it.
    `weights` is one short digest of the fingerprint, the part shown in messages."""

    model_name: str
    fingerprint: dict[str, Any]
    seed: int | None = None
    path: str | None = None

    @property
    def weights(self) -> str:
        return _short_digest(self.fingerprint)

    def describe(self) -> str:
        """`MODEL_NAME=<name> (weights <digest>)`: how a base is named in a message."""
        return f"MODEL_NAME={self.model_name} (weights {self.weights})"

    def identity(self) -> dict[str, Any]:
        """What the run identity records (`run.json`'s `base`)."""
        return {"model_name": self.model_name, "weights": self.weights, **self.fingerprint}

    def to_dict(self) -> dict[str, Any]:
        """What `multitask.json` records to load the base again."""
        return {"model_name": self.model_name, "path": self.path, "seed": self.seed, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BaseRecord:
        return cls(str(raw["model_name"]), dict(raw["fingerprint"]), raw.get("seed"), raw.get("path"))


def record_base(model_name: str, encoder: nn.Module, seed: int | None = None) -> BaseRecord:
    """The record of a freshly loaded base (before it trains): its files' fingerprint, else its tensors'."""
    files = {} if model_name == DEMO_MODEL else weights_files(model_name)
    if files:
        fingerprint: dict[str, Any] = {"files": {name: file_fingerprint(p) for name, p in files.items()}}
    else:
        fingerprint = {"tensors": tensors_fingerprint(encoder)}
    path = str(Path(model_name).resolve()) if model_name != DEMO_MODEL and Path(model_name).is_dir() else None
    return BaseRecord(model_name, fingerprint, seed if model_name == DEMO_MODEL else None, path)


def same_base(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Two recorded bases (`BaseRecord.identity()`) are the same; one not recorded (an older run) counts as the
    same, as nothing can be checked."""
    return a is None or b is None or a.get("weights") == b.get("weights")



def load_base(record: BaseRecord, what: str) -> nn.Module:
    """Load the base a record names again (the demo's with its seed), and check it is the recorded one: a
    checkpoint's adapters and heads are only right on that base. `what` names it in the refusal."""
    name = record.path if record.path and Path(record.path).is_dir() else record.model_name
    with torch.random.fork_rng():
        if record.seed is not None:
            torch.manual_seed(record.seed)
        _, encoder = load_encoder(name)
    found = record_base(name, encoder, record.seed)
    if found.weights != record.weights:
        raise UserError(f"{what} is {record.describe()}, but MODEL_NAME={record.model_name} now has weights "
                        f"{found.weights}: adapters and heads are only right on the base they were trained on")
    return encoder
