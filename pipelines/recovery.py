"""Runs whose process died do not wedge kiln: they are marked failed and their pool slots freed.

A run worker that is killed (kill -9, the OOM killer, a second Ctrl-C, a lost machine) writes no
RUN_FAILURE: its run stays STARTED in the instance and keeps the concurrency-pool slots its steps
claimed, so with dagster.yaml's `gpu` pool (one slot) every later GPU step waits forever ("blocked by
limit for pool gpu"). Dagster 1.13 does not recover on its own here (read in its source, measured):
run monitoring asks the run launcher whether a STARTED run's worker is alive, and the
DefaultRunLauncher (`dagster dev`) cannot answer (`supports_check_run_worker_health` is False), so
monitoring only times out runs stuck STARTING or CANCELING. A run the daemon launched is marked
failed by the code server that spawned its worker, if that code server is still alive to see the
worker die; a run started by `dagster asset materialize` runs in the CLI process and nothing watches
it. And marking a run failed never frees its slots (only the optional
`run_monitoring.free_slots_after_run_end_seconds` does, blindly, for finished runs): the automatic
retry of a run failed by its code server waits behind its slot forever.

How a dead run is recognized: every event in the event log carries the pid of the process that
wrote it; the run worker writes RUN_START (or, launched by a code server, "Started process for run"
first), so its pid and a moment when it was certainly alive are known. The worker is gone when that
pid no longer exists on this machine, is a zombie, or belongs to a process that started after that
moment (the pid was reused). This is only meaningful where the run ran on this machine: kiln decides
so only for SQLite (or in-memory) instance storage, which lives in files under DAGSTER_HOME that one
machine's processes share. For other storage (deploy/: Postgres, runs in Kubernetes pods) nothing
is reaped by guessing: there the K8sRunLauncher's worker health check lets run monitoring fail dead
runs, and `free_slots_after_run_end_seconds`, where set, frees their slots.

A killed run worker can leave its step processes behind (the multiprocess executor's children are
not killed with it) still doing their work, GPU included. A slot is freed only once no process of
the run is alive: such orphans are interrupted (SIGINT, as Dagster's own termination does, so a
Pipes trainer is stopped too and the step records its failure) and waited for a few seconds; one
still alive keeps its slot, freed by a later pass after it exits.

Two hooks run this without anyone thinking of it: `reap_on_load()` at the top of
pipelines/definitions.py (every `dagster asset materialize`, `dagster dev` code server and run
worker reaps before it runs anything), and `dead_run_sensor()` under the daemon (within a minute).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType, JobFailureData, RunFailureReason
from dagster._core.storage.dagster_run import FINISHED_STATUSES, DagsterRunStatus, RunsFilter

from assets.gpus import EXTRA_SLOT

log = logging.getLogger(__name__)

CLOCK_SLACK_SECONDS = 2.0
"""A process that started this much later than an event its pid wrote is another process (the pid
was reused). Covers the rounding of /proc start times and small clock adjustments."""

ORPHAN_WAIT_SECONDS = 10.0
"""How long one reaping pass waits, in all, for interrupted orphan step processes to exit before
leaving their slots held for a later pass; Dagster steps exit within a second or two of SIGINT."""

WATCHED = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
"""Statuses with a run worker that should be alive. QUEUED/NOT_STARTED runs have none (and hold no
slots); SUSPENDED ones have none by design."""

_WORKER_STARTED_MESSAGE = "Started process for run"
"""The engine event a run worker launched by a code server (`dagster api execute_run`) writes before
RUN_START; it lets a run still STARTING be checked."""


@dataclass(frozen=True)
class _Process:
    pid: int
    alive_at: float
    """Timestamp of an event this process wrote: it existed then."""


def runs_are_local(instance: dg.DagsterInstance) -> bool:
    """Whether every run of `instance` ran on this machine, so that a pid in its events is one of this
    machine's: true for SQLite storage (files under DAGSTER_HOME) and the in-memory instance."""
    from dagster._core.storage.runs import InMemoryRunStorage, SqliteRunStorage

    return isinstance(instance.run_storage, (SqliteRunStorage, InMemoryRunStorage))


def _started_at(pid: int) -> float | None:
    """Wall-clock start time of the live process `pid` on this machine; None when there is none (or
    only a zombie); +inf when it exists but its start time cannot be read (treated as alive)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return None
        if fields[0] in ("Z", "X", "x"):  # exited, its parent has not reaped it yet
            return None
        # Field 22 of stat: clock ticks after boot, on the boot-time clock; compared with that clock
        # now, so that wall-clock adjustments since boot do not shift it.
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            process = psutil.Process(pid)
            if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return None
            return process.create_time()
        except psutil.NoSuchProcess:
            return None
        except psutil.Error:
            return float("inf")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return float("inf")


def _is_alive(process: _Process) -> bool:
    start = _started_at(process.pid)
    if start is None:
        return False
    return start == float("inf") or start <= process.alive_at + CLOCK_SLACK_SECONDS


def _worker(instance: dg.DagsterInstance, run_id: str) -> _Process | None:
    """The run worker: the writer of the latest RUN_START, else of "Started process for run"."""
    storage = instance.event_log_storage
    for entry in storage.get_logs_for_run(run_id, of_type=DagsterEventType.RUN_START, limit=1, ascending=False):
        if entry.dagster_event and entry.dagster_event.pid is not None:
            return _Process(entry.dagster_event.pid, entry.timestamp)
    for entry in storage.get_logs_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT, ascending=False):
        event = entry.dagster_event
        if event and (event.message or "").startswith(_WORKER_STARTED_MESSAGE):
            # Written on the worker's behalf without an event pid; the pid is in its metadata.
            pid = event.engine_event_data.metadata.get("pid") if event.engine_event_data else None
            if pid is not None and str(pid.value).isdigit():
                return _Process(int(pid.value), entry.timestamp)
    return None


def _step_processes(instance: dg.DagsterInstance, run_id: str, worker: _Process | None) -> dict[str, _Process]:
    """Per step key, the process that ran the step when it was not the run worker (the multiprocess
    executor's children write STEP_WORKER_STARTED and STEP_START themselves)."""
    steps: dict[str, _Process] = {}
    entries = instance.event_log_storage.get_logs_for_run(
        run_id, of_type={DagsterEventType.STEP_WORKER_STARTED, DagsterEventType.STEP_START}
    )
    for entry in entries:  # oldest first: a retried step's latest process wins
        event = entry.dagster_event
        if not (event and entry.step_key and event.pid is not None):
            continue
        if worker and event.pid == worker.pid:
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


def _gone(worker: _Process, host: str) -> str | None:
    start = _started_at(worker.pid)
    if start is None:
        return f"run worker pid {worker.pid} on {host} is gone (killed, OOM or machine lost)"
    if start != float("inf") and start > worker.alive_at + CLOCK_SLACK_SECONDS:
        return (
            f"run worker pid {worker.pid} on {host} is gone (killed, OOM or machine lost; the pid now "
            "belongs to a process started after the run)"
        )
    return None


def reap_dead_runs(
    instance: dg.DagsterInstance,
    *,
    start_timeout_seconds: float | None = None,
    orphan_wait_seconds: float = ORPHAN_WAIT_SECONDS,
) -> list[str]:
    """Marks failed every STARTING or STARTED run of `instance` whose run worker is gone (a CANCELING
    one is marked canceled: it was being stopped, and a failure would be retried), frees the pool
    slots and queued claims of those runs and of finished runs that still hold some, and returns the
    ids of the runs it marked. Runs are judged only when they ran on this machine (`runs_are_local`);
    a live run is never touched. A STARTING run whose worker never reported is failed after
    `start_timeout_seconds` (default: the instance's run_monitoring start_timeout_seconds)."""
    return _reap(instance, start_timeout_seconds, orphan_wait_seconds).marked


@dataclass(frozen=True)
class _Reaped:
    marked: list[str]
    """Runs marked failed (or canceled) by this pass."""
    freed: list[str]
    """Runs already finished whose leftover pool slots or claims this pass freed."""


def _reap(instance: dg.DagsterInstance, start_timeout_seconds: float | None, orphan_wait_seconds: float) -> _Reaped:
    if not runs_are_local(instance):
        return _Reaped([], [])
    host = socket.gethostname()
    timeout = instance.run_monitoring_start_timeout_seconds if start_timeout_seconds is None else start_timeout_seconds
    holders = _slot_holders(instance)
    reaped: list[str] = []
    deadline = time.monotonic() + orphan_wait_seconds  # one wait for the whole pass (a sensor tick has 60 s)

    for record in instance.get_run_records(filters=RunsFilter(statuses=WATCHED)):
        run = record.dagster_run
        worker = _worker(instance, run.run_id)
        if worker is not None:
            reason = _gone(worker, host)
        elif run.status == DagsterRunStatus.STARTING:
            launched = instance.get_run_stats(run.run_id).launch_time or record.create_timestamp.timestamp()
            waited = time.time() - launched
            reason = (
                f"no run worker reported within {waited:.0f} s of the launch (start timeout {timeout:.0f} s)"
                if waited > timeout
                else None
            )
        else:
            reason = None  # no pid recorded: nothing to judge by, leave it to run monitoring
        if reason is None:
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status != run.status:  # someone else got there first
            continue

        interrupted, alive = _stop_orphans(_step_processes(instance, run.run_id, worker), deadline)
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

    # Finished runs that still hold slots: failed by a code server that saw its run worker die, by run
    # monitoring or by hand (none of which frees slots), or reaped above while an orphan still ran.
    # Freed once none of their processes is alive.
    freed_runs: list[str] = []
    for run_id, steps in holders.items():
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status not in FINISHED_STATUSES:
            continue
        worker = _worker(instance, run_id) if run is not None else None
        if worker is not None and _is_alive(worker):
            continue  # a live worker frees its own slots
        interrupted, alive = _stop_orphans(_step_processes(instance, run_id, worker), deadline)
        freed = _free_slots(instance, run_id, steps, alive)
        if not freed:
            continue
        status = run.status.value if run is not None else "deleted"
        message = f"kiln: no process of this {status} run is alive; freed the {freed} pool slot(s) or claim(s) it held."
        if interrupted:
            message += f" Interrupted its orphaned step processes: {', '.join(interrupted)}."
        if run is not None:
            instance.report_engine_event(message, run)
        log.warning("kiln: run %s: %s", run_id, message)
        freed_runs.append(run_id)
    return _Reaped(reaped, freed_runs)


def _sqlite_home(home: Path) -> Path | None:
    """Where the instance at `home` keeps SQLite runs (its runs.db under history/), None when its
    storage is a database server."""
    import yaml

    config_file = home / "dagster.yaml"
    config = (yaml.safe_load(config_file.read_text()) or {}) if config_file.exists() else {}
    if "run_storage" in config or "event_log_storage" in config:
        return None  # legacy per-store settings: only ever used for database servers in practice
    storage = config.get("storage")
    if storage is None:
        return home
    sqlite = storage.get("sqlite") if isinstance(storage, dict) else None
    if sqlite is None:
        return None  # postgres, mysql: runs elsewhere, left to run monitoring
    base = (sqlite or {}).get("base_dir", str(home))
    if isinstance(base, dict) and "env" in base:
        base = os.environ.get(base["env"], "")
    return Path(base) if base else None


def reap_on_load() -> list[str]:
    """`reap_dead_runs` on the instance at DAGSTER_HOME, for the top of pipelines/definitions.py.

    Does nothing without DAGSTER_HOME, for an instance that has no runs yet (it creates no
    directory and no instance) and for database-server storage; never raises (logs a warning)."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return []
    try:
        base = _sqlite_home(Path(home)) if Path(home).is_dir() else None
        if base is None or not (base / "history" / "runs.db").exists():
            return []
        instance = dg.DagsterInstance.get()
        try:
            return reap_dead_runs(instance)
        finally:
            instance.dispose()
    except Exception as error:  # a broken instance must not stop the code location from loading
        log.warning("kiln: could not check %s for dead runs: %r", home, error)
        return []


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
        reaped = _reap(context.instance, None, ORPHAN_WAIT_SECONDS)
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
