"""The background uploader (no network: its jobs are plain functions) and the one-way imports around it."""

import subprocess
import sys
import threading

import pytest

from trainer.checkpoints.uploader import BackgroundUploader, UploadError

from .tiny import ROOT


def test_jobs_run_in_order_and_failures_are_raised_later():
    uploads, ran = BackgroundUploader(), []
    gate = threading.Event()
    uploads.submit("first", lambda: (gate.wait(5), ran.append("first")))
    uploads.submit("broken", lambda: 1 / 0, cleanup=lambda: ran.append("cleaned"))
    uploads.submit("last", lambda: ran.append("last"))
    assert uploads.pending == ["first", "broken", "last"]
    gate.set()
    assert uploads.drain(5)
    assert ran == ["first", "cleaned", "last"]  # a failure neither stops the queue nor skips its cleanup
    with pytest.raises(UploadError, match="broken: ZeroDivisionError"):
        uploads.raise_errors()


def test_a_keyed_job_already_queued_absorbs_newer_ones_and_keeps_its_place():
    uploads, ran = BackgroundUploader(), []
    gate = threading.Event()
    uploads.submit("busy", lambda: gate.wait(5))
    assert uploads.submit("logs", lambda: ran.append("logs"), key="logs")
    uploads.submit("checkpoint-5", lambda: ran.append("checkpoint-5"))
    assert not uploads.submit("logs again", lambda: ran.append("logs again"), key="logs")  # still queued
    gate.set()
    assert uploads.drain(5)
    assert ran == ["logs", "checkpoint-5"]  # the logs before the checkpoint, once
    assert uploads.submit("logs", lambda: ran.append("logs"), key="logs")  # not queued any more: runs again
    assert uploads.drain(5) and ran[-1] == "logs"


def test_drop_waiting_discards_a_groups_queued_jobs_and_runs_their_cleanup():
    uploads, ran, cleaned = BackgroundUploader(), [], []
    gate, started = threading.Event(), threading.Event()

    def job(name):
        return lambda: ran.append(name)

    uploads.submit("ckpt-1", lambda: (started.set(), gate.wait(5), ran.append("ckpt-1")),
                   cleanup=lambda: cleaned.append("ckpt-1"), group="ckpt")
    assert started.wait(5)  # running: never dropped
    uploads.submit("ckpt-2", job("ckpt-2"), cleanup=lambda: cleaned.append("ckpt-2"), group="ckpt")
    uploads.submit("logs", job("logs"), key="logs")
    uploads.submit("ckpt-3", job("ckpt-3"), cleanup=lambda: cleaned.append("ckpt-3"), group="ckpt")
    assert uploads.drop_waiting("ckpt") == ["ckpt-2", "ckpt-3"]
    assert cleaned == ["ckpt-2", "ckpt-3"]  # released at once, not when the running job ends
    uploads.submit("ckpt-4", job("ckpt-4"), cleanup=lambda: cleaned.append("ckpt-4"), group="ckpt")
    assert uploads.pending == ["ckpt-1", "logs", "ckpt-4"]
    gate.set()
    assert uploads.drain(5)
    assert ran == ["ckpt-1", "logs", "ckpt-4"] and cleaned == ["ckpt-2", "ckpt-3", "ckpt-1", "ckpt-4"]
    assert uploads.errors == []


def test_drop_waiting_without_a_group_empties_the_queue():
    uploads, gate, started, ran = BackgroundUploader(), threading.Event(), threading.Event(), []
    uploads.submit("busy", lambda: (started.set(), gate.wait(5)))
    assert started.wait(5)
    uploads.submit("a", lambda: ran.append("a"), group="ckpt")
    uploads.submit("b", lambda: ran.append("b"))
    assert uploads.drop_waiting() == ["a", "b"]
    gate.set()
    assert uploads.drain(5) and ran == []


def test_finish_records_what_is_still_running():
    uploads, gate = BackgroundUploader(), threading.Event()
    uploads.submit("slow", lambda: gate.wait(5))
    uploads.finish(0.2)
    gate.set()
    with pytest.raises(UploadError, match="slow: still uploading after 0 s"):
        uploads.raise_errors()


def test_local_commands_never_import_the_cloud_sdk():
    """predict, export and the local checkpoint layout import no google-cloud-storage (only a bucket URI does)."""
    code = ("import sys, trainer.outputs.inference, trainer.checkpoints.local, trainer.outputs.selection, "
            "trainer.evaluate;"
            "print('google.cloud.storage' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
