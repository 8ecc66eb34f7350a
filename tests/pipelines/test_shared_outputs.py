"""Runs that share KILN_DATA_DIR never write one output at once (assets/steps.py `exclusive_outputs`):
whoever started them, the second writer of an asset's output waits, bounded, then fails naming the run
that holds it; a lock whose holder died is free."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus

from assets.resources import Kiln
from assets.steps import lock_file
from tests.pipelines.test_recovery import home_for_runs, materialize
from training.locks import exclusive, holder_of

ROOT = Path(__file__).resolve().parents[2]
DAEMON_RUN = "0d4e1f2a-daemon-retraining"
# Each asset with the lock it holds: the release's folder is releases/, a batch partition's its own.
ASSETS = [
    ("tokenizer", None, "tokenizer"),
    ("curriculum", None, "curriculum"),
    ("pretrain_stage_1", None, "pretrain_stage_1"),
    ("release", None, "release"),
    ("cleaned_batch", "batch-0001", "cleaned_batch partition batch-0001"),
]
HOLD = """
import json, sys, time
from contextlib import ExitStack
from pathlib import Path
from training.locks import exclusive
with ExitStack() as stack:
    for path, step in json.loads(sys.argv[1]):
        stack.enter_context(exclusive(Path(path), {"run_id": sys.argv[2], "step": step}, 0))
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def daemon_run(tmp_path_factory):
    """The steps of a run the daemon launched, writing the outputs of ASSETS: another process holding
    their locks, as each of its steps does while it writes (they hold nothing else of this machine's:
    a lock is all one writer shares with another)."""
    import json

    data = tmp_path_factory.mktemp("shared") / "data"
    locks = [(str(lock_file(data, asset, partition)), asset) for asset, partition, _ in ASSETS]
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, json.dumps(locks), DAEMON_RUN], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout.readline() == "held\n"
    yield data
    child.kill()
    child.wait()


@pytest.fixture(scope="module")
def kiln_defs(daemon_run):
    from pipelines.definitions import build_definitions

    kiln = Kiln(data_dir=str(daemon_run), landing_dir=str(daemon_run / "landing"), output_lock_wait_seconds=0)
    return kiln, build_definitions(kiln)


@pytest.mark.parametrize(("asset", "partition", "what"), ASSETS, ids=[a[2] for a in ASSETS])
def test_a_step_beside_another_runs_writer_of_its_output_fails_naming_that_run(kiln_defs, daemon_run, asset, partition, what):
    kiln, defs = kiln_defs
    (definition,) = [a for a in defs.assets if dg.AssetKey(asset) in a.keys]
    instance = dg.DagsterInstance.ephemeral()
    if partition:
        instance.add_dynamic_partitions("landing_batches", [partition])
    result = dg.materialize(
        [definition], instance=instance, resources={"kiln": kiln, "pipes": dg.PipesSubprocessClient()},
        partition_key=partition, raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith(f"{what} is being written by run {DAEMON_RUN} (step {asset}, pid ")
    assert f"waited 0 s (lock {lock_file(daemon_run, asset, partition)})" in message and "output_lock_wait_seconds" in message
    assert holder_of(lock_file(daemon_run, asset, partition))["run_id"] == DAEMON_RUN  # untouched


def test_a_step_holds_the_lock_of_its_output_while_it_runs(kiln_defs, tmp_path):
    """With no other writer the step runs (cleaned_corpus of an empty landing zone: the cheapest real
    step), and its lock file names its run."""
    _, defs = kiln_defs
    (definition,) = [a for a in defs.assets if dg.AssetKey("cleaned_corpus") in a.keys]
    (tmp_path / "landing").mkdir()
    kiln = Kiln(data_dir=str(tmp_path / "data"), landing_dir=str(tmp_path / "landing"), output_lock_wait_seconds=0)
    result = dg.materialize([definition], resources={"kiln": kiln, "pipes": dg.PipesSubprocessClient()})
    assert result.success
    assert holder_of(lock_file(tmp_path / "data", "cleaned_corpus")) | {"pid": 0, "since": 0} == {
        "run_id": result.run_id, "step": "cleaned_corpus", "pid": 0, "host": socket.gethostname(), "since": 0
    }


@pytest.mark.parametrize(
    ("asset", "partition"), [("tokenizer", None), ("cleaned_batch", "batch-0001"), ("tokenizer", ""), ("../x", None), ("x", ".hidden")]
)
def test_lock_files_lie_beside_the_outputs_or_are_refused(tmp_path, asset, partition):
    if asset == "tokenizer" and partition is None:
        assert lock_file(tmp_path, asset) == tmp_path / ".tokenizer.lock"
    elif asset == "cleaned_batch":
        assert lock_file(tmp_path, asset, partition) == tmp_path / "cleaned_batch" / ".batch-0001.lock"
    else:
        with pytest.raises(ValueError, match="cannot name a lock after"):
            lock_file(tmp_path, asset, partition)


@pytest.mark.slow
def test_two_materializes_of_one_step_at_once(tmp_path):
    """`dagster asset materialize` twice, as by hand beside CI: the second fails at once (no wait)
    naming the first run, which goes on; once the first is killed, its lock is free."""
    home = home_for_runs(tmp_path)
    dg.DagsterInstance.from_config(str(home)).dispose()  # the storage exists before two processes open it
    lock = lock_file(tmp_path / "data", "sleeper")
    first = materialize(home, sleep=600, asset="sleeper")
    try:
        deadline = time.monotonic() + 120
        while not holder_of(lock).get("run_id"):
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
            time.sleep(0.2)
        holder = holder_of(lock)
        second = materialize(home, sleep=0, asset="sleeper", KILN_OUTPUT_LOCK_WAIT_SECONDS="0")
        out, _ = second.communicate(timeout=120)
        assert second.returncode != 0
        assert f"sleeper is being written by run {holder['run_id']} (step sleeper, pid {holder['pid']} on " in out
        with dg.DagsterInstance.from_config(str(home)) as instance:
            runs = {run.run_id: run.status for run in instance.get_runs()}
        assert runs.pop(holder["run_id"]) == DagsterRunStatus.STARTED and list(runs.values()) == [DagsterRunStatus.FAILURE]
        assert first.poll() is None
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the run worker and its step: the kernel frees the lock
        first.wait()
    with exclusive(lock, {"run_id": "next"}, 30):  # its step process may take a moment to die
        assert holder_of(lock)["run_id"] == "next"
