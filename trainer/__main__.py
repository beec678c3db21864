"""`python -m trainer <command>`: a thin fire CLI over the package.

Settings come from the environment and `.env`; flags such as `--batch_size=16` override both.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import fire

from trainer.env import load_dotenv
from trainer.errors import UserError, exit_on_user_error
from trainer.settings import Settings, describe, load_settings

_REAL_ENV: dict[str, str] = dict(os.environ)  # before .env is loaded: tells 'env' from '.env'


def _settings(flags: dict[str, Any]) -> tuple[Settings, dict[str, str]]:
    return load_settings(flags, environ=_REAL_ENV, dotenv_path=".env")


def _setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class CLI:
    """Multitask NLP trainer. Commands: train, tasks, settings, predict, export, launch, job-spec, create-bucket."""

    def train(self, **flags: Any) -> None:
        """Train on TASKS; writes checkpoints, OUTPUT_DIR/model, OUTPUT_DIR/export and metrics.json."""
        settings, _ = _settings(flags)
        _setup_logging()
        from trainer.checkpoint_sync import CheckpointUploadError
        from trainer.preemption import EXIT_PREEMPTED
        from trainer.train import Preempted, train

        try:
            train(settings)
        except Preempted as stop:
            print(f"preempted: {stop}", file=sys.stderr, flush=True)
            sys.exit(EXIT_PREEMPTED)
        except CheckpointUploadError as err:
            print(f"error: upload to the bucket failed: {err}", file=sys.stderr, flush=True)
            sys.exit(1)

    def launch(self) -> None:
        """Start training: one process, torchrun over local GPUs, or torchrun across Vertex AI nodes."""
        from trainer.launcher import launch

        sys.exit(launch([]))

    def job_spec(self, output: str | None = None) -> None:
        """Print the Vertex AI CustomJobSpec YAML, or write it to --output."""
        from trainer.job_spec import write_job_spec

        write_job_spec(output)

    def create_bucket(self) -> None:
        """Create BUCKET_NAME in REGION for PROJECT_ID, set up for checkpoints (idempotent)."""
        from trainer.bucket import create_bucket_command

        sys.exit(create_bucket_command())

    def tasks(self) -> None:
        """List the built-in tasks, and every task kind with its TASKS_FILE fields."""
        from trainer.tasks import describe_tasks

        print(describe_tasks())

    def settings(self, **flags: Any) -> None:
        """Print the effective settings and where each one came from."""
        print(describe(*_settings(flags)))

    def predict(
        self,
        task: str,
        text: Any,
        text_pair: Any = None,
        choices: Any = None,
        model_dir: str | None = None,
        **flags: Any,
    ) -> None:
        """Predict TASK for --text (a string or a list); --text_pair for pairs, --choices for multiple choice.

        Loads OUTPUT_DIR/model (or --model_dir) and prints one JSON line per input.
        """
        from trainer.inference import find_model_dir, load_trained, predict

        settings, _ = _settings(flags)
        texts = _as_list(text)
        pairs = _as_list(text_pair) if text_pair is not None else None
        if pairs is not None and len(pairs) != len(texts):
            raise UserError(f"--text has {len(texts)} item(s) but --text_pair has {len(pairs)}; give one per text")
        options = [_as_list(choices)] * len(texts) if choices is not None else None
        model, tokenizer = load_trained(find_model_dir(settings.output_dir, model_dir))
        for result in predict(model, tokenizer, task, texts, pairs, options, settings.max_seq_length):
            print(json.dumps(result))

    def export(self, model_dir: str | None = None, export_dir: str | None = None, **flags: Any) -> None:
        """Write one standalone Transformers directory per task (default OUTPUT_DIR/export)."""
        from trainer.inference import EXPORT_DIR, export_tasks, find_model_dir, load_trained

        settings, _ = _settings(flags)
        model, tokenizer = load_trained(find_model_dir(settings.output_dir, model_dir))
        for path in export_tasks(model, tokenizer, export_dir or os.path.join(settings.output_dir, EXPORT_DIR)):
            print(path)


def _as_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    _REAL_ENV.clear()
    _REAL_ENV.update(os.environ)
    load_dotenv(".env")  # also for libraries: credentials, STORAGE_EMULATOR_HOST, HF_TOKEN
    args = list(argv if argv is not None else sys.argv[1:])
    if args[:1] == ["launch"]:  # train flags after `launch` pass through to `train` untouched
        from trainer.launcher import launch

        sys.exit(launch(args[1:]))
    fire.Fire(CLI, command=args, name="trainer")


if __name__ == "__main__":
    main()
