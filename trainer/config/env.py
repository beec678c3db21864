"""Environment values and `.env` files, parsed in one place for every command and the Makefile.

Booleans, integers and floats from the environment, `.env`, flags and TASKS_FILE fields all go
through `parse_bool`/`parse_int`/`parse_float`: an invalid value is an error naming the variable,
never a silent default. `.env` is read by `read_dotenv`, with no command or variable expansion:
a value is taken literally, `$` and all.

This module uses the standard library only, so the Makefile can run it with any `python3`
before the virtual environment exists. The Makefile never holds a `.env` value in its own text:
`python3 -m trainer.config.env get NAME` prints one effective value (the environment over ENV_FILE), which a
recipe takes as one quoted shell word, and `docker FILE` writes the docker env-file (mode 0600).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from trainer.errors import UserError

# The cloud settings job-spec reads (documented in .env.example).
CLOUD_ENV_NAMES = (
    "PROJECT_ID", "REGION", "BUCKET_NAME", "JOB_DIR", "IMAGE_REPO_NAME", "IMAGE_NAME", "IMAGE_TAG",
    "MACHINE_TYPE", "ACCELERATOR_TYPE", "ACCELERATOR_COUNT", "REPLICA_COUNT", "BOOT_DISK_TYPE",
    "BOOT_DISK_SIZE_GB", "SPOT", "JOB_TIMEOUT", "RESTART_JOB_ON_WORKER_RESTART", "SERVICE_ACCOUNT", "JOB_NAME",
)
# Other names this project reads from the environment or `.env` (the Makefile's, the launcher's, libraries' and
# Vertex AI's): with the settings and CLOUD_ENV_NAMES, the names a `.env` line may hold without a warning.
OTHER_ENV_NAMES = (
    "ENV_FILE", "JOB_ID", "SKIP_DOCKER", "BASE_IMAGE", "TORCH_INDEX_URL", "NPROC_PER_NODE", "LOCAL_IMAGE",
    "HF_TOKEN", "HF_ENDPOINT", "HF_HOME",
    "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CONFIG",
    "TRAINER_DEBUG", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "MLFLOW_TRACKING_URI", "MASTER_ADDR",
    "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "CLUSTER_SPEC",
)
# make's own variables: words for a command line, so they come from make's command line or the environment, never
# from .env (no .env value is ever part of a shell line). A .env that sets one is told so.
MAKE_ONLY_NAMES = ("DOCKER", "DOCKER_BUILD_ARGS", "DOCKER_RUN_ARGS", "DOCKER_SHM_SIZE", "TRAIN_ARGS", "PYTEST_WORKERS",
                   "PYTEST_ARGS")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise UserError(f"{name}={raw!r} is not a boolean; use true or false")


def parse_int(name: str, raw: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(raw, bool):
        raise UserError(f"{name}={raw!r} is not an integer")
    try:
        value = int(raw) if isinstance(raw, int) else int(str(raw).strip())
    except (TypeError, ValueError):
        if isinstance(raw, float) and raw.is_integer():
            value = int(raw)
        else:
            raise UserError(f"{name}={raw!r} is not an integer") from None
    _check_range(name, value, minimum, maximum)
    return value


def parse_float(name: str, raw: Any, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite number (inf and nan are refused: they train a NaN model)."""
    try:
        value = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else float(str(raw).strip())
    except (TypeError, ValueError):
        raise UserError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{name}={raw!r} must be a finite number")
    _check_range(name, value, minimum, maximum)
    return value


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bound = (f"between {minimum} and {maximum}" if minimum is not None and maximum is not None
                 else f">= {minimum}" if minimum is not None else f"<= {maximum}")
        raise UserError(f"{name}={value} must be {bound}")


# ---- .env files ----------------------------------------------------------------------------------


def read_dotenv(path: str | os.PathLike[str] | None) -> dict[str, str]:
    """`NAME=value` lines of a `.env` file (a missing file is empty).

    Blank lines and `#` comments are skipped, `export ` is allowed. A value may be 'single-quoted'
    (literal), "double-quoted" (with \\n, \\t, \\" and \\\\ escapes) or bare (up to a ` #` comment).
    Nothing is expanded. A line that is none of these, or holds a NUL byte, is an error naming the file and line.
    """
    return {name: value for _, name, value in _dotenv_entries(path)}


def _dotenv_entries(path: str | os.PathLike[str] | None) -> list[tuple[int, str, str]]:
    """(line number, name, value) per setting line of a `.env` file."""
    if not path or not Path(path).is_file():
        return []
    entries = []
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason}); save it as UTF-8") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if "\0" in line:  # no program takes it: C strings end there, and a shell or make would cut the value
            raise UserError(f"{path}:{lineno}: the line holds a NUL byte; a .env file is text, NAME=value per line")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export "):].lstrip()
        name, sep, rest = stripped.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise UserError(f"{path}:{lineno}: expected NAME=value, found {stripped[:40]!r}")
        entries.append((lineno, name, _dotenv_value(rest.strip(), f"{path}:{lineno}")))
    return entries


def misspelt_names(path: str | os.PathLike[str] | None, known: set[str] | frozenset[str]) -> list[str]:
    """A warning per `.env` name that is not in `known` but close to a name that is (BACH_SIZE: BATCH_SIZE).

    A name close to none of ours (PATH, a tool's own variable) is someone else's and passes without a word.
    """
    warnings = []
    for lineno, name, _ in _dotenv_entries(path):
        if name in MAKE_ONLY_NAMES:
            warnings.append(f"warning: {path}:{lineno}: {name} is make's own variable: give it on make's command "
                            f"line or in the environment (make {name}=...); .env does not set it")
            continue
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            warnings.append(f"warning: {path}:{lineno}: {name} is not a setting; did you mean {close[0]}? "
                            "(it is ignored)")
    return warnings


def _dotenv_value(raw: str, where: str) -> str:
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        end = _closing_quote(raw, quote)
        if end < 0:
            raise UserError(f"{where}: the value's {quote} is not closed (values are one line)")
        tail = raw[end + 1:].strip()
        if tail and not tail.startswith("#"):
            raise UserError(f"{where}: unexpected text after the quoted value: {tail[:20]!r}")
        body = raw[1:end]
        if quote == "'":
            return body
        escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
        return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(0)), body)
    return re.split(r"(?:^|\s+)#", raw, maxsplit=1)[0].strip()


def _closing_quote(raw: str, quote: str) -> int:
    i = 1
    while i < len(raw):
        if raw[i] == "\\" and quote == '"':
            i += 2
            continue
        if raw[i] == quote:
            return i
        i += 1
    return -1


def effective_environ(dotenv_path: str | os.PathLike[str] | None = ".env",
                      environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment over `.env`: `.env` fills in only what the environment leaves unset."""
    merged = read_dotenv(dotenv_path)
    merged.update(os.environ if environ is None else environ)
    return merged


def env_file(environ: Mapping[str, str]) -> str:
    """The settings file: ENV_FILE (a recipe such as examples/tweeteval.env), else `.env`."""
    chosen = environ.get("ENV_FILE", "").strip()
    if chosen and chosen != ".env" and not Path(chosen).is_file():
        raise UserError(f"ENV_FILE={chosen} does not exist; give a settings file such as examples/<recipe>.env, "
                        "or unset ENV_FILE to read .env")
    return chosen or ".env"


def load_dotenv(path: str | os.PathLike[str] = ".env") -> None:
    """Put `.env` values into `os.environ` where unset (for libraries: credentials, HF_TOKEN, ...)."""
    for name, value in read_dotenv(path).items():
        os.environ.setdefault(name, value)


def hf_token(environ: Mapping[str, str]) -> str | None:
    """HF_TOKEN (the environment, or `.env`, which every command loads into it); None when unset or empty.

    A secret, so never a training setting: it stays out of `settings`, metrics.json and the Vertex AI job.
    """
    return environ.get("HF_TOKEN", "").strip() or None


@dataclass(frozen=True)
class VertexDirs:
    """The output directories Vertex AI gives a custom job with a base output directory ("" where unset):
    `trainer.layout.BucketDirs.resolve` puts them before JOB_DIR's."""

    checkpoints: str = ""  # AIP_CHECKPOINT_DIR
    model: str = ""  # AIP_MODEL_DIR
    logs: str = ""  # AIP_TENSORBOARD_LOG_DIR

    def unset(self) -> list[str]:
        """The names of the variables not set, in order."""
        return [VERTEX_DIR_NAMES[f.name] for f in fields(self) if not getattr(self, f.name)]


VERTEX_DIR_NAMES = {"checkpoints": "AIP_CHECKPOINT_DIR", "model": "AIP_MODEL_DIR", "logs": "AIP_TENSORBOARD_LOG_DIR"}


def vertex_dirs(environ: Mapping[str, str]) -> VertexDirs:
    """Vertex AI's `AIP_*` directories from the environment, blanks stripped."""
    return VertexDirs(**{key: environ.get(name, "").strip() for key, name in VERTEX_DIR_NAMES.items()})


def process_count(environ: Mapping[str, str]) -> int:
    """How many processes train together: torchrun's WORLD_SIZE, 1 without it (a plain `python -m trainer`)."""
    raw = environ.get("WORLD_SIZE", "").strip()
    return parse_int("WORLD_SIZE", raw, minimum=1) if raw else 1


# ---- for the Makefile and docker -----------------------------------------------------------------


def setting(name: str, default: str = "", environ: Mapping[str, str] | None = None) -> str:
    """NAME's effective value: the environment, else ENV_FILE (`.env`), else `default`; blanks stripped."""
    environ = os.environ if environ is None else environ
    value = effective_environ(env_file(environ), environ).get(name, "").strip()
    if "\n" in value:
        raise UserError(f"{name} holds a line break; a setting is one line")
    return value or default


def write_docker_env_file(values: Mapping[str, str], path: str | os.PathLike[str]) -> None:
    """`NAME=value` lines as `docker run --env-file` reads them (literally, no quotes), readable by the owner only:
    the file holds every `.env` value, secrets too."""
    for name, value in values.items():
        if "\n" in value:  # docker would read the rest of the value as a line of its own: another variable
            raise UserError(f"{name} holds a line break, which docker's --env-file can't take")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older copy may have been 0644
    with os.fdopen(fd, "w") as out:
        out.write("".join(f"{name}={value}\n" for name, value in values.items()))


USAGE = ("usage: python3 -m trainer.config.env get NAME [DEFAULT] | require NAME... | docker OUTPUT "
         "(ENV_FILE, default .env, is the settings file)")


def main(argv: list[str] | None = None) -> int:
    """For the Makefile's recipes, which take what this prints as one quoted word and never read `.env` themselves."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if args[:1] == ["get"] and len(args) in (2, 3):
            print(setting(args[1], args[2] if len(args) == 3 else ""))
        elif args[:1] == ["require"] and len(args) > 1:
            missing = [name for name in args[1:] if not setting(name)]
            if missing:
                raise UserError(f"{' '.join(missing)} not set; set it in the environment or in .env "
                                "(see the Cloud section of .env.example)")
        elif args[:1] == ["docker"] and len(args) == 2:
            write_docker_env_file(read_dotenv(env_file(os.environ)), args[1])
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
