"""One writer per output: an exclusive `flock` on a file beside the output, naming its holder.

Every process that writes one of kiln's outputs (a run the daemon launched, `dagster asset
materialize` by hand, a test) holds the output's lock while it writes. A second writer waits for it,
for at most `wait_seconds`, then fails with `Busy`, whose message names the holder (its run, step,
process and host, and since when), read from the lock file where the holder wrote them.

The lock is the kernel's (`fcntl.flock` on an open file description): it is released when the holder
closes the file or dies, however it dies (kill -9, the OOM killer), so a dead writer never blocks the
next one and nothing needs cleaning up. The lock file stays behind between writers (deleting it would
let two writers lock two different files). flock is per machine on local file systems; on a volume
that several hosts mount, it excludes across hosts only where the file system forwards it (NFSv4,
CephFS, Lustre with flock enabled).

`filelock` is not used: it truncates the lock file when it opens it, before it holds the lock, which
would erase the holder's name while the holder still runs. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path

MAX_HOLDER_BYTES = 4096
"""How much of a lock file is read for its holder's name; a holder writes a few hundred bytes."""


class Busy(RuntimeError):
    """The output is being written by another process, which held it for the whole wait."""

    def __init__(self, message: str, holder: Mapping[str, object]):
        super().__init__(message)
        self.holder = dict(holder)


def holder_of(lock_file: Path) -> dict:
    """What the lock file says about its current (or last) holder; {} when nothing readable is there
    (a holder that has not written yet, or a file that is not a lock of kiln's)."""
    try:
        with open(lock_file, "rb") as f:
            raw = f.read(MAX_HOLDER_BYTES)
        value = json.loads(raw)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def describe(holder: Mapping[str, object]) -> str:
    """`run <id> (step <key>, pid <n> on <host>, since <UTC time>)`, with what is known."""
    if not holder:
        return "another process (it has not written its name yet)"
    details = []
    if holder.get("step"):
        details.append(f"step {holder['step']}")
    if holder.get("pid"):
        details.append(f"pid {holder['pid']} on {holder.get('host', 'an unknown host')}")
    if isinstance(holder.get("since"), (int, float)):
        details.append("since " + datetime.fromtimestamp(holder["since"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    who = f"run {holder['run_id']}" if holder.get("run_id") else "a process outside any run"
    return f"{who} ({', '.join(details)})" if details else who


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def exclusive(
    lock_file: Path,
    holder: Mapping[str, object],
    wait_seconds: float,
    *,
    what: str | None = None,
    on_wait: Callable[[str], None] | None = None,
    poll_seconds: float = 0.5,
) -> Iterator[None]:
    """Holds the lock of `lock_file` (created with its folder when missing) while the block runs.

    `holder` (a run id, a step key: whatever names the writer; the pid, the host and the time are
    added) is written into the file once the lock is held. When another process holds it, waits up
    to `wait_seconds` (0: not at all), telling `on_wait` once whom it waits for, then raises `Busy`
    naming the holder. `what` names the output in messages (default: the lock file's name)."""
    if wait_seconds < 0:
        raise ValueError(f"wait_seconds must be >= 0, not {wait_seconds}")
    what = what or lock_file.name
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        if not _try_lock(fd):
            if on_wait is not None and wait_seconds > 0:
                on_wait(f"{what} is being written by {describe(holder_of(lock_file))}: waiting up to {wait_seconds:g} s for it")
            while True:
                if time.monotonic() >= deadline:
                    other = holder_of(lock_file)
                    raise Busy(f"{what} is being written by {describe(other)}; waited {wait_seconds:g} s", other)
                time.sleep(min(poll_seconds, max(deadline - time.monotonic(), 0.0)))
                if _try_lock(fd):
                    break
        record = {**holder, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record, sort_keys=True).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the holder's name stays as the last writer's
