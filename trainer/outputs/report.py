"""The run report: one self-contained HTML file with a run's curves, its final metrics and its settings.

It is built from the TensorBoard event files (dev metrics, training losses, learning rate, learned loss
weights), `metrics.json` (written at the end: a running job has none yet, and the report says so) and
`settings.json` (written at the start of training). The charts are PNGs embedded as `data:` URIs, so the
file needs nothing else to open, offline or as an e-mail attachment.

Training writes `OUTPUT_DIR/report.html` at the end; `python -m trainer report` rebuilds it at any time,
from OUTPUT_DIR or, with JOB_DIR, from the job's logs in the bucket.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from tensorboard.compat.tensorflow_stub import errors as tf_errors
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

from trainer.config.env import vertex_dirs
from trainer.config.settings import Settings, as_record
from trainer.errors import UserError
from trainer.files import check_writable_file, write_text_atomically
from trainer.layout import METRICS_FILE, REPORT_FILE, SETTINGS_FILE, BucketDirs, RunDirs
from trainer.storage import base as storage
from trainer.training.metrics import AGGREGATE_METRIC, TIMINGS, RunMetrics, read_run_metrics

EVENT_FILES = "events.out.tfevents.*"
NOT_QUALITY = (*TIMINGS, "loss")  # eval/<task>_<these>
Series = list[tuple[int, float]]
logger = logging.getLogger(__name__)


# ---- settings.json: what the report needs to know about a run before it ends ----------------------------

def write_settings(settings: Settings, main_metric: dict[str, str], output_dir: str | os.PathLike[str]) -> Path:
    """`OUTPUT_DIR/settings.json`: every setting of the run and each task's main metric, written atomically."""
    path = RunDirs(output_dir).settings
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps({"settings": as_record(settings), "main_metric": main_metric}, indent=2))
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from None


# ---- the logs ----------------------------------------------------------------------------------------------

def read_scalars(log_dir: str | os.PathLike[str]) -> dict[str, Series]:
    """Every scalar tag of the TensorBoard logs under `log_dir`: tag -> [(step, value)], by step.

    A resumed run appends a new event file; TensorBoard's orphan purge (on by default) drops the points
    a resume rewound past, and a later file wins where two give the same step.
    """
    runs = sorted({path.parent for path in Path(log_dir).rglob(EVENT_FILES)})
    if not runs:
        raise UserError(f"no TensorBoard logs in {log_dir} (no {EVENT_FILES} files); train first, or point "
                        "--output_dir/--log_dir (or --job_dir) at a run")
    for path in sorted(Path(log_dir).rglob(EVENT_FILES)):
        problem = _event_file_problem(path)
        if problem:
            print(f"warning: {path}: {problem}", file=sys.stderr)
    scalars: dict[str, dict[int, float]] = {}
    for run in runs:
        events = EventAccumulator(str(run), size_guidance={SCALARS: 0}, purge_orphaned_data=True).Reload()
        for tag in events.Tags()[SCALARS]:
            scalars.setdefault(tag, {}).update((e.step, e.value) for e in events.Scalars(tag))
    return {tag: sorted(points.items()) for tag, points in scalars.items()}


def _event_file_problem(path: Path) -> str | None:
    """Why an event file yields nothing (or less than it holds), or None. TensorBoard's reader stops quietly at
    the first bad record: an empty file or a damaged one would just be missing from the charts."""
    if path.stat().st_size == 0:
        return "the event file is empty: nothing of it is drawn; the report is built from the rest"
    reader = PyRecordReader_New(str(path))
    try:
        while True:
            reader.GetNext()
    except tf_errors.OutOfRangeError:  # the end, every record whole
        return None
    except tf_errors.DataLossError as err:
        return (f"the event file is damaged or cut short ({err.message}): only its records before the damage are "
                "drawn; the report is built from the rest")
    finally:
        reader.file_handle.close()


def task_names(scalars: dict[str, Series]) -> list[str]:
    """The tasks of a run whose main metrics are not known yet: each logs `train/<task>_loss`."""
    return sorted(tag[len("train/"):-len("_loss")] for tag in scalars
                  if tag.startswith("train/") and tag.endswith("_loss") and tag != "train/train_loss")


def dev_metrics(scalars: dict[str, Series], task: str, tasks: list[str]) -> list[str]:
    """Every quality metric logged as `eval/<task>_<metric>` (not `<longer task name>_...`)."""
    longer = [t for t in tasks if t != task and t.startswith(f"{task}_")]
    names = [tag[len(f"eval/{task}_"):] for tag in scalars if tag.startswith(f"eval/{task}_")
             and not any(tag.startswith(f"eval/{t}_") for t in longer)]
    return sorted(n for n in names if n not in NOT_QUALITY)


# ---- charts -------------------------------------------------------------------------------------------

def chart(panels: list[tuple[str, dict[str, Series]]], ylabel: str = "") -> str:
    """One PNG, as a data: URI: a panel (title, label -> series) per subplot, three to a row."""
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(4.2 * columns if columns > 1 else 8, 3.0 * rows), dpi=100, layout="constrained")
    for axes, (title, lines) in zip(figure.subplots(rows, columns, squeeze=False).flat, panels, strict=False):
        for label, points in lines.items():
            steps, values = zip(*points, strict=True)
            axes.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("step")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        if len(lines) > 1:
            axes.legend(fontsize=8)
    for axes in figure.axes[len(panels):]:
        axes.set_visible(False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---- the page -------------------------------------------------------------------------------------------

def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _image(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_shown(c))}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<tr>{cells}</tr>\n{body}</table>"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return "" if value is None else str(value)


def _setting(value: Any) -> str:
    """A setting as its environment variable would hold it."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v:g}" for k, v in value.items())
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _final_table(run_metrics: RunMetrics) -> str:
    rows = []
    for task, metric in run_metrics.main_metric.items():
        final, chosen = run_metrics.tasks[task], run_metrics.selected[task]
        others = " ".join(f"{k}={_shown(v)}" for k, v in final.items() if k != metric and k not in TIMINGS)
        rows.append([task, metric, final[metric], chosen.metrics[metric], chosen.step, others])
    rows.append([AGGREGATE_METRIC, "", run_metrics.average, run_metrics.selected_average, "", ""])
    return (f"<p>step {run_metrics.global_step}; SELECT_BEST={html.escape(str(run_metrics.select_best))}</p>\n"
            + _table(["task", "main metric", "final", "selected", "selected at step", "other metrics (final)"], rows))


def build_report(scalars: dict[str, Series], run_metrics: RunMetrics | None, run: dict[str, Any] | None,
                 source: str) -> str:
    """The HTML page: dev metrics, training loss, learning rate, learned weights, final table, settings.

    `run_metrics` is metrics.json (None before the run ends), `run` settings.json."""
    main = (run_metrics.main_metric if run_metrics else (run or {}).get("main_metric")) or {}
    tasks = list(main) or task_names(scalars)
    last_step = max((points[-1][0] for points in scalars.values() if points), default=0)
    sections = []

    dev = []
    for task in tasks:
        names = [main[task]] if task in main else dev_metrics(scalars, task, tasks)
        lines = {name: scalars[f"eval/{task}_{name}"] for name in names if f"eval/{task}_{name}" in scalars}
        if lines:
            dev.append((f"{task}: {main[task]}" if task in main else f"{task} (main metric not known yet)", lines))
    if f"eval/{AGGREGATE_METRIC}" in scalars:
        dev.append((f"{AGGREGATE_METRIC} of the main metrics", {AGGREGATE_METRIC: scalars[f"eval/{AGGREGATE_METRIC}"]}))
    unknown = "" if main else (f"<p>No {METRICS_FILE} or {SETTINGS_FILE} says which metric is each task's main "
                               "one: every dev metric is drawn.</p>\n")
    sections.append(_section("dev", "Dev metrics", unknown + (
        _image(chart(dev), "dev metrics per task over steps") if dev else "<p>No evaluation logged yet.</p>")))

    losses = {"total (weighted)": scalars["train/loss"]} if "train/loss" in scalars else {}
    losses.update({task: scalars[f"train/{task}_loss"] for task in tasks if f"train/{task}_loss" in scalars})
    sections.append(_section("loss", "Training loss", _image(chart([("training loss", losses)], "loss"),
                                                                   "training loss over steps") if losses
                             else "<p>No training loss logged yet.</p>"))

    if "train/learning_rate" in scalars:
        sections.append(_section("lr", "Learning rate", _image(
            chart([("learning rate", {"learning rate": scalars["train/learning_rate"]})]), "learning rate")))

    weights = {task: scalars[f"train/{task}_weight"] for task in tasks if f"train/{task}_weight" in scalars}
    if weights:
        sections.append(_section("weights", "Learned loss weights", _image(
            chart([("loss weight exp(-s) per task", weights)], "weight"), "learned loss weights over steps")))

    sections.append(_section("final", "Final metrics", _final_table(run_metrics) if run_metrics else
                             f"<p>No {METRICS_FILE} yet: the run has not finished (or did not finish); "
                             f"curves only, up to step {last_step}.</p>"))
    settings = (run or {}).get("settings")
    rows = [[name.upper(), _setting(value)] for name, value in (settings or {}).items()]
    sections.append(_section("settings", "Settings", _table(["setting", "value"], rows) if rows
                             else f"<p>No {SETTINGS_FILE}: the settings are not known.</p>"))

    title = f"Run report: {source}"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1300px; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>Logged up to step {last_step}.</p>
{chr(10).join(sections)}
</body>
</html>
"""


def write_report(path: str | os.PathLike[str], log_dir: str | os.PathLike[str], metrics_file: Path,
                 settings_file: Path, source: str) -> Path:
    """Build the report from these files and write it to `path` (under a temporary name, then renamed)."""
    scalars = read_scalars(log_dir)
    run_metrics = read_run_metrics(metrics_file) if metrics_file.is_file() else None
    page = build_report(scalars, run_metrics, _read_json(settings_file), source)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, page)
    return path


# ---- `python -m trainer report` ---------------------------------------------------------------------------

def download_job(dirs: BucketDirs, target: RunDirs) -> None:
    """A job's logs into `target`'s log folder, and its `metrics.json` and `settings.json` where the bucket's model
    folder has them."""
    store = storage.open_store(dirs.logs)
    for name in store.list_names(dirs.logs):  # a missing bucket is one line, from the store
        parts = name.split("/")
        if name.endswith("/") or any(p in ("", ".", "..") for p in parts):
            continue  # folder placeholders, and names that would leave the target
        local = target.log_dir.joinpath(*parts)
        local.parent.mkdir(parents=True, exist_ok=True)
        store.download_file(dirs.logs.child(name), local)
    for local, remote in ((target.metrics, dirs.metrics), (target.settings, dirs.settings)):
        with contextlib.suppress(storage.NotFound):
            store.download_file(remote, local)


def _recorded_log_dir(recorded: dict[str, Any], output_dir: Path) -> Path:
    """The run's logs as settings.json recorded them, followed if the run was moved or copied: a log folder that
    was inside the recorded OUTPUT_DIR is read inside this one, never at the old absolute path."""
    logs, was = recorded.get("log_dir"), recorded.get("output_dir")
    if not logs:
        return RunDirs(output_dir).log_dir
    if was and Path(logs).is_relative_to(was):
        return output_dir / Path(logs).relative_to(was)
    return Path(logs)


def rebuild_report(settings: Settings, output: str | None = None) -> Path:
    """Write the report of the run in OUTPUT_DIR, or of the job in JOB_DIR, to `output` (default
    OUTPUT_DIR/report.html)."""
    run = RunDirs(settings.output_dir)
    target = Path(output) if output else run.report
    check_writable_file(target, "--output" if output else f"OUTPUT_DIR/{REPORT_FILE}")
    dirs = BucketDirs.resolve(settings.job_dir, vertex_dirs(os.environ))
    if dirs is None:
        recorded = _read_json(run.settings) or {}
        log_dir = settings.log_dir or _recorded_log_dir(recorded.get("settings", {}), run.output_dir)
        return write_report(target, log_dir, run.metrics, run.settings, str(run.output_dir))
    with tempfile.TemporaryDirectory(prefix="trainer-report-") as scratch:
        job = RunDirs(scratch)  # the job's files, laid out as in an OUTPUT_DIR
        download_job(dirs, job)
        if not job.log_dir.is_dir():
            raise UserError(f"no TensorBoard logs in {dirs.logs}: the job has not logged yet, or JOB_DIR is wrong")
        return write_report(target, job.log_dir, job.metrics, job.settings, str(dirs.logs))


def output_report(run: RunDirs) -> Path | None:
    """`OUTPUT_DIR/report.html`; a failure to draw it is logged, and costs the run nothing else."""
    try:
        return write_report(run.report, run.log_dir, run.metrics, run.settings, str(run.output_dir))
    except Exception as err:  # the model, export and metrics are written: still upload them
        logger.error("could not write %s: %s: %s", run.report, type(err).__name__, err)
        return None
