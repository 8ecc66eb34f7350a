"""One writer per output (training/locks.py): a second writer waits, bounded, then fails naming the
holder; the kernel releases a lock whose holder dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from training.locks import Busy, describe, exclusive, holder_of

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from pathlib import Path
from training.locks import exclusive
with exclusive(Path(sys.argv[1]), {"run_id": "daemon-run", "step": "tokenizer"}, 0):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding `tmp_path/.tokenizer.lock`, as a run's step does; killed at the end."""
    lock = tmp_path / ".tokenizer.lock"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline() == "held\n"
    yield lock, child
    if child.poll() is None:
        child.kill()
    child.wait()


def test_the_holder_is_written_into_the_lock_file(tmp_path):
    lock = tmp_path / "data" / ".tokenizer.lock"  # the folder is made
    with exclusive(lock, {"run_id": "r1", "step": "tokenizer"}, 0):
        held = holder_of(lock)
        assert held["run_id"] == "r1" and held["step"] == "tokenizer"
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["since"] > 0
    assert holder_of(lock)["run_id"] == "r1"  # the last holder's name stays; the lock does not
    with exclusive(lock, {"run_id": "r2"}, 0):
        assert holder_of(lock)["run_id"] == "r2" and "step" not in holder_of(lock)


@pytest.mark.parametrize("wait", [0, 0.2])
def test_a_second_writer_fails_naming_the_holder(holder, wait):
    lock, child = holder
    messages = []
    with pytest.raises(Busy) as busy:
        with exclusive(lock, {"run_id": "by-hand"}, wait, what="tokenizer", on_wait=messages.append, poll_seconds=0.05):
            pytest.fail("two writers held one output")
    message = str(busy.value)
    assert message.startswith(f"tokenizer is being written by run daemon-run (step tokenizer, pid {child.pid} on {socket.gethostname()}, since ")
    assert message.endswith(f"; waited {wait:g} s") and busy.value.holder["run_id"] == "daemon-run"
    # Told once whom it waits for when it waits at all.
    assert messages == ([] if wait == 0 else [f"tokenizer is being written by {describe(busy.value.holder)}: waiting up to 0.2 s for it"])
    assert holder_of(lock)["run_id"] == "daemon-run"  # the loser wrote nothing


def test_a_dead_holder_releases_the_lock(holder):
    lock, child = holder
    os.kill(child.pid, signal.SIGKILL)  # no cleanup runs: the kernel releases the flock
    child.wait()
    with exclusive(lock, {"run_id": "next"}, 0):
        assert holder_of(lock)["run_id"] == "next"


def test_a_waiting_writer_goes_on_when_the_holder_lets_go(holder):
    lock, child = holder
    messages = []

    def holder_ends(message: str) -> None:  # told once the writer waits: the holder ends then
        messages.append(message)
        child.kill()

    with exclusive(lock, {"run_id": "next"}, 60, on_wait=holder_ends, poll_seconds=0.05):
        assert holder_of(lock)["run_id"] == "next"
    assert len(messages) == 1 and "run daemon-run" in messages[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "another process (it has not written its name yet)"), (b"not json", "another process (it has not written its name yet)"),
     (b'{"pid": 7, "host": "h"}', "a process outside any run (pid 7 on h)"), (b"x" * 10_000, "another process (it has not written its name yet)")],
)
def test_what_a_lock_file_says_is_read_boundedly(tmp_path, content, expected):
    lock = tmp_path / "x.lock"
    lock.write_bytes(content)
    assert describe(holder_of(lock)) == expected


def test_a_negative_wait_is_refused(tmp_path):
    with pytest.raises(ValueError, match="wait_seconds must be >= 0"):
        with exclusive(tmp_path / "x.lock", {}, -1):
            pass
