"""Runs whose process died do not wedge kiln: they are marked failed and their pool slots freed.

A run worker that is killed (kill -9, the OOM killer, a second Ctrl-C, a lost machine) writes no
RUN_FAILURE: its run stays STARTED and keeps the concurrency-pool slots its steps claimed, so with
dagster.yaml's `gpu` pool every later GPU step waits forever ("blocked by limit for pool gpu").

What Dagster does itself, set in dagster.yaml and not repeated here: run monitoring fails runs stuck
STARTING past `start_timeout_seconds` and ends runs stuck CANCELING, and
`free_slots_after_run_end_seconds` frees the slots of runs that ended. Both run in the daemon only.
What it cannot do, and this module does: tell that the worker of a STARTED run launched by the
DefaultRunLauncher (`dagster dev`), or started by `dagster asset materialize`, is gone. Run
monitoring asks the run launcher, and the DefaultRunLauncher cannot answer
(`supports_check_run_worker_health` is False); a run from the command line has no launcher at all
and no daemon may be running. Nor does Dagster stop a dead worker's orphaned step processes before
their slots go to another step.

Which runs are judged: kiln's executor (`kiln_executor`) records, when a run starts, where its worker
runs: the host, the kernel's boot id, the pid namespace, the pid and the process's start time (the
`kiln/worker` run tag). Only runs recorded on this host, boot and pid namespace are judged, since only
there does a pid mean the same process; a run of another machine sharing the instance (a SQLite file
on a shared volume, a Postgres), or of this one before a reboot, is left alone, and so is a run with
no record (one started before kiln recorded workers, or by another executor). Its worker is gone when
no process has that pid, or only a zombie, or one that started at another time (the pid was reused):
psutil answers.

A killed run worker can leave its step processes behind (the multiprocess executor's children are
not killed with it) still doing their work, GPU included. A slot is freed only once no process of
the run is alive: such orphans are interrupted (SIGINT, as Dagster's own termination does, so a
Pipes trainer is stopped too and the step records its failure) and waited for a few seconds; one
still alive keeps its slot, freed by a later pass after it exits (or by Dagster's
`free_slots_after_run_end_seconds`, under the daemon).

When it runs: at defined moments, never when a module is imported. `kiln_executor` reaps when a run
starts, before any of its steps claims a slot (so the next `dagster asset materialize` after a kill -9
proceeds), and `dead_run_sensor()` reaps under the daemon (within a minute).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dagster as dg
import psutil
from dagster._core.events import DagsterEventType, JobFailureData, RunFailureReason
from dagster._core.executor.base import Executor
from dagster._core.storage.dagster_run import FINISHED_STATUSES, DagsterRunStatus, RunsFilter

from assets.gpus import EXTRA_SLOT

log = logging.getLogger(__name__)

WORKER_TAG = "kiln/worker"
"""Run tag written by `kiln_executor` when a run starts: JSON naming the run and where its worker runs
(host, boot_id, pid_namespace, pid, started_after_boot)."""

CLOCK_SLACK_SECONDS = 2.0
"""Start times of one process read twice differ by less than this (psutil derives them from the boot
time and clock ticks); a process that started this much later than an event its pid wrote is another
process (the pid was reused)."""

ORPHAN_WAIT_SECONDS = 10.0
"""How long one reaping pass waits, in all, for interrupted orphan step processes to exit before
leaving their slots held for a later pass; Dagster steps exit within a second or two of SIGINT."""

WATCHED = [DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
"""Statuses with a run worker that should be alive. STARTING runs are run monitoring's (its
start_timeout_seconds); QUEUED/NOT_STARTED runs have no worker and hold no slots."""

MAX_BOOT_ID_BYTES = 64


@dataclass(frozen=True)
class _Process:
    pid: int
    alive_at: float
    """Timestamp of an event this process wrote: it existed then."""


@cache
def this_machine() -> dict[str, str]:
    """Where a pid names the same process as here: the host name, the kernel's boot id (a reboot
    reuses pids) and the pid namespace (containers on one kernel number their processes apart)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_bytes()[:MAX_BOOT_ID_BYTES].decode().strip()
    except OSError:
        boot = f"booted {psutil.boot_time():.0f}"
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return {"host": socket.gethostname(), "boot_id": boot, "pid_namespace": namespace}


def worker_record(run_id: str, pid: int | None = None) -> str:
    """The `kiln/worker` tag's value for the run worker `pid` (default: this process) of `run_id`."""
    pid = os.getpid() if pid is None else pid
    return json.dumps({"run_id": run_id, **this_machine(), "pid": pid, "started_after_boot": _after_boot(psutil.Process(pid))})


def _after_boot(process: psutil.Process) -> float:
    """When `process` started, in seconds after boot: unlike its wall-clock start time (psutil adds the
    boot time, which moves when the clock is stepped), the same for the life of the process."""
    return process.create_time() - psutil.boot_time()


def _recorded_worker(run: dg.DagsterRun) -> dict | None:
    """The worker recorded for `run` on this machine; None when there is no record of this run
    (a retried run inherits its parent's tags: the record names the run it belongs to) or it was
    recorded elsewhere."""
    try:
        record = json.loads(run.tags.get(WORKER_TAG, ""))
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("run_id") != run.run_id:
        return None
    if any(record.get(k) != v for k, v in this_machine().items()):
        return None
    if not isinstance(record.get("pid"), int) or not isinstance(record.get("started_after_boot"), (int, float)):
        return None
    return record


def _start_time(pid: int, after_boot: bool = False) -> float | None:
    """Start time of the live process `pid` (wall clock, or seconds after boot); None when there is none
    or only a zombie; +inf when it exists but cannot be inspected (another user's: treated as alive)."""
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return _after_boot(process) if after_boot else process.create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return float("inf")


def _is_alive(process: _Process) -> bool:
    start = _start_time(process.pid)
    return start is not None and (start == float("inf") or start <= process.alive_at + CLOCK_SLACK_SECONDS)


def _gone(record: Mapping) -> str | None:
    """Why the recorded worker is gone, or None while it lives."""
    pid, host = record["pid"], record["host"]
    start = _start_time(pid, after_boot=True)  # a stepped clock does not make a live worker look new
    if start is None:
        return f"run worker pid {pid} on {host} is gone (killed, OOM or machine lost)"
    if start != float("inf") and abs(start - record["started_after_boot"]) > CLOCK_SLACK_SECONDS:
        return f"run worker pid {pid} on {host} is gone (killed, OOM or machine lost; the pid now belongs to another process)"
    return None


def _step_processes(instance: dg.DagsterInstance, run_id: str, worker_pid: int | None) -> dict[str, _Process]:
    """Per step key, the process that ran the step when it was not the run worker (the multiprocess
    executor's children write STEP_WORKER_STARTED and STEP_START themselves)."""
    steps: dict[str, _Process] = {}
    entries = instance.event_log_storage.get_logs_for_run(
        run_id, of_type={DagsterEventType.STEP_WORKER_STARTED, DagsterEventType.STEP_START}
    )
    for entry in entries:  # oldest first: a retried step's latest process wins
        event = entry.dagster_event
        if not (event and entry.step_key and event.pid is not None) or event.pid == worker_pid:
            continue
        known = steps.get(entry.step_key)
        if known is None or known.pid != event.pid:
            steps[entry.step_key] = _Process(event.pid, entry.timestamp)
    return steps


def _stop_orphans(steps: Mapping[str, _Process], deadline: float) -> tuple[list[str], dict[str, _Process]]:
    """Interrupts the live step processes of a dead run and waits for them until `deadline` (a
    time.monotonic() value); returns (interrupted, still alive)."""
    alive = {step: p for step, p in steps.items() if _is_alive(p)}
    interrupted = []
    for step, process in alive.items():
        try:
            os.kill(process.pid, signal.SIGINT)
            interrupted.append(f"{step} (pid {process.pid})")
        except ProcessLookupError:
            pass
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {step: p for step, p in alive.items() if _is_alive(p)}
    return interrupted, alive


def _slot_holders(instance: dg.DagsterInstance) -> dict[str, set[str]]:
    """Run id -> step keys holding a pool slot or waiting in a pool's queue."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    holders: dict[str, set[str]] = {}
    for info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).values():
        for claim in [*info.claimed_slots, *info.pending_steps]:
            holders.setdefault(claim.run_id, set()).add(claim.step_key)
    return holders


def _free_slots(instance: dg.DagsterInstance, run_id: str, steps: Iterable[str], keep: Iterable[str]) -> int:
    """Frees the run's slots and queued claims, except those of the steps in `keep` (still running).
    Freeing also hands the slots to the steps of other runs waiting in the pool's queue."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return 0
    keep = set(keep)
    # A step's extra GPU slots (`<step>#gpu2`, assets/gpus.py) stay or go with the step.
    freed = [step for step in steps if step.split(EXTRA_SLOT)[0] not in keep]
    if not keep:
        storage.free_concurrency_slots_for_run(run_id)
    else:
        for step in freed:
            storage.free_concurrency_slot_for_step(run_id, step)
    return len(freed)


def reap_dead_runs(instance: dg.DagsterInstance, *, orphan_wait_seconds: float = ORPHAN_WAIT_SECONDS) -> list[str]:
    """Marks failed every STARTED run of `instance` whose worker, recorded on this machine, is gone
    (a CANCELING one is marked canceled: it was being stopped, and a failure would be retried), frees
    the pool slots and queued claims of those runs and of finished runs of this machine that still
    hold some, and returns the ids of the runs it marked. A live run, and a run recorded elsewhere or
    not at all, is never touched."""
    return _reap(instance, orphan_wait_seconds).marked


@dataclass(frozen=True)
class _Reaped:
    marked: list[str]
    """Runs marked failed (or canceled) by this pass."""
    freed: list[str]
    """Runs already finished whose leftover pool slots or claims this pass freed."""


def _reap(instance: dg.DagsterInstance, orphan_wait_seconds: float) -> _Reaped:
    holders = _slot_holders(instance)
    reaped: list[str] = []
    deadline = time.monotonic() + orphan_wait_seconds  # one wait for the whole pass (a sensor tick has 60 s)

    for record in instance.get_run_records(filters=RunsFilter(statuses=WATCHED)):
        run = record.dagster_run
        worker = _recorded_worker(run)
        reason = _gone(worker) if worker is not None else None
        if reason is None:
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status != run.status:  # someone else got there first
            continue

        interrupted, alive = _stop_orphans(_step_processes(instance, run.run_id, worker["pid"]), deadline)
        canceling = run.status == DagsterRunStatus.CANCELING
        message = f"kiln: {reason}; marked {'canceled' if canceling else 'failed'} and its pool slots freed."
        if interrupted:
            message += f" Interrupted its orphaned step processes: {', '.join(interrupted)}."
        if alive:
            still = ", ".join(f"{step} (pid {p.pid})" for step, p in alive.items())
            message += f" Still running, their slots are freed once they exit: {still}."
        if canceling:
            instance.report_run_canceled(current, message)
        else:
            failure = JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION)
            instance.report_run_failed(current, message, failure)
        _free_slots(instance, run.run_id, holders.pop(run.run_id, ()), alive)
        log.warning("kiln: reaped run %s: %s", run.run_id, message)
        reaped.append(run.run_id)

    # Finished runs of this machine that still hold slots: reaped above, or earlier, while an orphan
    # still ran. Freed once none of their processes is alive; without a daemon nothing else frees them.
    freed_runs: list[str] = []
    for run_id, steps in holders.items():
        run = instance.get_run_by_id(run_id)
        worker = _recorded_worker(run) if run is not None else None
        if run is None or run.status not in FINISHED_STATUSES or worker is None or _gone(worker) is None:
            continue  # not judged here, still running, or a live worker that frees its own slots
        interrupted, alive = _stop_orphans(_step_processes(instance, run_id, worker["pid"]), deadline)
        freed = _free_slots(instance, run_id, steps, alive)
        if not freed:
            continue
        message = f"kiln: no process of this {run.status.value} run is alive; freed the {freed} pool slot(s) or claim(s) it held."
        if interrupted:
            message += f" Interrupted its orphaned step processes: {', '.join(interrupted)}."
        instance.report_engine_event(message, run)
        log.warning("kiln: run %s: %s", run_id, message)
        freed_runs.append(run_id)
    return _Reaped(reaped, freed_runs)


class _RecordingExecutor(Executor):
    """An executor that, when a run starts and before any step claims a slot, records the run's worker
    (`WORKER_TAG`) and reaps dead runs, then runs the plan with the executor it wraps."""

    def __init__(self, inner: Executor):
        self.inner = inner

    @property
    def retries(self):
        return self.inner.retries

    @property
    def step_dependency_config(self):
        return self.inner.step_dependency_config

    def get_step_event_or_retry_event(self, *args, **kwargs):
        return self.inner.get_step_event_or_retry_event(*args, **kwargs)

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:
        instance, run_id = plan_context.instance, plan_context.run_id
        instance.add_run_tags(run_id, {WORKER_TAG: worker_record(run_id)})
        try:
            reaped = reap_dead_runs(instance)
        except Exception as error:  # a broken pass must not stop this run; the sensor tries again
            plan_context.log.warning(f"kiln: could not check for dead runs: {error!r}")
        else:
            if reaped:
                plan_context.log.warning(f"kiln: marked {len(reaped)} dead run(s) failed and freed their pool slots: {', '.join(reaped)}")
        yield from self.inner.execute(plan_context, execution_plan)


def kiln_executor(inner: dg.ExecutorDefinition) -> dg.ExecutorDefinition:
    """`inner` (same name, config and requirements) with the run-start moment of `_RecordingExecutor`."""
    return dg.ExecutorDefinition(
        name=inner.name,
        config_schema=inner.config_schema,
        requirements=inner.get_requirements,
        executor_creation_fn=lambda init_context: _RecordingExecutor(inner.executor_creation_fn(init_context)),
        description=inner.description,
    )


def dead_run_sensor(minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    """Runs `reap_dead_runs` every `minimum_interval_seconds` under the daemon, so a run whose worker
    died is marked failed (and retried by run_retries) within a minute. It requests no runs: each tick
    is skipped, with what it reaped as the reason."""

    @dg.sensor(
        name="dead_run_sensor",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Marks runs whose run worker process died as failed and frees their pool slots.",
    )
    def _dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        reaped = _reap(context.instance, ORPHAN_WAIT_SECONDS)
        report = []
        if reaped.marked:
            report.append(f"reaped {len(reaped.marked)} dead run(s): {', '.join(reaped.marked)}")
        if reaped.freed:
            report.append(f"freed the pool slots of {len(reaped.freed)} finished run(s): {', '.join(reaped.freed)}")
        if not report:
            return dg.SkipReason("no dead runs")
        context.log.warning("; ".join(report))
        return dg.SkipReason("; ".join(report))

    return _dead_run_sensor
