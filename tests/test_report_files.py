"""`report` on the files a run really leaves: damaged or empty TensorBoard event files, and a run that was moved
or copied to another folder after training (issue 18). Through the real CLI, on a copy of the shared demo run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.tiny import cli_environ


def copy_run(run: Path, target: Path) -> Path:
    """What `report` reads of a run: its logs, metrics.json and settings.json."""
    target.mkdir(parents=True)
    shutil.copytree(run / "logs", target / "logs")
    for name in ("metrics.json", "settings.json"):
        shutil.copy2(run / name, target / name)
    return target


def charts(page: str) -> int:
    return page.count('src="data:image/png;base64,')


def test_report_warns_once_per_damaged_or_empty_event_file_and_builds_from_the_rest(tmp_path, forked_cli,
                                                                                      exported_run):
    run = copy_run(exported_run[0], tmp_path / "run")
    good = tmp_path / "whole.html"
    result = forked_cli.run("report", f"--output={good}", env=cli_environ({"OUTPUT_DIR": str(run)}), cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]

    (real,) = (run / "logs").glob("events.out.tfevents.*")
    empty = run / "logs" / "events.out.tfevents.0000000001.empty"  # sorts before the real one
    empty.write_bytes(b"")
    damaged = run / "logs" / "events.out.tfevents.9999999999.damaged"
    damaged.write_bytes(real.read_bytes()[:200] + b"\x00garbage" * 50)  # a whole first record, then damage
    target = tmp_path / "report.html"
    result = forked_cli.run("report", f"--output={target}", env=cli_environ({"OUTPUT_DIR": str(run)}), cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"warning: {empty}: the event file is empty"), lines
    assert lines[1].startswith(f"warning: {damaged}: the event file is damaged or cut short"), lines
    assert charts(target.read_text()) == charts(good.read_text()) > 0  # the rest still makes every chart


def test_report_on_a_moved_run_reads_its_own_logs(tmp_path, forked_cli, exported_run):
    """settings.json records the absolute OUTPUT_DIR and LOG_DIR of where the run trained; once the run is moved,
    its logs are the ones beside that settings.json, not whatever is (or isn't) at the old place."""
    trained = copy_run(exported_run[0], tmp_path / "trained")
    record = json.loads((trained / "settings.json").read_text())
    old = record["settings"]["output_dir"]
    record["settings"] = {k: v.replace(old, str(trained)) if isinstance(v, str) else v
                          for k, v in record["settings"].items()}
    (trained / "settings.json").write_text(json.dumps(record))  # as if it had trained here
    moved = trained.rename(tmp_path / "moved")

    result = forked_cli.run("report", env=cli_environ({"OUTPUT_DIR": str(moved)}), cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-2000:]
    assert charts((moved / "report.html").read_text()) > 0
    assert not trained.exists()
