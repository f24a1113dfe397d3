"""One process per run: an exclusive lock on each run folder, built on the ``filelock`` package.

The lock is ``<run folder>/.lock``, an OS lock (``flock`` on Unix) taken without waiting. While it is held the
file records who holds it (pid, host, start time, command) as one JSON line, so a second taker can say which
process has the run. The kernel releases an OS lock when its process dies (``kill -9`` included), so a lock
left by a killed process is simply taken over by the next command; the stale record is overwritten then.
The lock file itself stays in place (removing it while another process waits on it would let two processes
hold locks on different inodes of the same name).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from benchmark.errors import ClbenchError

LOCK_NAME = ".lock"


class RunLocked(ClbenchError):
    """Another process holds the run folder's lock; the message names it (pid, host, since when)."""

    def __init__(self, run_dir: Path, holder: dict | None) -> None:
        self.run_dir = Path(run_dir)
        self.holder = holder
        super().__init__(f"{self.run_dir} is in use by {describe_holder(holder)}")


def lock_path(run_dir: Path) -> Path:
    """The lock file of a run folder."""
    return Path(run_dir) / LOCK_NAME


def describe_holder(holder: dict | None) -> str:
    """``"pid 123 on host node1 since 2026-01-01 10:00:00 UTC"``, or a neutral phrase when unknown."""
    if not holder:
        return "another process (holder not recorded yet)"
    since = holder.get("since")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, (int, float)) \
        else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


def read_holder(run_dir: Path) -> dict | None:
    """The holder record in the lock file, or None when absent or unreadable (a reader may race the writer)."""
    try:
        text = lock_path(run_dir).read_text()
        record = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def live_holder(run_dir: Path) -> dict | None:
    """The recorded holder when it is probably still holding the lock, without touching the lock (so a
    starting run is never refused because of the probe): a record of a process on this host that no longer
    exists is stale; a process on another host cannot be probed and counts as alive."""
    holder = read_holder(run_dir)
    if holder is None:
        return None
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # exists, owned by another user
    return holder


def _record_holder(fd: int) -> None:
    # Runs with the OS lock held (filelock's ``on_acquired``); the descriptor is borrowed, never closed here.
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
              "command": " ".join(sys.argv)[:500]}
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold the exclusive lock of ``run_dir`` (created if missing) for the ``with`` body; yields the lock path.

    Never waits: when another process holds it, :class:`RunLocked` names that process. Re-entering from
    the same process is not supported (one run is executed once per command).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(run_dir)
    lock = FileLock(path, timeout=0, blocking=False, thread_local=False, on_acquired=_record_holder,
                    preserve_lock_file=True)
    try:
        lock.acquire()
    except Timeout:
        raise RunLocked(run_dir, read_holder(run_dir)) from None
    try:
        yield path
    finally:
        try:
            # Clear the record while still holding the lock, so a finished run's folder names no holder.
            with open(path, "r+b") as handle:
                handle.truncate(0)
        except OSError:
            pass  # a full or read-only disk must not hide the body's own error; the OS lock goes anyway
        lock.release()
