"""What a person watches: the table after every evaluation, the final summary, and report.html (self-contained,
rendered by a real browser, rebuilt from a run's logs locally or in the bucket)."""

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from trainer.checkpoints import remote
from trainer.config.settings import Settings
from trainer.errors import UserError
from trainer.outputs.report import rebuild_report
from trainer.storage import gcs
from trainer.storage.gcs import GcsStore

from .tiny import ROOT, cli_environ, quick_env

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
TASKS = ("demo_sentiment", "demo_similarity", "demo_category")
MAIN = {"demo_sentiment": "accuracy", "demo_similarity": "pearson", "demo_category": "accuracy"}
CHART_SECTIONS = ("dev", "loss", "lr", "weights")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, forked_cli):
    """The demo tasks for 8 steps, evaluated at 4 and 8, with learned loss weights (their chart)."""
    out = tmp_path_factory.mktemp("report") / "run"
    env = quick_env(out, MAX_STEPS="8", EVAL_STEPS="4", MAX_EVAL_SAMPLES="16", TASK_WEIGHTING="uncertainty")
    result = forked_cli.run("train", env=cli_environ(env), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def scalars(out: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs")).Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


class Page(HTMLParser):
    """The tags of a page: every src/href, the <img>s per <section id>, the table cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []
        self.images: dict[str, int] = {}
        self.cells: list[str] = []
        self._section = ""
        self._cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.links += [value for name, value in attrs.items() if name in ("src", "href", "srcset", "poster")]
        if tag == "section":
            self._section = attrs["id"]
        if tag == "img":
            self.images[self._section] = self.images.get(self._section, 0) + 1
        self._cell = tag == "td"

    def handle_data(self, data):
        if self._cell:
            self.cells.append(data)
            self._cell = False


# ---- the console ----------------------------------------------------------------------------------------

def test_a_table_after_every_evaluation_with_the_logged_values_and_the_best_so_far(demo_run):
    out, result = demo_run
    logged = scalars(out)
    tables = re.findall(r"^eval at step (\d+)\n((?:  .*\n)+)", result.stdout, re.M)
    assert [int(step) for step, _ in tables] == sorted(logged["eval/average"]) == [4, 8], result.stdout[-3000:]
    for step, body in tables:
        step = int(step)
        rows = {line.split()[0]: line.split() for line in body.splitlines()[1:]}
        assert list(rows) == [*TASKS, "average"]
        for name in (*TASKS, "average"):
            tag = f"eval/{name}_{MAIN[name]}" if name in MAIN else "eval/average"
            history = {s: v for s, v in logged[tag].items() if s <= step}
            now, best, at = (rows[name][2:5] if name in MAIN else rows[name][1:4])
            best_step = max(history, key=lambda s: (history[s], -s))
            assert float(now) == pytest.approx(logged[tag][step], abs=5e-5), (step, name)
            assert float(best) == pytest.approx(history[best_step], abs=5e-5) and int(at) == best_step, (step, name)
    assert "it/s]" in result.stderr  # the progress bar is still there


def test_the_final_summary_shows_final_and_selected_metrics_and_every_output(demo_run):
    out, result = demo_run
    metrics = json.loads((out / "metrics.json").read_text())
    summary = result.stdout[result.stdout.index("\nfinal: ") + 1:]
    assert summary.startswith("final: demo_sentiment accuracy=")
    for name in TASKS:
        row = next(line.split() for line in summary.splitlines() if line.split()[:1] == [name])
        assert row[1] == MAIN[name]
        assert float(row[2]) == pytest.approx(metrics["tasks"][name][MAIN[name]], abs=5e-5)
        assert float(row[3]) == pytest.approx(metrics["selected"][name]["metrics"][MAIN[name]], abs=5e-5)
        assert int(row[4]) == metrics["selected"][name]["step"]
    assert "spearman=" in summary and "mcc=" in summary  # the other metrics, compactly
    outputs = summary[summary.index("outputs:"):]
    for path in [out / "model", *(out / "export" / t for t in TASKS), out / "metrics.json", out / "report.html",
                 out / "logs"]:
        assert str(path) in outputs and path.exists(), path
    assert json.loads((out / "settings.json").read_text())["settings"]["max_steps"] == 8


# ---- report.html ------------------------------------------------------------------------------------------

def test_the_report_is_one_self_contained_file_with_a_chart_per_section(demo_run):
    out, _ = demo_run
    text = (out / "report.html").read_text()
    page = Page(text)
    assert page.links and all(link.startswith("data:image/png;base64,") for link in page.links), page.links[:3]
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    assert "url(" not in text and "@import" not in text
    assert {section: page.images.get(section, 0) for section in CHART_SECTIONS} == dict.fromkeys(CHART_SECTIONS, 1)
    metrics = json.loads((out / "metrics.json").read_text())
    for name in TASKS:
        assert name in page.cells and f"{metrics['tasks'][name][MAIN[name]]:.4f}" in page.cells
    assert {"MODEL_NAME", "demo", "TASK_WEIGHTING", "uncertainty"} <= set(page.cells)
    assert len({p.name for p in out.iterdir()} & {"report.html", ".report.html.tmp"}) == 1  # no temporary left


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (make test installs it: apt-get install "
                    "chromium); the browser check of report.html needs it")
def test_every_image_of_the_report_decodes_in_a_real_browser(demo_run, tmp_path):
    from PIL import Image

    out, _ = demo_run
    probe = """<script>window.addEventListener("load", () => {
      const p = document.createElement("pre"); p.id = "decoded";
      p.textContent = JSON.stringify([...document.images].map(i => [i.naturalWidth, i.naturalHeight]));
      document.body.appendChild(p); });</script>"""
    page = tmp_path / "probe.html"
    page.write_text((out / "report.html").read_text().replace("</body>", probe + "</body>"))
    browser = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="decoded">(.*?)</pre>', dom.stdout)
    assert found, dom.stdout[-2000:]
    sizes = json.loads(found.group(1))
    assert len(sizes) == len(CHART_SECTIONS) and all(w > 0 and h > 0 for w, h in sizes), sizes

    shot = tmp_path / "shot.png"
    run = subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1200,1600", (out / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert image.size == (1200, 1600) and len(colours) > 50, "the screenshot is blank"
    assert max(count for count, _ in colours) < 0.97 * image.width * image.height  # not one flat colour


def test_report_rebuilds_it_from_output_dir_and_refuses_a_run_without_logs(demo_run, tmp_path, cli):
    out, _ = demo_run
    result = cli("report", f"--output_dir={out}", f"--output={tmp_path / 'again.html'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"report -> {tmp_path / 'again.html'}"
    page = Page((tmp_path / "again.html").read_text())
    assert {section: page.images.get(section, 0) for section in CHART_SECTIONS} == dict.fromkeys(CHART_SECTIONS, 1)

    (tmp_path / "empty").mkdir()  # in-process (the CLI's one-line error is checked with the bucket below)
    with pytest.raises(UserError, match=f"no TensorBoard logs in {tmp_path / 'empty'}"):
        rebuild_report(Settings(output_dir=str(tmp_path / "empty")))
    assert list((tmp_path / "empty").iterdir()) == []


def test_report_from_the_bucket_of_a_running_then_finished_job(demo_run, tmp_path, gcs_client, gcs_bucket, cli):
    out, _ = demo_run
    job = gcs.parse_gcs_uri(f"gs://{gcs_bucket}/jobs/one")
    remote.upload_tree(GcsStore(gcs_client), out / "logs", job.child("logs"))  # a running job: logs only
    target = tmp_path / "live.html"
    result = cli("report", f"--job_dir={job}", f"--output={target}", env={"OUTPUT_DIR": str(tmp_path / "o")})
    assert result.returncode == 0, result.stderr[-2000:]
    text = target.read_text()
    assert "No metrics.json yet" in text and f"Run report: {job}/logs" in text
    assert "every dev metric is drawn" in text  # no metrics.json or settings.json name the main metrics
    assert Page(text).images.get("dev") == 1 and Page(text).images.get("loss") == 1

    remote.upload_file(GcsStore(gcs_client), out / "metrics.json", job.child("model", "metrics.json"))  # finished
    rebuild_report(Settings(job_dir=str(job), output_dir=str(tmp_path / "o")), str(target))  # in-process: faster
    page = Page(target.read_text())
    assert "No metrics.json yet" not in target.read_text() and "demo_category" in page.cells
    assert not (tmp_path / "o").exists()

    line = one_error_line(cli("report", f"--job_dir=gs://{gcs_bucket}/jobs/none", f"--output={tmp_path / 'x'}"))
    assert line == f"error: no TensorBoard logs in gs://{gcs_bucket}/jobs/none/logs: the job has not logged yet, " \
        "or JOB_DIR is wrong"
    assert not (tmp_path / "x").exists()


def test_upload_final_puts_the_report_next_to_metrics_json(demo_run, gcs_client, gcs_bucket):
    from trainer.checkpoints.mirror import CloudSyncCallback
    from trainer.config.env import VertexDirs
    from trainer.layout import BucketDirs, RunDirs

    out, _ = demo_run
    sync = CloudSyncCallback(BucketDirs.resolve(f"gs://{gcs_bucket}/jobs/up", VertexDirs()), GcsStore(gcs_client))
    sync.upload_final(RunDirs(out))
    stored = {b.name: b for b in gcs_client.list_blobs(gcs_bucket, prefix="jobs/up/model/")}
    assert stored["jobs/up/model/report.html"].size == (out / "report.html").stat().st_size
    assert "jobs/up/model/metrics.json" in stored
