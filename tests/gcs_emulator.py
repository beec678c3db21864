"""A local Cloud Storage server for tests: `gcp-storage-emulator` as a subprocess on 127.0.0.1.

Data lives on disk under `data_dir`, so the server can be stopped and started again on the same
port with its buckets and objects intact (to simulate an outage).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("gcp-storage-emulator")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gcp_storage_emulator"]


class GcsEmulator:
    """Start/stop `gcp-storage-emulator start --host 127.0.0.1 --port <port>` with on-disk data."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_path = self.data_dir / "emulator.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The value for STORAGE_EMULATOR_HOST."""
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until it answers its health check."""
        if self.running:
            return
        cmd = [*_command(), "-d", str(self.data_dir), "start", "--host", HOST, "--port", str(self.port), "-q"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, cwd=self.data_dir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"gcs emulator exited with {self._proc.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gcs emulator not ready on {self.url} after {timeout} s: {self._log_tail()}")

    def stop(self) -> None:
        """Stop the server (its data stays on disk)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._freeze_between_writes()
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._proc = None

    def _freeze_between_writes(self) -> None:
        """Pause the server at a moment when its metadata file is whole.

        The emulator rewrites `.meta` in place (truncate, then write) on every object change, so killing it at
        a random moment can leave that file empty and the next start fails on it. A real outage loses no
        committed metadata; this keeps the simulated one honest: stop the process, and if it was caught
        mid-write, let it run a moment and try again.
        """
        meta = self.data_dir / ".cloudstorage" / ".meta"
        for _ in range(200):
            self._proc.send_signal(signal.SIGSTOP)
            # SIGSTOP is delivered asynchronously: wait until the kernel reports the whole process stopped,
            # or the server may still truncate the file after it was read whole.
            os.waitpid(self._proc.pid, os.WUNTRACED)
            try:
                json.loads(meta.read_bytes())
                return
            except FileNotFoundError:
                return
            except ValueError:
                self._proc.send_signal(signal.SIGCONT)
                time.sleep(0.005)

    def patch_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point google-cloud-storage clients (and our make_client) at this server."""
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", self.url)
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""
