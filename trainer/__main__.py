"""`python -m trainer <command>`: a thin fire CLI over the package.

Settings come from the environment and `.env`; flags such as `--batch_size=16` override both.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import fire

from trainer.config.env import CLOUD_ENV_NAMES, OTHER_ENV_NAMES, env_file, load_dotenv, misspelt_names
from trainer.config.settings import FIELDS, Settings, describe, load_settings
from trainer.errors import EXIT_USER_ERROR, UserError, exit_on_user_error

_REAL_ENV: dict[str, str] = dict(os.environ)  # before .env is loaded: tells 'env' from '.env'


def _settings(flags: dict[str, Any]) -> tuple[Settings, dict[str, str]]:
    return load_settings(flags, environ=_REAL_ENV, dotenv_path=env_file(_REAL_ENV))


def _setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock", "tensorboard"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _quiet_model_loading() -> None:
    """No "Loading weights" bar on stderr when a saved model loads: predictions and one-line errors stay clean."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _flag_value(raw: str) -> Any:
    """fire's parsing of a flag value, except that a value its parser can't take (a 3,000-word text makes Python's
    parser run out of memory) stays the string it is."""
    try:
        return fire.parser.DefaultParseValue(raw)
    except (MemoryError, RecursionError):
        return raw


def _text_flag(raw: str) -> Any:
    """--text/--text_pair: the string as given ("hello, world" is one text, "1e5" stays "1e5"); only a '[...]'
    list is parsed, as JSON or as fire reads lists."""
    if not (raw.strip().startswith("[") and raw.strip().endswith("]")):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return _flag_value(raw)


class CLI:
    """Multitask NLP trainer: python -m trainer COMMAND --help shows a command's flags."""

    def train(self, **flags: Any) -> None:
        """Train on TASKS; writes checkpoints, OUTPUT_DIR/model, OUTPUT_DIR/export and metrics.json."""
        settings, _ = _settings(flags)
        _setup_logging()
        from trainer.checkpoints.mirror import CheckpointUploadError
        from trainer.train import train
        from trainer.training.preemption import EXIT_PREEMPTED, Preempted

        try:
            train(settings)
        except Preempted as stop:
            print(f"preempted: {stop}", file=sys.stderr, flush=True)
            # the interpreter's last garbage collection over torch and transformers takes seconds on a busy
            # CPU (5-7 s measured at load 12 on 2 cores), which the 30 s grace doesn't have: skip it
            gc.freeze()
            sys.exit(EXIT_PREEMPTED)
        except CheckpointUploadError as err:
            print(f"error: upload to the bucket failed: {err}", file=sys.stderr, flush=True)
            sys.exit(1)

    def job_spec(self, output: str | None = None) -> None:
        """Print the Vertex AI CustomJobSpec YAML, or write it to --output."""
        from trainer.cloud.job_spec import write_job_spec

        write_job_spec(output)

    def create_bucket(self) -> None:
        """Create BUCKET_NAME in REGION for PROJECT_ID, set up for checkpoints (idempotent)."""
        from trainer.cloud.bucket import create_bucket_command

        sys.exit(create_bucket_command())

    def cloud_train(self, check: Any = False) -> None:
        """Submit a Vertex AI custom job: render the job spec into .make/job-spec.yaml, send it with gcloud.

        Settings: the Cloud section of .env.example (make cloud-train builds and pushes the image first).
        --check: check every setting, send nothing.
        """
        from trainer.cloud.gcloud import train
        from trainer.config.env import parse_bool

        sys.exit(train(os.environ, check_only=parse_bool("--check", check)))

    def cloud_status(self) -> None:
        """State of the Vertex AI job cloud-train last submitted from here (or JOB_ID)."""
        from trainer.cloud.gcloud import status

        sys.exit(status(os.environ))

    def cloud_logs(self) -> None:
        """Stream the logs of the Vertex AI job cloud-train last submitted from here (or JOB_ID)."""
        from trainer.cloud.gcloud import logs

        sys.exit(logs(os.environ))

    def tasks(self) -> None:
        """List the built-in tasks, and every task kind with its TASKS_FILE fields."""
        from trainer.tasks.declare import describe_tasks

        print(describe_tasks())

    def settings(self, **flags: Any) -> None:
        """Print the effective settings and where each one came from; TASKS_FILE and TASKS are validated too."""
        from trainer.tasks.declare import describe_choice, resolve_tasks

        settings, sources = _settings(flags)
        tasks = resolve_tasks(settings.tasks, settings.tasks_file, settings.task_weights)
        print(describe(settings, sources))
        print(describe_choice(tasks, settings.tasks, settings.tasks_file))

    def check(self, **flags: Any) -> None:
        """Read and validate every task's data as training would, with token length statistics; writes nothing."""
        from trainer.check import check

        print(check(_settings(flags)[0]))

    @fire.decorators.SetParseFns(text=_text_flag, text_pair=_text_flag, choices=_flag_value, context=_text_flag)
    def predict(
        self,
        task: str,
        text: Any = None,
        text_pair: Any = None,
        choices: Any = None,
        context: Any = None,
        model_dir: str | None = None,
        **flags: Any,
    ) -> None:
        """Predict TASK for --text and print one JSON line per input, echoing it.

        --text is a string (taken as it is), a list ('["a", "b"]'), or '-' to read stdin: one text per line, or
        JSON lines with "text", "text_pair", "choices" and "context" (long texts: use stdin). --choices is for
        multiple choice; --context is the passage a question answering task's --text asks about. --model_dir
        takes an OUTPUT_DIR, a model or checkpoint, or export/<task>.
        """
        from trainer.outputs.inference import load_task_model, predict_inputs

        if text is None:
            raise UserError("predict needs --text: a text, a list of texts ('[\"a\", \"b\"]'), or - to read stdin")
        settings, _ = _settings(flags)
        _quiet_model_loading()
        spec, model, tokenizer = load_task_model(settings.output_dir, model_dir, task, settings.max_seq_length)
        for chunk in _chunks(_predict_inputs(text, text_pair, choices, context), 64):  # stdin streams: flat memory
            for result in predict_inputs(spec, model, tokenizer, chunk, settings.max_seq_length):
                print(json.dumps(result, ensure_ascii=False), flush=True)

    def predict_file(self, task: str, input: str, output: str, model_dir: str | None = None, **flags: Any) -> None:
        """Predict every row of --input (the task's own file format, labels optional) into a TSV at --output.

        The TSV has a header, then per row its index (the file's index/idx column, else the row number) and the
        prediction (classification and multiple choice: the label and its probability; regression: the value;
        token classification: the tags). Rows stream in batches; nothing is left behind on failure.
        """
        from trainer.outputs.inference import load_task_model, predict_file

        settings, _ = _settings(flags)
        _quiet_model_loading()
        spec, model, tokenizer = load_task_model(settings.output_dir, model_dir, task, settings.max_seq_length)
        count = predict_file(spec, model, tokenizer, str(input), str(output), settings.max_seq_length)
        print(f"{count} predictions -> {output}")

    def evaluate(self, split: str = "test", model_dir: str | None = None, **flags: Any) -> None:
        """Score each task of a trained run on its test (or dev) split; writes OUTPUT_DIR/metrics_<split>.json.

        The models are OUTPUT_DIR/export/<task> (or --model_dir's); TASKS picks some of them. A split without
        labels (GLUE's test splits) is refused before anything is scored.
        """
        from trainer.evaluate import describe_report, evaluate, metrics_path

        settings, _ = _settings(flags)
        _quiet_model_loading()
        report = evaluate(settings, str(split), model_dir)
        print(describe_report(report, metrics_path(settings.output_dir, report["split"])))

    def report(self, output: str | None = None, **flags: Any) -> None:
        """Rebuild OUTPUT_DIR/report.html from a run's logs, finished or still running; with JOB_DIR, the bucket's.

        The report holds the dev metric, training loss and learning rate curves, the final metrics (once the run
        has written metrics.json) and the settings, in one self-contained HTML file.
        """
        from trainer.outputs.report import rebuild_report

        print(f"report -> {rebuild_report(_settings(flags)[0], None if output is None else str(output))}")

    def export(self, model_dir: str | None = None, export_dir: str | None = None, **flags: Any) -> None:
        """Write one standalone Transformers directory per task (default OUTPUT_DIR/export), each with its model card.

        The cards carry the dev metrics of the exported step when the run's metrics.json is beside the model.
        """
        from pathlib import Path

        from trainer.files import check_writable_dir
        from trainer.layout import EXPORT_WHAT, RunDirs
        from trainer.outputs.export import check_export_target, export_tasks, run_outputs
        from trainer.outputs.export_form import export_merged
        from trainer.outputs.inference import find_model_dir, load_trained
        from trainer.outputs.model_card import run_metrics_of, write_cards

        settings, _ = _settings(flags)
        directory = find_model_dir(settings.output_dir, model_dir)
        target = Path(export_dir) if export_dir else RunDirs(settings.output_dir).export
        what = "--export_dir" if export_dir else EXPORT_WHAT
        check_writable_dir(target, what)
        keep = run_outputs(settings.output_dir, settings.effective_log_dir, directory)
        check_export_target(target, what, settings.output_dir, keep)  # before the model is loaded
        model, tokenizer = load_trained(directory)
        merged = export_merged(settings.export_merged, model)
        paths = export_tasks(model, tokenizer, str(target), what=what, output_dir=settings.output_dir, keep=keep,
                             merged=merged)
        tasks = list(model.tasks.values())
        run_metrics, step = run_metrics_of(directory, tasks)
        write_cards(target, tasks, run_metrics, run_metrics.settings if run_metrics else None, step)
        for path in paths:
            print(path)
        if run_metrics is None:
            print(f"note: no metrics.json beside {directory}: the model cards have no metrics", file=sys.stderr)

    def push(self, task: str, repo_id: str, private: Any = False, model_dir: str | None = None, **flags: Any) -> None:
        """Upload OUTPUT_DIR/export/TASK (model, tokenizer, model card) to the Hugging Face Hub repo --repo_id.

        The repo is created if needed (--private for a private one). The token is HF_TOKEN, else the one
        `hf auth login` stored; HF_ENDPOINT selects another Hub endpoint.
        """
        from trainer.config.env import parse_bool
        from trainer.outputs.hub import push

        settings, _ = _settings(flags)
        url, files = push(settings.output_dir, str(task), str(repo_id), parse_bool("--private", private), model_dir)
        print(f"pushed {task} ({len(files)} files: {', '.join(files)}) -> {url}")


def _as_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _predict_inputs(text: Any, text_pair: Any, choices: Any, context: Any = None) -> Iterator[dict[str, Any]]:
    """`{"text", "text_pair", "choices", "context"}` per input, from the flags or (for --text=-) from stdin."""
    shared_choices = _as_list(choices) if choices is not None else None
    if text == "-":
        for lineno, line in _stdin_lines():
            if not line.strip():
                continue
            if not line.lstrip().startswith("{"):
                yield {"text": line.rstrip("\r\n"), "text_pair": None, "choices": shared_choices,
                       "context": context}
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"stdin line {lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise UserError(f"stdin line {lineno}: a JSON line needs a \"text\" string (and optionally "
                                "\"text_pair\", \"choices\", \"context\")")
            if any("\0" in str(row.get(key) or "") for key in ("text", "text_pair", "context")):
                raise UserError(f"stdin line {lineno}: a text contains a NUL character; remove it")
            yield {"text": row["text"], "text_pair": row.get("text_pair"),
                   "choices": row.get("choices", shared_choices), "context": row.get("context", context)}
        return
    texts = _as_list(text)
    pairs = _as_list(text_pair) if text_pair is not None else None
    if pairs is not None and len(pairs) != len(texts):
        raise UserError(f"--text has {len(texts)} item(s) but --text_pair has {len(pairs)}; give one per text")
    for i, item in enumerate(texts):
        yield {"text": item, "text_pair": pairs[i] if pairs else None, "choices": shared_choices, "context": context}


def _stdin_lines() -> Iterator[tuple[int, str]]:
    """stdin's lines, numbered, each checked: binary data (bytes that are not UTF-8, or a NUL) is one line naming
    where it is, not a traceback or a text the tokenizer silently mangles."""
    for lineno, raw in enumerate(sys.stdin.buffer, 1):
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"stdin line {lineno}: not valid UTF-8 ({err.reason}, byte {raw[err.start:err.start + 1]!r}"
                            "); predict reads UTF-8 text, one text or JSON line per line") from None
        if "\0" in line:
            raise UserError(f"stdin line {lineno}: contains a NUL byte (binary data?); predict reads UTF-8 text, "
                            "one text or JSON line per line")
        yield lineno, line


def _chunks(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---- --help ----------------------------------------------------------------------------------------

_OWN_FLAGS = {
    "predict": {"task": "the task to predict (required)",
                "text": "a text, a list of texts ('[\"a\", \"b\"]'), or - for stdin (one text or JSON line per line; "
                        "use it for long texts)",
                "text_pair": "the second text of a pair task", "choices": "candidate answers (multiple choice only)",
                "context": "the passage --text asks about (question answering only)",
                "model_dir": "an OUTPUT_DIR, a model or checkpoint directory, or export/<task>"},
    "predict-file": {"task": "the task to predict (required)",
                     "input": "a file in the task's format: csv/tsv/jsonl/conll/... as its kind reads (required)",
                     "output": "the TSV to write: index, prediction (required)",
                     "model_dir": "an OUTPUT_DIR, a model or checkpoint directory, or export/<task> "
                                  "(default OUTPUT_DIR/export/<task>)"},
    "evaluate": {"split": "test (default) or dev",
                 "model_dir": "an OUTPUT_DIR, its export/ or an export/<task> (default OUTPUT_DIR)"},
    "export": {"model_dir": "an OUTPUT_DIR, a model or a checkpoint (default OUTPUT_DIR)",
               "export_dir": "where to write (default OUTPUT_DIR/export)"},
    "push": {"task": "the task whose export to upload (required)",
             "repo_id": "the Hub repo, ORG/NAME or NAME (required; created if missing)",
             "private": "create the repo private (an existing repo keeps its visibility)",
             "model_dir": "an export/<task> directory, an export/ or an OUTPUT_DIR (default OUTPUT_DIR/export)"},
    "job-spec": {"output": "write the YAML here instead of printing it"},
    "report": {"output": "the HTML file to write (default OUTPUT_DIR/report.html)"},
    "cloud-train": {"check": "check every setting and send nothing"},
}
_TAKES_SETTINGS = ("train", "launch", "settings", "check", "predict", "predict-file", "evaluate", "export",
                   "report", "push")
_COMMANDS = ("train", "launch", "check", "settings", "tasks", "predict", "predict-file", "evaluate", "export",
             "report", "push", "job-spec", "create-bucket", "cloud-train", "cloud-status", "cloud-logs")


def help_text(command: str | None) -> str:
    """--help of the CLI or of one command: its own flags, then the settings it reads (env name, default)."""
    command = command.replace("_", "-") if command else None
    if command not in _COMMANDS:
        lines = ["usage: python -m trainer COMMAND [--flag=value ...]   (python -m trainer COMMAND --help)", "",
                 "commands:"]
        for name in _COMMANDS:
            doc = "flags after it go to train: python -m trainer launch [train flags]" if name == "launch" else \
                (getattr(CLI, name.replace("-", "_")).__doc__ or "").strip().splitlines()[0]
            lines.append(f"  {name:<14} {doc}")
        return "\n".join(lines)
    method = getattr(CLI, command.replace("-", "_"), None) or CLI.train
    doc = "Start training: one process, torchrun over local GPUs, or torchrun across Vertex AI nodes." \
        if command == "launch" else inspect.cleandoc(method.__doc__ or "")
    lines = [f"usage: python -m trainer {command} [--flag=value ...]", "", doc]
    if command in _OWN_FLAGS:
        lines += ["", "flags:"] + [f"  --{name:<24} {text}" for name, text in _OWN_FLAGS[command].items()]
    if command == "create-bucket":
        lines += ["", "reads PROJECT_ID, BUCKET_NAME and REGION from the environment or .env"]
    if command in ("cloud-status", "cloud-logs"):
        lines += ["", "reads JOB_ID (else .make/last-job-id), PROJECT_ID and REGION from the environment or .env"]
    if command in _TAKES_SETTINGS:
        lines += ["", "settings (flag, or the environment variable, or .env; flags win):"]
        for name, field in FIELDS.items():
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            shown = "" if default is None else ",".join(default) if isinstance(default, tuple) else str(default)
            lines.append(f"  --{name:<24} {name.upper():<22} default {shown or '(none)'}")
            lines.append(f"      {field.metadata.get('help', '')}")
    return "\n".join(lines)

@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    _REAL_ENV.clear()
    _REAL_ENV.update(os.environ)
    load_dotenv(env_file(os.environ))  # also for libraries: credentials, STORAGE_EMULATOR_HOST, HF_TOKEN
    known = frozenset((*(name.upper() for name in FIELDS), *CLOUD_ENV_NAMES, *OTHER_ENV_NAMES))
    for warning in misspelt_names(env_file(os.environ), known):  # BACH_SIZE would be ignored without a word
        print(warning, file=sys.stderr, flush=True)
    args = list(argv if argv is not None else sys.argv[1:])
    if not args or any(a in ("--help", "-h") for a in args):
        print(help_text(args[0] if args and not args[0].startswith("-") else None))
        return
    if args[0].replace("_", "-") not in _COMMANDS:
        print(f"error: unknown command {args[0]!r}; choose one of {', '.join(_COMMANDS)} "
              "(python -m trainer --help)", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    if args[:1] == ["launch"]:  # train flags after `launch` pass through to `train` untouched
        from trainer.cloud.launcher import launch

        sys.exit(launch(args[1:]))
    fire.Fire(CLI, command=args, name="trainer")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # `... | head`: the reader is gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
