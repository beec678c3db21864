"""`python -m trainer ...` many times over, without paying the torch/transformers import each time.

One helper process (`python -m tests.cli_fork`) imports the heavy modules once. For each run it forks a child
that takes the run's environment, argv, cwd, stdin, stdout and stderr, and executes `trainer/__main__.py` as
`__main__` with `runpy`, exactly as `python -m trainer` does: `trainer.__main__` is executed afresh in every
child, so its environment snapshot (`_REAL_ENV`) is the run's. The child ends like the interpreter: `sys.exit`'s
code, 1 and the traceback on an uncaught exception, non-daemon threads joined and atexit handlers run.

The parent (pytest) talks to the helper over its stdin/stdout in JSON lines; the helper's own fds 0 and 1 point
to /dev/null, so no child can read or write the protocol.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# What `python -m trainer` would import anyway; imported once, in the helper, before any fork.
PRELOAD = ("torch", "transformers", "datasets", "fire", "yaml", "google.cloud.storage", "trainer.train",
           "trainer.outputs.inference", "trainer.evaluate", "trainer.cloud.job_spec", "trainer.outputs.report",
           "trainer.check", "trainer.storage.gcs", "trainer.checkpoints.mirror", "trainer.outputs.hub")


class ForkedCLI:
    """The pytest side: start the helper once, then `run(*args, env=..., cwd=..., stdin=...)` per case."""

    def __init__(self, environ: dict[str, str]):
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_fork"], cwd=ROOT, env=environ, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        ready = self._proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the cli_fork helper did not start (said {ready!r})")

    def run(self, *args: str, env: dict[str, str], cwd: str | os.PathLike[str], stdin: str = "",
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """One `python -m trainer *args` run with exactly the environment `env`."""
        request = {"args": list(args), "env": env, "cwd": str(cwd), "stdin": stdin, "timeout": timeout}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        reply = self._proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the cli_fork helper died (exit {self._proc.poll()})")
        result = json.loads(reply)
        return subprocess.CompletedProcess(["python", "-m", "trainer", *args], result["returncode"],
                                           result["stdout"], result["stderr"])

    def close(self) -> None:
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


# ---- the helper process ------------------------------------------------------------------------------


def _serve() -> None:
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    for name in PRELOAD:
        importlib.import_module(name)
    replies.write("ready\n")
    replies.flush()
    protocol = (requests.fileno(), replies.fileno())
    scratch = Path(tempfile.mkdtemp(prefix="cli-fork-"))  # not a TemporaryDirectory: a child's atexit would remove it
    try:
        for line in requests:
            replies.write(json.dumps(_run_forked(json.loads(line), scratch, protocol)) + "\n")
            replies.flush()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_forked(request: dict[str, Any], scratch: Path, protocol: tuple[int, int]) -> dict[str, Any]:
    stdin, stdout, stderr = (scratch / name for name in ("stdin", "stdout", "stderr"))
    stdin.write_text(request["stdin"], encoding="utf-8", errors="surrogateescape")  # "\udcff": the byte 0xff
    for path in (stdout, stderr):
        path.write_bytes(b"")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            for fd in protocol:
                os.close(fd)
            code = _child(request, stdin, stdout, stderr)
        except BaseException:  # the runner itself failed: say so where the run's stderr goes
            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + request["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.005)
    return {"returncode": os.waitstatus_to_exitcode(status),
            "stdout": stdout.read_text(encoding="utf-8", errors="replace"),
            "stderr": stderr.read_text(encoding="utf-8", errors="replace")}


def _child(request: dict[str, Any], stdin: Path, stdout: Path, stderr: Path) -> int:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.dup2(os.open(stdin, os.O_RDONLY), 0)
    os.dup2(os.open(stdout, os.O_WRONLY), 1)
    os.dup2(os.open(stderr, os.O_WRONLY), 2)
    sys.path[0] = os.getcwd()  # as `python -m` puts the working directory first
    sys.argv = ["-m", *request["args"]]  # runpy replaces argv[0] with trainer/__main__.py's path
    try:
        runpy.run_module("trainer", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    for thread in threading.enumerate():  # the interpreter's shutdown: join non-daemon threads, then atexit
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that went away (`| head`)
            stream.flush()
    return code


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    _serve()
