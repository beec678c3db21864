"""A run's identity: the settings that define its result, a fingerprint of its data, and a run id.

`OUTPUT_DIR/run.json` (and, with JOB_DIR, `run.json` beside the bucket's checkpoints) records which run a
directory belongs to. Only what changes the trained model counts: the model, the tasks as declared, the seed,
sampling and loss weighting, batch size, sequence length, the training-sample cap and the rows themselves; the
adapter mode and its LoRA settings, and the base (MODEL_NAME and a fingerprint of its weights,
`trainer.model.base_record`): an adapter checkpoint holds no base, so it resumes only on the very same one.
Schedule and bookkeeping settings (MAX_STEPS, LEARNING_RATE, SAVE_STEPS, ...) may change on resume.

The data fingerprint hashes the rows each split reads (after MAX_TRAIN_SAMPLES/MAX_EVAL_SAMPLES), not file
names or mtimes: a restarted Vertex AI worker that fetched the same data again has new mtimes, and a hub
source has no file at all. This module is local only; `trainer/run_claim.py` reads and writes the bucket's copy.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config.settings import Settings
from trainer.files import write_text_atomically
from trainer.layout import RUN_FILE, RunDirs
from trainer.model.modeling import MULTITASK_FILE
from trainer.tasks.spec import TaskData, TaskSpec

FORMAT = 1
_LOCATIONS = ("train_file", "dev_file", "test_file", "train_labels_file", "dev_labels_file",  # where the data
              "test_labels_file")  # lives: its content is in `data`


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    created: str
    defines: dict[str, Any] = field(hash=False)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "run_id": self.run_id, "created": self.created,
                           "defines": self.defines}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> RunIdentity:
        try:
            raw = json.loads(text)
            return cls(str(raw["run_id"]), str(raw.get("created", "?")), dict(raw["defines"]))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{where} is not a run identity ({type(err).__name__}: {err})") from None

    def with_run(self, other: RunIdentity) -> RunIdentity:
        """These settings under `other`'s run id (continuing that run)."""
        return RunIdentity(other.run_id, other.created, self.defines)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_fingerprint(rows: dict[str, dict[str, TaskData]]) -> dict[str, str]:
    """`task/split` -> a hash of the rows that split trains or evaluates on."""
    return {f"{task}/{split}": _split_digest(data) for task, splits in rows.items() for split, data in splits.items()}


def _split_digest(data: TaskData) -> str:
    """A local file's split is an Arrow dataset whose fingerprint already hashes its bytes (and the caps' row
    selection): no need to read it into memory again; rows held in lists (hub sources) are hashed."""
    if data.dataset is not None:
        return data.dataset._fingerprint
    return _digest(data.columns)


def defining_settings(settings: Settings, tasks: list[TaskSpec], rows: dict[str, dict[str, TaskData]],
                      base: dict[str, Any] | None = None) -> dict:
    """What makes two runs the same run: resuming with any of these changed would train another model.
    `base`: the loaded base's `BaseRecord.identity()`."""
    specs = {t.name: {k: v for k, v in t.to_dict().items() if k not in _LOCATIONS} for t in tasks}
    defines: dict[str, Any] = {
        "model_name": settings.model_name,
        "tasks": [t.name for t in tasks],
        "task_specs": json.loads(json.dumps(specs, default=str)),
        "seed": settings.seed,
        "sampling": settings.sampling,
        "task_weighting": settings.task_weighting,
        "task_weights": dict(settings.task_weights),
        "batch_size": settings.batch_size,
        "max_seq_length": settings.max_seq_length,
        "max_train_samples": settings.max_train_samples,
        "group_by_length": settings.group_by_length,
        "data": data_fingerprint(rows),
        "adapter": settings.adapter,
    }
    if base is not None:
        defines["base"] = base
    if settings.adapter != "none":
        defines.update(lora_r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                       lora_target_modules=list(settings.lora_target_modules or []))
    if settings.sampling == "temperature":
        defines["sampling_temperature"] = settings.sampling_temperature
    if settings.sampling_cap is not None:  # recorded only when set: a run from before SAMPLING_CAP had none
        defines["sampling_cap"] = settings.sampling_cap
    if settings.task_weighting == "uncertainty":
        defines["task_weighting_lr"] = settings.task_weighting_lr
    return defines


def new_identity(defines: dict[str, Any]) -> RunIdentity:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return RunIdentity(secrets.token_hex(4), created, defines)


def _short(value: Any) -> str:
    if isinstance(value, list):
        value = ",".join(map(str, value))
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 100 else text[:97] + "..."


# Fields a run identity got later, and what one written before them means: a run without `adapter` trained in full.
_ADDED_LATER = {"adapter": "none"}


def _base_differs(theirs: dict[str, Any], ours: dict[str, Any]) -> str | None:
    """The base line, when the bases differ and it matters: only an adapter checkpoint is tied to its base (a full
    one holds every weight); one not recorded (an older run) can't be checked."""
    a, b = theirs.get("base"), ours.get("base")
    if not isinstance(a, dict) or not isinstance(b, dict) or a.get("weights") == b.get("weights"):
        return None
    if theirs.get("adapter", "none") == "none" and ours.get("adapter", "none") == "none":
        return None
    return (f"the base differs: MODEL_NAME={a.get('model_name')} (weights {a.get('weights')}) -> "
            f"MODEL_NAME={b.get('model_name')} (weights {b.get('weights')})")


def differences(theirs: dict[str, Any], ours: dict[str, Any], limit: int = 4) -> list[str]:
    """Short lines naming what differs, e.g. `SEED 1 -> 2` or `data of rte/train changed`."""
    found = []
    base = _base_differs(theirs, ours)
    if base:
        found.append(base)
    for key in sorted(set(theirs) | set(ours), key=lambda k: (k == "data", k)):  # settings first: they explain data
        a, b = theirs.get(key, _ADDED_LATER.get(key)), ours.get(key, _ADDED_LATER.get(key))
        if a == b or key == "base" or (key == "model_name" and base):
            continue
        if key.startswith("lora_") and "ADAPTER" in " ".join(found):  # the adapter's own settings follow from it
            continue
        if key == "data" and isinstance(a, dict) and isinstance(b, dict):
            found += [f"data of {part} changed" for part in sorted(set(a) | set(b)) if a.get(part) != b.get(part)
                      and part.split("/")[0] in set(ours.get("tasks", [])) & set(theirs.get("tasks", []))]
        elif key == "task_specs" and isinstance(a, dict) and isinstance(b, dict):
            found += [f"task {name}'s declaration changed" for name in sorted(set(a) & set(b)) if a[name] != b[name]]
        else:
            found.append(f"{key.upper()} {_short(a)} -> {_short(b)}")
    if len(found) > limit:
        found = found[:limit] + [f"{len(found) - limit} more"]
    return found


def read_local(output_dir: str | Path) -> RunIdentity | None:
    """The identity recorded in OUTPUT_DIR, or None (a new directory, or one written before run identities)."""
    path = RunDirs(output_dir).run_file
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return RunIdentity.from_json(text, str(path))


def write_local(output_dir: str | Path, identity: RunIdentity) -> None:
    write_text_atomically(RunDirs(output_dir).run_file, identity.to_json())


LEGACY_RUN = "without an id"  # the run id of what a checkpoint from before run identities records (tasks, weighting)


def read_checkpoint(checkpoint: str | Path) -> RunIdentity | None:
    """What a checkpoint records of the run that wrote it: its own copy of `run.json` (written into every
    checkpoint at save), else what its multitask.json says (a checkpoint from before run identities: its task
    set and loss weighting, under the run id LEGACY_RUN); None when it records neither."""
    directory = Path(checkpoint)
    try:
        return RunIdentity.from_json((directory / RUN_FILE).read_text(encoding="utf-8"), str(directory / RUN_FILE))
    except (OSError, ValueError):
        pass
    try:
        payload = json.loads((directory / MULTITASK_FILE).read_text(encoding="utf-8"))
        defines = {"tasks": [t["name"] for t in payload["tasks"]],
                   "task_weighting": payload.get("task_weighting", "static")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return RunIdentity(LEGACY_RUN, "?", defines)
