"""The bucket lease of a JOB_DIR: one run at a time writes its checkpoints, on any `trainer.storage.base.Store`.

`lease.json` beside the checkpoints names its owner (run id, host, pid, a token per claim) and a heartbeat
time that a background thread refreshes every LEASE_SECONDS. Another run refuses with one line while the
lease is live. A lease is taken over, with a warning, when
- its heartbeat is older than `STALE_AFTER` x LEASE_SECONDS (the owner is gone: a preempted VM never
  releases it), or
- its owner ran on this machine (same boot and pid namespace) and that process is gone (a kill -9 here: no
  need to wait), or
- its owner is an earlier attempt of the same Vertex AI job and run (Vertex restarts a preempted or failed
  replica only once the old one is gone), so a restarted worker resumes at once, not minutes later.
The tradeoff: a shorter LEASE_SECONDS finds a dead owner sooner but lets a live owner that cannot reach the
bucket for 3 x LEASE_SECONDS lose its lease. Heartbeat times are the owners' clocks: skew between machines
shortens or lengthens the timeout by as much.

No preconditions: the storage emulator ignores `if_generation_match`, so the lease is written, read back after
`SETTLE_SECONDS` and kept only if it still carries our token; each heartbeat checks the token again, and a run
that finds its lease taken logs an error and stops refreshing it. Two runs that start within a request's
latency of each other can both pass the read-back; the heartbeat check finds it within LEASE_SECONDS.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from trainer.errors import UserError
from trainer.layout import LEASE_FILE
from trainer.storage.base import NotFound, Store
from trainer.storage.checksums import IntegrityError

logger = logging.getLogger(__name__)

STALE_AFTER = 3  # heartbeats missed before a lease is stale
SETTLE_SECONDS = 1.0  # between writing the lease and reading it back
RELEASE_TIMEOUT = 10.0  # seconds the end of a run waits to delete its lease (storage may be down)


def this_machine() -> str:
    """This boot of this machine and this pid namespace ('' where unknown): pids compare only within it."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone too: it only waits for its parent
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner(run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "machine": this_machine(),
            "job": os.environ.get("CLOUD_ML_JOB_ID", ""), "token": secrets.token_hex(8)}


def takeover_reason(lease: dict[str, Any], me: dict[str, Any], now: float, stale_after: float) -> str | None:
    """Why `me` may take `lease` over, or None while its owner may still be running."""
    age = now - float(lease.get("heartbeat", 0))
    if age > stale_after:
        return f"its heartbeat is {age:.0f} s old (stale after {stale_after:.0f} s)"
    if lease.get("machine") and lease.get("machine") == me["machine"] and not process_alive(int(lease.get("pid", 0))):
        return f"its process {lease.get('pid')} on this machine is gone"
    if lease.get("job") and lease.get("job") == me["job"] and lease.get("run_id") == me["run_id"]:
        return f"it is an earlier attempt of Vertex AI job {me['job']}"
    return None


class Lease:
    def __init__(self, store: Store, uri: Any, me: dict[str, Any], interval: float,
                 heartbeat_store: Store | None = None) -> None:
        """`store` takes the lease; `heartbeat_store` (default `store`), one that gives up sooner, refreshes and
        releases it, so that an outage is reported within an interval and never holds up the end of the run."""
        self.store, self.uri, self.me, self.interval = store, uri, me, interval
        self.beats = heartbeat_store or store
        self.stale_after = STALE_AFTER * interval
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._acquired = time.time()

    def read(self, store: Store | None = None) -> dict[str, Any] | None:
        try:
            lease = json.loads((store or self.store).read_bytes(self.uri))
        except NotFound:
            return None
        except (ValueError, IntegrityError) as err:
            logger.warning("%s is unreadable (%s); treating it as absent", self.uri, err)
            return None
        return lease if isinstance(lease, dict) else None

    def acquire(self) -> None:
        """Take the lease (or take it over) and start the heartbeat; `UserError` while another run holds it."""
        held = self.read()
        if held and held.get("token") != self.me["token"]:
            reason = takeover_reason(held, self.me, time.time(), self.stale_after)
            if reason is None:
                raise UserError(f"{self._where()} is in use by "
                                f"{_describe(held)}, last seen {_age(held):.0f} s ago; wait for it to end, or use "
                                f"another JOB_DIR (a lease not refreshed for {self.stale_after:.0f} s is taken over)")
            logger.warning("taking over the lease of %s from %s: %s", self._where(), _describe(held), reason)
        self._write()
        time.sleep(SETTLE_SECONDS)
        now_held = self.read()
        if not now_held or now_held.get("token") != self.me["token"]:
            raise UserError(f"{self._where()} was claimed by {_describe(now_held or {})} at the same moment; "
                            "wait for it to end, or use another JOB_DIR")
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def release(self, timeout: float = RELEASE_TIMEOUT) -> None:
        """Stop the heartbeat and delete the lease if it is still ours; gives up after `timeout` seconds."""
        give_up = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        deleter = threading.Thread(target=self._delete, name="lease-release", daemon=True)
        deleter.start()
        deleter.join(max(0.0, give_up - time.monotonic()))
        if deleter.is_alive():
            logger.warning("could not release %s within %.0f s; it goes stale after %.0f s", self.uri,
                           timeout, self.stale_after)

    # ---------------------------------------------------------------- internals

    def _where(self) -> str:
        return str(self.uri).removesuffix(f"/{LEASE_FILE}")

    def _write(self, store: Store | None = None) -> None:
        body = {**self.me, "acquired": self._acquired, "heartbeat": time.time()}
        (store or self.store).upload_bytes(json.dumps(body).encode(), self.uri)

    def _delete(self) -> None:
        try:
            held = self.read(self.beats)
            if held and held.get("token") == self.me["token"]:
                self.beats.delete(self.uri)
        except Exception as err:  # the run is over; a lease left behind goes stale
            logger.warning("could not release %s: %s", self.uri, err)

    def _beat(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                held = self.read(self.beats)
                if self._stop.is_set():
                    return
                if held and held.get("token") != self.me["token"]:
                    logger.error("the lease of %s was taken over by %s; this run no longer owns it",
                                 self._where(), _describe(held))
                    self.lost = True
                    return
                self._write(self.beats)
            except Exception as err:  # storage briefly down: training goes on, retry next beat
                if not failing:
                    logger.warning("could not refresh the lease %s (%s: %s); retrying every %g s", self.uri,
                                   type(err).__name__, err, self.interval)
                failing = True
                continue
            if failing:
                logger.info("the lease %s is refreshed again", self.uri)
                failing = False


def _describe(lease: dict[str, Any]) -> str:
    return f"run {lease.get('run_id', '?')} (pid {lease.get('pid', '?')} on {lease.get('host', '?')})"


def _age(lease: dict[str, Any]) -> float:
    return time.time() - float(lease.get("heartbeat", 0))
