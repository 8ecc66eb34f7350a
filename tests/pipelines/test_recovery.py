"""Runs that die do not wedge kiln (pipelines/recovery.py): a killed `dagster asset materialize` is
marked failed and its `gpu` slot freed when the next run starts; live runs, and runs of another
machine, are never touched."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
import yaml
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.utils import make_new_run_id

from assets.gpus import EXTRA_SLOT, GPU_POOL, gpu_slots
from pipelines.recovery import WORKER_TAG, dead_run_sensor, reap_dead_runs, this_machine

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "tests" / "pipelines" / "dead_run_job.py"
JOB_NAME = "kiln_test"


def home_for_runs(parent: Path) -> Path:
    home = parent / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One instance for the unit tests (creating one takes a second), wiped between them."""
    home = home_for_runs(tmp_path_factory.mktemp("recovery"))
    instance = dg.DagsterInstance.from_config(str(home))
    yield home, instance
    instance.dispose()


@pytest.fixture
def home(shared):
    return shared[0]


@pytest.fixture
def instance(shared):
    instance = shared[1]
    instance.wipe()  # runs, events and pools
    instance.event_log_storage.initialize_concurrency_limit_to_default(GPU_POOL)
    return instance


# --- helpers building runs as a run worker would leave them -------------------------------------


def _event(instance, run_id: str, kind: DagsterEventType, pid: int | None, at: float | None = None, step=None):
    event = DagsterEvent(kind.value, JOB_NAME, pid=pid, step_key=step)
    instance.report_dagster_event(event, run_id, timestamp=at)


def _record(run: str, pid: int, started: float | None = None, **elsewhere) -> dict:
    """The `kiln/worker` tag kiln's executor writes for the worker `pid` (default start time: the live
    process's); `elsewhere` overrides where it ran (host, boot_id, pid_namespace, run_id)."""
    started = psutil.Process(pid).create_time() if started is None else started
    record = {"run_id": run, **this_machine(), "pid": pid, "started_after_boot": started - psutil.boot_time(), **elsewhere}
    return {WORKER_TAG: json.dumps(record)}


def _run(
    instance, pid: int | None, *, kind=DagsterEventType.RUN_START, started: float | None = None, recorded=True, **elsewhere
) -> str:
    """A run whose worker `pid` (recorded as kiln's executor does, unless not `recorded`) wrote `kind`
    (RUN_START: STARTED)."""
    run_id = make_new_run_id()
    if pid is not None and recorded and started is None and not psutil.pid_exists(pid):
        started = time.time() - 5  # a dead worker: its start time as recorded
    tags = _record(run_id, pid, started, **elsewhere) if pid is not None and recorded else {}
    instance.add_run(DagsterRun(job_name=JOB_NAME, run_id=run_id, tags=tags))
    _event(instance, run_id, kind, pid)
    return run_id


def _claim(instance, run_id: str, step: str) -> bool:
    return instance.event_log_storage.claim_concurrency_slot(GPU_POOL, run_id, step).is_claimed


def _pool(instance):
    info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
    return {(c.run_id, c.step_key) for c in info.claimed_slots}, {(p.run_id, p.step_key) for p in info.pending_steps}


def _status(instance, run_id: str) -> DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def _failure_message(instance, run_id: str, kind=DagsterEventType.RUN_FAILURE) -> str:
    (entry,) = instance.event_log_storage.get_logs_for_run(run_id, of_type=kind)
    return entry.dagster_event.message


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def processes():
    """Child processes started by a test, killed and waited for at the end."""
    children: list[subprocess.Popen] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


# --- unit tests on an instance ------------------------------------------------------------------


def test_a_live_run_is_never_reaped(instance):
    run_id = _run(instance, os.getpid())  # this process, which started before writing the event
    assert _claim(instance, run_id, "gpu_step")
    assert reap_dead_runs(instance) == []
    assert _status(instance, run_id) == DagsterRunStatus.STARTED
    assert _pool(instance)[0] == {(run_id, "gpu_step")}


def test_a_live_run_is_not_reaped_after_the_clock_is_stepped(instance, monkeypatch):
    """psutil's start times are boot time plus ticks, and the boot time moves with the wall clock (an NTP
    step, a resumed VM): the recorded worker is matched by its start after boot, which does not move."""
    run_id = _run(instance, os.getpid())
    create_time, boot_time = psutil.Process.create_time, psutil.boot_time
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: create_time(self) + 60)
    monkeypatch.setattr(psutil, "boot_time", lambda: boot_time() + 60)
    assert reap_dead_runs(instance) == []
    assert _status(instance, run_id) == DagsterRunStatus.STARTED


def test_a_run_whose_worker_is_gone_is_failed_and_its_slot_and_queued_claims_freed(instance):
    dead = _run(instance, _dead_pid())
    assert _claim(instance, dead, "gpu_a")
    assert not _claim(instance, dead, "gpu_b")  # queued behind gpu_a
    waiting = _run(instance, os.getpid())
    assert not _claim(instance, waiting, "gpu_step")  # blocked by the dead run: the wedge

    assert reap_dead_runs(instance) == [dead]
    assert _status(instance, dead) == DagsterRunStatus.FAILURE
    message = _failure_message(instance, dead)
    assert message.startswith("kiln: run worker pid ") and "is gone" in message and "slots freed" in message
    claimed, pending = _pool(instance)
    assert not any(run == dead for run, _ in claimed | pending)
    assert _claim(instance, waiting, "gpu_step")  # the live run gets the slot now
    assert _status(instance, waiting) == DagsterRunStatus.STARTED
    assert reap_dead_runs(instance) == []  # once


def test_a_zombie_worker_is_dead(instance, processes):
    child = subprocess.Popen(["sleep", "60"])
    processes.append(child)
    run_id = _run(instance, child.pid)
    assert reap_dead_runs(instance) == []  # alive
    os.kill(child.pid, signal.SIGKILL)
    time.sleep(0.2)  # not waited for: a zombie whose /proc entry remains
    assert Path(f"/proc/{child.pid}").exists()
    assert reap_dead_runs(instance) == [run_id]


def test_a_reused_pid_is_not_the_worker(instance, processes):
    child = subprocess.Popen(["sleep", "60"])  # started now, long after the recorded worker
    processes.append(child)
    run_id = _run(instance, child.pid, started=time.time() - 600)
    assert reap_dead_runs(instance) == [run_id]
    assert "the pid now belongs to another process" in _failure_message(instance, run_id)


def test_runs_stuck_starting_and_slots_of_ended_runs_are_dagsters(instance):
    """Run monitoring (the daemon) fails runs stuck STARTING and frees the slots of ended runs; kiln
    judges neither a STARTING run nor a worker it has no record of."""
    monitoring = yaml.safe_load((ROOT / "dagster.yaml").read_text())["run_monitoring"]
    assert monitoring["enabled"] and monitoring["start_timeout_seconds"] > 0
    assert monitoring["free_slots_after_run_end_seconds"] > 0
    starting = _run(instance, _dead_pid(), kind=DagsterEventType.RUN_STARTING)
    unrecorded = _run(instance, _dead_pid(), recorded=False)
    assert reap_dead_runs(instance) == []
    assert _status(instance, starting) == DagsterRunStatus.STARTING
    assert _status(instance, unrecorded) == DagsterRunStatus.STARTED


@pytest.mark.parametrize(
    "elsewhere",
    [{"host": "another-host"}, {"boot_id": "an-earlier-boot"}, {"pid_namespace": "pid:[1]"}, {"run_id": "its-parent-run"}],
    ids=["another host", "another boot", "another pid namespace", "a record inherited from a retried run"],
)
def test_a_run_recorded_elsewhere_is_not_reaped(instance, elsewhere):
    """With the instance on a volume two hosts share, a live run of the other host has a pid that
    does not exist here: it must not be judged dead (nor one from before a reboot, nor one whose tag
    a retry copied from its parent)."""
    run_id = _run(instance, _dead_pid(), **elsewhere)
    assert _claim(instance, run_id, "gpu_step")
    assert reap_dead_runs(instance) == []
    assert _status(instance, run_id) == DagsterRunStatus.STARTED
    assert _pool(instance)[0] == {(run_id, "gpu_step")}
    # Failed on its own machine with its slot still held: not freed from here either.
    instance.report_run_failed(instance.get_run_by_id(run_id), "failed on its own machine, its slot still held")
    assert reap_dead_runs(instance) == [] and _pool(instance)[0] == {(run_id, "gpu_step")}


def test_a_run_whose_worker_died_is_retried_and_one_whose_step_failed_is_not(instance):
    """dagster.yaml's run retries resume a run that died (a lost machine, the OOM killer) from its
    failed step, and leave a step's own failure (a NaN loss, a failed check) alone: a run the reaper
    fails is the first kind."""
    from dagster._core.events import JobFailureData, RunFailureReason
    from dagster._core.storage.tags import WILL_RETRY_TAG

    dead = _run(instance, _dead_pid())
    assert reap_dead_runs(instance) == [dead]
    failed = _run(instance, os.getpid())
    step_failure = JobFailureData(error=None, failure_reason=RunFailureReason.STEP_FAILURE)
    instance.report_run_failed(instance.get_run_by_id(failed), "a step failed: the loss is NaN", step_failure)
    assert instance.get_run_by_id(dead).tags.get(WILL_RETRY_TAG) == "true"
    assert instance.get_run_by_id(failed).tags.get(WILL_RETRY_TAG) == "false"


def test_a_canceling_run_whose_worker_is_gone_is_canceled(instance):
    run_id = _run(instance, _dead_pid())
    assert _claim(instance, run_id, "gpu_step")
    instance.report_run_canceling(instance.get_run_by_id(run_id))
    assert reap_dead_runs(instance) == [run_id]
    assert _status(instance, run_id) == DagsterRunStatus.CANCELED  # not failed: no retry of a cancel
    assert "marked canceled" in _failure_message(instance, run_id, DagsterEventType.RUN_CANCELED)
    assert _pool(instance) == (set(), set())


def test_finished_runs_holding_slots_free_them_unless_their_worker_lives(instance):
    dead = _run(instance, _dead_pid())
    assert _claim(instance, dead, "gpu_step")
    instance.report_run_failed(instance.get_run_by_id(dead), "failed by its code server, which saw it die")
    live = _run(instance, os.getpid())
    assert not _claim(instance, live, "gpu_step")
    instance.report_run_failed(instance.get_run_by_id(live), "marked failed by hand, still running")

    assert reap_dead_runs(instance) == []  # nothing newly failed...
    claimed, pending = _pool(instance)
    assert claimed == set() and pending == {(live, "gpu_step")}  # ...but the dead one's slot is free
    (freed,) = [e for e in instance.all_logs(dead, of_type=DagsterEventType.ENGINE_EVENT) if "kiln:" in e.message]
    assert "no process of this FAILURE run is alive; freed the 1 pool slot(s)" in freed.message


@pytest.mark.slow
def test_orphaned_step_processes_are_interrupted_before_their_slot_is_freed(instance, processes):
    worker = _run(instance, _dead_pid())
    # SIGINT's action set explicitly in both: a suite started in the background inherits it ignored.
    sigint = "import signal, time; signal.signal(signal.SIGINT, signal.{}); print(1, flush=True); time.sleep(60)"
    orphan = subprocess.Popen([sys.executable, "-c", sigint.format("SIG_DFL")], stdout=subprocess.PIPE)  # dies of SIGINT
    stubborn = subprocess.Popen([sys.executable, "-c", sigint.format("SIG_IGN")], stdout=subprocess.PIPE)
    processes += [orphan, stubborn]
    orphan.stdout.readline()  # their SIGINT actions are set
    stubborn.stdout.readline()
    _event(instance, worker, DagsterEventType.STEP_START, orphan.pid, step="gpu_a")
    _event(instance, worker, DagsterEventType.STEP_START, stubborn.pid, step="gpu_b")
    assert _claim(instance, worker, "gpu_a")
    assert not _claim(instance, worker, "gpu_b")

    assert reap_dead_runs(instance, orphan_wait_seconds=1) == [worker]
    assert orphan.wait(timeout=5) == -signal.SIGINT
    assert stubborn.poll() is None
    message = _failure_message(instance, worker)
    assert f"Interrupted its orphaned step processes: gpu_a (pid {orphan.pid}), gpu_b (pid {stubborn.pid})." in message
    assert f"Still running, their slots are freed once they exit: gpu_b (pid {stubborn.pid})." in message
    claimed, pending = _pool(instance)
    assert claimed == set() and pending == {(worker, "gpu_b")}  # gpu_b's process still runs

    stubborn.kill()
    stubborn.wait()
    assert reap_dead_runs(instance) == []  # already failed; the slot is freed now
    assert _pool(instance) == (set(), set())


def test_the_sensor_reaps_under_the_daemon(instance):
    sensor = dead_run_sensor()
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING and sensor.minimum_interval_seconds == 30
    result = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and result.skip_message == "no dead runs"

    dead = _run(instance, _dead_pid())
    live = _run(instance, os.getpid())
    result = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and result.skip_message == f"reaped 1 dead run(s): {dead}"
    assert _status(instance, dead) == DagsterRunStatus.FAILURE
    assert _status(instance, live) == DagsterRunStatus.STARTED

    failed = _run(instance, _dead_pid())  # failed by its code server: the slot is still held
    assert _claim(instance, failed, "gpu_step")
    instance.report_run_failed(instance.get_run_by_id(failed))
    result = sensor(dg.build_sensor_context(instance=instance))
    assert result.skip_message == f"freed the pool slots of 1 finished run(s): {failed}"
    assert _pool(instance) == (set(), set())


# --- the real thing: kill -9 a `dagster asset materialize` holding the gpu slot ------------------


def materialize(home: Path, sleep: float, asset: str = "gpu_sleeper", **env: str) -> subprocess.Popen:
    """`dagster asset materialize` of one asset of dead_run_job.py, in its own session, KILN_DATA_DIR
    beside DAGSTER_HOME; `env` adds variables (KILN_OUTPUT_LOCK_WAIT_SECONDS, say)."""
    env = {
        **os.environ, "DAGSTER_HOME": str(home), "KILN_DATA_DIR": str(home.parent / "data"), "KILN_TEST_SLEEP": str(sleep),
        "PYTHONPATH": str(ROOT), **env,
    }
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-f", str(JOB), "--select", asset]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _holding_the_slot(home: Path, child: subprocess.Popen, deadline: float) -> str:
    """Waits until a run is STARTED, holds the gpu slot and its step runs; returns its id."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while time.monotonic() < deadline:
            assert child.poll() is None, child.stdout.read()
            runs = instance.get_runs()
            if runs and instance.event_log_storage.get_concurrency_keys():
                claimed, _ = _pool(instance)
                started = instance.event_log_storage.get_logs_for_run(
                    runs[0].run_id, of_type=DagsterEventType.STEP_START
                )
                if runs[0].status == DagsterRunStatus.STARTED and claimed and started:
                    assert claimed == {(runs[0].run_id, "gpu_sleeper")}
                    return runs[0].run_id
            time.sleep(0.2)
    raise AssertionError("the first run never held the gpu slot")


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["session", "worker"])
def test_a_killed_materialize_does_not_wedge_the_next_one(tmp_path, kill):
    """`session`: the run worker and its step processes die together (killpg, a lost machine);
    `worker`: only the `dagster` process dies (kill -9 PID, the OOM killer) and its step process
    lives on as an orphan, still holding the GPU."""
    home = home_for_runs(tmp_path)
    dg.DagsterInstance.from_config(str(home)).dispose()  # the storage exists before two processes open it
    first = materialize(home, sleep=600)
    sessions = [first]
    try:
        dead = _holding_the_slot(home, first, time.monotonic() + 60)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert reap_dead_runs(instance) == []  # alive: never reaped
            assert _status(instance, dead) == DagsterRunStatus.STARTED
        if kill == "session":
            os.killpg(first.pid, signal.SIGKILL)
        else:
            os.kill(first.pid, signal.SIGKILL)
        first.wait()
        with dg.DagsterInstance.from_config(str(home)) as instance:  # wedged: STARTED, holding the slot
            assert _status(instance, dead) == DagsterRunStatus.STARTED
            assert _pool(instance)[0] == {(dead, "gpu_sleeper")}

        killed = time.monotonic()
        second = materialize(home, sleep=0)
        sessions.append(second)
        out, _ = second.communicate(timeout=120)
        elapsed = time.monotonic() - killed
        assert second.returncode == 0, out
        print(f"kill -> second run finished: {elapsed:.1f} s")
        assert "RUN_SUCCESS" in out
    finally:
        for session in sessions:  # a second run still blocked, an orphan never reaped: when the test failed
            try:
                os.killpg(session.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            session.wait()

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert _status(instance, dead) == DagsterRunStatus.FAILURE
        message = _failure_message(instance, dead)
        assert message.startswith(f"kiln: run worker pid {first.pid} on ") and "is gone" in message
        if kill == "worker":
            assert "Interrupted its orphaned step processes: gpu_sleeper (pid " in message
        (latest,) = instance.get_runs(limit=1)
        assert latest.run_id != dead and latest.status == DagsterRunStatus.SUCCESS
        assert _pool(instance) == (set(), set())


def test_a_steps_extra_gpu_slots_stay_while_it_runs_and_go_with_it(instance, processes):
    """A stage on 3 GPUs holds 3 slots (assets/gpus.py); its orphan keeps them all until it exits."""
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, 3)
    worker = _run(instance, _dead_pid())
    stage = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                              "print(1, flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    processes.append(stage)
    stage.stdout.readline()
    _event(instance, worker, DagsterEventType.STEP_START, stage.pid, step="pretrain_stage_1")
    held = {"pretrain_stage_1", f"pretrain_stage_1{EXTRA_SLOT}2", f"pretrain_stage_1{EXTRA_SLOT}3"}
    assert all(_claim(instance, worker, step) for step in sorted(held))

    assert reap_dead_runs(instance, orphan_wait_seconds=0.5) == [worker]
    assert _pool(instance)[0] == {(worker, step) for step in held}  # still training on all three GPUs
    stage.kill()
    stage.wait()
    assert reap_dead_runs(instance) == []
    assert _pool(instance) == (set(), set())


@pytest.mark.parametrize(("limit", "gpus"), [(4, 3), (2, 3)])
def test_a_step_on_several_gpus_holds_one_pool_slot_per_gpu(instance, limit, gpus):
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, limit)
    seen = {}

    @dg.asset(pool=GPU_POOL)
    def stage(context) -> None:
        with gpu_slots(context, gpus, wait_seconds=60, poll_seconds=0.05):
            seen["held"] = _pool(instance)[0]

    result = dg.materialize([stage], instance=instance, raise_on_error=False)
    if limit >= gpus:
        assert result.success and {step for _, step in seen["held"]} == {"stage", f"stage{EXTRA_SLOT}2", f"stage{EXTRA_SLOT}3"}
    else:
        [failure] = [e for e in result.all_events if e.is_step_failure]
        message = failure.step_failure_data.error.message
        assert f"uses {gpus} GPUs but the `gpu` pool has {limit} slot(s)" in message and "concurrency set gpu" in message
    assert _pool(instance) == (set(), set())  # every slot back


def test_two_stages_each_holding_part_of_the_pool_do_not_wait_forever(instance):
    """The deadlock: a pool of 2 GPUs, another run's 2-GPU stage holds one slot and waits for the
    other; this run's 2-GPU stage gets the second slot and waits for the first. The later one gives up
    after its wait, names who holds the pool, and gives its slots back, so the other stage goes on."""
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, 2)
    other = _run(instance, os.getpid())
    assert _claim(instance, other, "pretrain_stage_2")
    seen = {}

    @dg.asset(pool=GPU_POOL)
    def pretrain_stage_3(context) -> None:
        # This step holds the pool's other slot: the other stage asks for its second GPU now, and waits.
        seen["entered"] = not _claim(instance, other, f"pretrain_stage_2{EXTRA_SLOT}2")
        with gpu_slots(context, 2, wait_seconds=0.3, poll_seconds=0.05):
            seen["held"] = True

    result = dg.materialize([pretrain_stage_3], instance=instance, raise_on_error=False)
    assert not result.success and seen == {"entered": True}
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "gave up after 0.3 s waiting for 1 more of the 2 GPU slots" in message
    assert f"run {other} step pretrain_stage_2 (1 slot(s), waiting for 1 more)" in message
    assert "this step (1 slot(s), waiting for 1 more)" in message and "gpu_slots_wait_seconds" in message
    # Every slot of the stage that gave up is back: the other stage holds the whole pool now.
    assert _claim(instance, other, f"pretrain_stage_2{EXTRA_SLOT}2")
    assert _pool(instance)[0] == {(other, "pretrain_stage_2"), (other, f"pretrain_stage_2{EXTRA_SLOT}2")}


def test_a_step_waiting_for_more_gpus_gets_them_when_they_are_freed(instance):
    """A stage on 2 GPUs whose second slot is held by another run's step takes it once that step
    frees it (the queue assigns it; the waiting step must claim it)."""
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, 2)
    other = _run(instance, os.getpid())
    seen = {}

    @dg.asset(pool=GPU_POOL)
    def pretrain_stage_3(context) -> None:
        assert _claim(instance, other, "evaluation")  # the pool's other slot, taken while this step starts
        threading.Thread(target=free_it_soon, daemon=True).start()  # ...and freed while this step waits
        with gpu_slots(context, 2, wait_seconds=60, poll_seconds=0.05):
            seen["held"] = _pool(instance)[0]

    def free_it_soon():
        time.sleep(0.5)
        instance.event_log_storage.free_concurrency_slot_for_step(other, "evaluation")

    result = dg.materialize([pretrain_stage_3], instance=instance, raise_on_error=False)
    assert result.success
    assert {step for _, step in seen["held"]} == {"pretrain_stage_3", f"pretrain_stage_3{EXTRA_SLOT}2"}
    assert _pool(instance) == (set(), set())
