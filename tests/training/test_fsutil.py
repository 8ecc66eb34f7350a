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


# Where a writer replacing a folder is killed (SIGKILL, in a child process), and what `path` holds then
# and after the next writer's recovery: "v1" the previous version, "v2" the new one, None nothing.
# "exchange": the filesystem swaps the two names in one step (renameat2 RENAME_EXCHANGE, Linux on ext4,
# xfs, btrfs, tmpfs); "two renames": where it cannot, the previous version is renamed aside first.
_KILL = "os.kill(os.getpid(), signal.SIGKILL)"
_POINTS = {
    "written": "",  # killed inside the with block, before the swap
    "exchanged": f"real = fsutil._exchange\nfsutil._exchange = lambda a, b: (real(a, b), {_KILL})",
    "deleting": "shutil.rmtree = lambda p, *a, **k: (os.unlink(os.path.join(p, 'part')), os.kill(os.getpid(), signal.SIGKILL))",
    "aside": f"fsutil._exchange = lambda a, b: False\nreal = os.rename\nos.rename = lambda a, b: (real(a, b), {_KILL})",
    "renamed in": (f"fsutil._exchange = lambda a, b: False\nreal, n = os.rename, []\n"
                   f"os.rename = lambda a, b: (real(a, b), n.append(1), len(n) == 2 and {_KILL})"),
    "deleting aside": ("fsutil._exchange = lambda a, b: False\n"
                       "shutil.rmtree = lambda p, *a, **k: (os.unlink(os.path.join(p, 'part')), os.kill(os.getpid(), signal.SIGKILL))"),
}


def _kill_while_replacing(path: Path, point: str) -> None:
    code = "\n".join([
        "import os, shutil, signal, sys; from pathlib import Path; from training import fsutil",
        _POINTS[point],
        f"with fsutil.atomic_path(Path({str(path)!r})) as tmp:",
        "    tmp.mkdir(); (tmp / 'part').write_text('v2'); (tmp / 'other').write_text('v2')",
        f"    {_KILL if point == 'written' else 'pass'}",
        "sys.exit('not killed')",
    ])
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == -9, run.stderr


def _version(path: Path) -> str | None:
    if not path.exists():
        return None
    [version] = {(path / name).read_text() for name in ("part", "other")}  # whole: both files of one version
    return version


@pytest.mark.parametrize(
    "point, at_kill, recovered",
    [("written", "v1", "v1"), ("exchanged", "v2", "v2"), ("deleting", "v2", "v2"),
     ("aside", None, "v2"), ("renamed in", "v2", "v2"), ("deleting aside", "v2", "v2")],
)
def test_a_writer_killed_at_any_point_of_a_folder_swap_loses_no_version(tmp_path, point, at_kill, recovered):
    path = tmp_path / "out"
    with fsutil.atomic_path(path) as tmp:
        tmp.mkdir(), (tmp / "part").write_text("v1"), (tmp / "other").write_text("v1")
    _kill_while_replacing(path, point)
    assert _version(path) == at_kill
    assert len(list(tmp_path.iterdir())) > 1  # the killed writer's leftovers
    removed = fsutil.remove_dead_temps(tmp_path)
    assert removed and _version(path) == recovered and [p.name for p in tmp_path.iterdir()] == ["out"]
    # The next writer of the path finishes such a swap as well, and then writes its own version.
    _kill_while_replacing(path, point)
    with fsutil.atomic_path(path) as tmp:
        assert _version(path) == ("v2" if point != "written" else recovered)
        tmp.mkdir(), (tmp / "part").write_text("v3"), (tmp / "other").write_text("v3")
    assert _version(path) == "v3" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_remove_dead_temps_keeps_live_and_other_hosts_writers(tmp_path):
    """Packaging cleans a whole folder (releases/) by the same rule: a running writer's temporary stays."""
    dead = tmp_path / f".20261122-130000-bbbbbbbb.tmp-{fsutil._HOST}-999999999-0123abcd"
    live = tmp_path / f".20261122-140000-cccccccc.tmp-{fsutil._HOST}-{os.getpid()}-0123abcd"
    remote = tmp_path / ".20261122-150000-dddddddd.tmp-another-host-1-0123abcd"
    for p in (dead, live, remote):
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"half")
    assert fsutil.remove_dead_temps(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, remote.name])


def test_a_reader_never_finds_the_folder_missing_while_it_is_replaced(tmp_path):
    """A reader in another process opens the folder's files while a writer replaces it 300 times: every
    read finds a whole version (before the exchange, a rename moved the folder aside first and a reader
    could find nothing there)."""
    path = tmp_path / "out"
    with fsutil.atomic_path(path) as tmp:
        tmp.mkdir(), (tmp / "part").write_text("0")
    reader = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib\np = pathlib.Path(sys.argv[1]) / 'part'\n"
         "print(p.read_text(), flush=True)\nwhile p.read_text() != '300': pass", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert reader.stdout.readline() == "0\n"  # reading before the first replacement
    for i in range(1, 301):
        with fsutil.atomic_path(path) as tmp:
            tmp.mkdir(), (tmp / "part").write_text(str(i))
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
