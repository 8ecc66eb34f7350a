"""The weekly schedule, the `gpu` pool's members, the run queue and the release automation (the
landing sensor and the retraining policy: test_landing.py; dead runs, their retries and the pool's
slots: test_recovery.py)."""

import dis
import importlib
import inspect
import json
import shutil
import types
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.utils import make_new_run_id

from assets.gpus import GPU_POOL
from assets.resources import Kiln
from pipelines.definitions import build_definitions
from tests.helpers import corpus_part
from training import presets
from training.config import OperationConfig, RetrainingPolicy
from training.layout import Layout
from training.pretrain.cluster import GPU_RESOURCE

ROOT = Path(__file__).resolve().parents[2]


def _defs(tmp_path: Path) -> dg.Definitions:
    return build_definitions(Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path)))


# --- the weekly schedule -------------------------------------------------------------------------


def _schedule(tmp_path: Path, monkeypatch, **policy) -> tuple[dg.Definitions, dg.ScheduleDefinition]:
    """kiln's Definitions on a preset whose RetrainingPolicy is `policy`, and its schedule."""
    config = replace(presets.tiny(), name="scheduled", operation=OperationConfig(retraining=RetrainingPolicy(**policy)))
    monkeypatch.setitem(presets.PRESETS, "scheduled", lambda: config)
    defs = build_definitions(Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path), preset="scheduled"))
    return defs, defs.resolve_schedule_def("weekly_retraining")


@pytest.fixture(scope="module")
def _shared_instance():
    with dg.instance_for_test() as instance:  # creating one takes a second or two
        yield instance


@pytest.fixture
def instance(_shared_instance):
    _shared_instance.wipe()
    return _shared_instance


def test_the_schedule_runs_on_the_policys_cron_and_is_off_without_one(tmp_path, monkeypatch, instance):
    _, schedule = _schedule(tmp_path, monkeypatch, cron="30 6 * * 5", timezone="Europe/Berlin")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 6 * * 5", "Europe/Berlin")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    [request] = schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests
    assert request.tags["kiln/reason"] == "schedule 30 6 * * 5 (Europe/Berlin)"
    # No cron in the policy: the schedule starts stopped, even with the automation on.
    _, off = _schedule(tmp_path, monkeypatch, cron=None)
    assert off.default_status == dg.DefaultScheduleStatus.STOPPED


def test_the_schedule_waits_for_the_difficulty_of_every_batch(tmp_path, monkeypatch, instance):
    """A batch of the corpus not scored yet: the curriculum would refuse it, so no retraining starts."""
    _, schedule = _schedule(tmp_path, monkeypatch)
    corpus_part(Layout(tmp_path), "batch-0001", ["a record of the first batch with words enough to be scored"])
    result = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    assert not result.run_requests and "waiting for the difficulty of 1 batch(es) (batch-0001" in result.skip_message


S = dg.DagsterRunStatus
ACTIVE = [S.NOT_STARTED, S.QUEUED, S.STARTING, S.STARTED]
DONE = [S.SUCCESS, S.FAILURE, S.CANCELED]


def _add_run(instance: dg.DagsterInstance, job_name: str, tags: dict, status: dg.DagsterRunStatus) -> None:
    """A run of `job_name` in `status`, with a code location as a launched run has (a queued one must)."""
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin

    origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("kiln"), "__repository__").get_job_origin(job_name)
    instance.add_run(dg.DagsterRun(job_name=job_name, run_id=make_new_run_id(), tags=tags, status=status, remote_job_origin=origin))


@pytest.mark.parametrize("status", ACTIVE + DONE, ids=lambda s: s.value)
def test_the_schedule_requests_a_retraining_unless_one_is_queued_or_running(tmp_path, monkeypatch, instance, status):
    defs, schedule = _schedule(tmp_path, monkeypatch)
    job = defs.resolve_job_def(schedule.job_name)
    tick = lambda: schedule.evaluate_tick(dg.build_schedule_context(instance=instance))  # noqa: E731
    # Another job's run, active, is no reason to wait.
    _add_run(instance, "cleaning", {"kiln/batch": "b1"}, S.STARTED)
    [request] = tick().run_requests
    assert request.tags["kiln/trigger"] == "schedule"
    # The run that request makes, as Dagster makes it: the job's tags and the request's.
    _add_run(instance, job.name, {**job.tags, **request.tags}, status)
    again = tick()
    if status in ACTIVE:
        assert not again.run_requests and "queued or running" in again.skip_message
    else:
        assert [r.tags["kiln/trigger"] for r in again.run_requests] == ["schedule"]


# --- the gpu pool ------------------------------------------------------------------------------


KILN_PACKAGES = ("training", "assets", "pipelines")


def _is_kiln(obj) -> bool:
    module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
    return isinstance(module, str) and module.split(".")[0] in KILN_PACKAGES


def _codes(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _callees(fn: types.FunctionType):
    """kiln's functions and classes that `fn`'s code names: its globals, the attributes it reads of
    kiln's modules, and what it imports in its body."""
    for code in _codes(fn.__code__):
        current, fromlist, imported, bound = None, None, None, {}
        for ins in dis.get_instructions(code):
            op, arg = ins.opname, ins.argval
            if op in ("LOAD_GLOBAL", "LOAD_NAME"):
                current = fn.__globals__.get(arg)
            elif op.startswith("LOAD_FAST") or op == "LOAD_DEREF":  # a name an import in the body bound
                current = bound.get(arg) if isinstance(arg, str) else None
            elif op == "IMPORT_NAME":  # `from m import x` gives m; `import m.n` gives the top package
                name = arg if fromlist else arg.split(".")[0]
                imported = current = importlib.import_module(name) if name.split(".")[0] in KILN_PACKAGES else None
            elif op in ("IMPORT_FROM", "LOAD_ATTR", "LOAD_METHOD"):
                source = imported if op == "IMPORT_FROM" else current
                current = getattr(source, arg, None) if isinstance(source, types.ModuleType) else None
            elif op.startswith("STORE_"):
                if current is not None:
                    bound[arg] = current
                current = None
                continue
            else:
                fromlist = arg if op == "LOAD_CONST" else None
                current = None
                continue
            if isinstance(current, (types.FunctionType, type)) and _is_kiln(current):
                yield current


def asks_torch_for_cuda(fn: types.FunctionType) -> str | None:
    """The first function of kiln's, reachable from `fn`, that asks torch about CUDA (`torch.cuda`: a
    device picked, GPUs counted), or None: where a step decides to use a GPU, read from the code."""
    seen, todo = set(), [fn]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        if isinstance(f, type):  # a class: any of its methods may run
            for member in vars(f).values():
                member = getattr(member, "__func__", getattr(member, "fget", member))
                if isinstance(member, types.FunctionType):
                    todo.append(member)
        elif any("cuda" in code.co_names for code in _codes(f.__code__)):
            return f.__qualname__
        else:
            todo.extend(_callees(f))
    return None


def test_the_analysis_finds_a_gpu_step_and_passes_a_cpu_one():
    """The control for the test below: it can tell the two apart."""
    from assets.curriculum import curriculum
    from assets.evaluation import quantized_model

    assert asks_torch_for_cuda(quantized_model.op.compute_fn.decorated_fn) == "pick_device"
    assert asks_torch_for_cuda(curriculum.op.compute_fn.decorated_fn) is None


def test_every_step_that_may_use_a_gpu_is_in_the_gpu_pool_and_asks_for_one(tmp_path):
    """The `gpu` pool (dagster.yaml: one slot per GPU) is what keeps two GPU steps off one GPU, and
    a step pod gets a GPU only if it asks: a step whose code picks a CUDA device or counts GPUs is in
    the pool and requests a GPU; any other step is in no pool, so it runs beside them."""
    defs = _defs(tmp_path)
    for node in [*defs.assets, *defs.asset_checks]:
        op = node.op
        uses_gpu = asks_torch_for_cuda(inspect.unwrap(op.compute_fn.decorated_fn))  # past the output lock's wrapper
        assert op.pool == (GPU_POOL if uses_gpu else None), (op.name, uses_gpu)
        limits = json.loads(op.tags.get("dagster-k8s/config", "{}")).get("container_config", {}).get("resources", {}).get("limits", {})
        assert (int(limits.get(GPU_RESOURCE, 0)) >= 1) == bool(uses_gpu), (op.name, limits)


# --- the run queue -------------------------------------------------------------------------------


@pytest.fixture
def run_queue(tmp_path):
    """Whether a queued run is held back by runs in progress, under kiln's dagster.yaml, as the
    run queue's daemon decides it (its tag concurrency limits)."""
    from dagster._core.storage.tags import PARTITION_NAME_TAG
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(home))
    limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    instance.dispose()

    def blocked(queued: dict, running: list[dict]) -> bool:
        runs = [dg.DagsterRun(job_name="any", run_id=f"r{i}", tags=tags) for i, tags in enumerate(running)]
        return TagConcurrencyLimitsCounter(limits, runs).is_blocked(dg.DagsterRun(job_name="any", run_id="q", tags=queued))

    return blocked, PARTITION_NAME_TAG


def test_runs_sharing_the_data_dir_queue_one_at_a_time_and_batches_clean_side_by_side(tmp_path, run_queue):
    blocked, partition = run_queue
    defs = _defs(tmp_path)
    retraining = defs.resolve_job_def("retraining").tags  # the schedule's and the policy's runs
    corpus = defs.resolve_sensor_def("kiln_automation").run_tags  # the automation's runs: the corpus, the release
    # The landing sensor's run for a batch that left the landing zone: the corpus without it.
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("landing_batches", ["b0"])
    [removal] = defs.resolve_sensor_def("landing_sensor")(dg.build_sensor_context(instance=instance)).run_requests
    removal = removal.tags
    batch = lambda name: {partition: name, "kiln/batch": name}  # noqa: E731  (a landing batch's cleaning)
    for queued, running in [(retraining, retraining), (corpus, retraining), (retraining, corpus), (removal, retraining), (retraining, removal)]:
        assert blocked(queued, [running]) and not blocked(queued, [batch("b1")]), (queued, running)
    assert not blocked(retraining, [])
    assert not blocked(batch("b1"), [retraining, batch("b2")])
    assert blocked(batch("b1"), [batch("b1")])  # a batch's arrival and its re-score by a new CLIP, say


# --- the release automation ----------------------------------------------------------------------


def test_a_new_base_model_brings_evaluation_quantization_and_then_the_release(tmp_path):
    defs = _defs(tmp_path)
    assert defs.resolve_sensor_def("kiln_automation").default_status == dg.DefaultSensorStatus.RUNNING
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization("curriculum"))  # data ready, no model yet
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert result.total_requested == 0
    # A run of base_model: the model and its blocking check, which the release waits for.
    instance.report_runless_asset_event(dg.AssetMaterialization("base_model"))
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(asset_key=dg.AssetKey("base_model"), check_name="base_model_generates", passed=True)
    )
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    requested = {k for k in ("evaluation", "quantized_model", "release") if result.get_num_requested(dg.AssetKey(k))}
    # One run, in dependency order: the blocking checks on evaluation and quantized_model run in it and
    # still guard the release step (tests/pipelines/test_gates.py covers a failed one).
    assert requested == {"evaluation", "quantized_model", "release"}
