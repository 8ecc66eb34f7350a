"""Atomic writes (training/fsutil.py): what a writer killed mid-write leaves is removed by the next
writer of the same path, and only that."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import fsutil

ROOT = Path(__file__).resolve().parents[2]


def _killed_writer(path: Path, folder: bool) -> None:
    """A process that dies (SIGKILL) halfway through writing `path` atomically."""
    write = "(tmp.mkdir(), (tmp / 'part').write_text('half'))" if folder else "tmp.write_text('half')"
    code = (f"import os, signal; from pathlib import Path; from training.fsutil import atomic_path\n"
            f"with atomic_path(Path({str(path)!r})) as tmp:\n    {write}; os.kill(os.getpid(), signal.SIGKILL)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == -9, run.stderr


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_the_next_writer_removes_what_a_killed_one_left(tmp_path, folder):
    path = tmp_path / ("out" if folder else "out.parquet")
    _killed_writer(path, folder)
    [left] = tmp_path.iterdir()
    assert left.name.startswith(f".{path.name}.tmp-") and not path.exists()
    # Temporaries that are not a dead writer's of this path stay: a running writer (this process),
    # a writer on another machine sharing the folder, another path's.
    live = tmp_path / f".{path.name}.tmp-{fsutil._HOST}-{os.getpid()}-0123abcd"
    remote = tmp_path / f".{path.name}.tmp-another-host-1-0123abcd"
    other = tmp_path / f".other.tmp-{fsutil._HOST}-999999999-0123abcd"
    for p in (live, remote, other):
        p.write_text("in progress")
    with fsutil.atomic_path(path) as tmp:
        (tmp.mkdir(), (tmp / "part").write_text("whole")) if folder else tmp.write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, live.name, remote.name, other.name])
    assert (path / "part" if folder else path).read_text() == "whole"
