import dagster as dg


def test_definitions_load_and_resolve(monkeypatch, tmp_path):
    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path))
    import importlib

    import pipelines.definitions as module

    defs = importlib.reload(module).defs
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"clip_model", "cleaned_batch", "cleaned_corpus", "base_model", "gguf_model", "release"} <= keys
    graph = defs.resolve_asset_graph()
    per_batch = {"cleaned_batch", "difficulty_scores"}
    assert all(graph.get(dg.AssetKey(k)).partitions_def.name == "landing_batches" for k in per_batch)
    assert all(graph.get(dg.AssetKey(k)).partitions_def is None for k in keys - per_batch)
    # A retraining starts from the corpus and the batches' difficulty, which the sensors keep up to date.
    retraining = {n.name for n in defs.resolve_job_def("retraining").nodes}
    assert {"tokenizer", "curriculum", "release"} <= retraining and not {"cleaned_corpus", *per_batch} & retraining
    assert {n.name for n in defs.resolve_job_def("cleaning").nodes} == {"cleaned_batch", "cleaned_batch_records_accounted"}
    assert {n.name for n in defs.resolve_job_def("difficulty").nodes} == {"difficulty_scores"}
    assert {s.name for s in defs.sensors} >= {"landing_sensor", "difficulty_sensor", "retraining_policy", "kiln_automation"}
    assert [s.name for s in defs.schedules] == ["weekly_retraining"]
    for sensor in defs.sensors:
        defs.resolve_sensor_def(sensor.name)
    for schedule in defs.schedules:
        assert defs.resolve_schedule_def(schedule.name).job_name == "retraining"


def test_preset_is_chosen_by_environment(monkeypatch, tmp_path):
    from assets.resources import Kiln

    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KILN_PRESET", "gpu-124m")
    monkeypatch.delenv("KILN_LANDING_DIR", raising=False)
    kiln = Kiln.from_env()
    assert kiln.config.name == "gpu-124m"
    assert kiln.landing == tmp_path / "landing"
    assert kiln.layout.cleaned_corpus == tmp_path / "cleaned_corpus"


def test_every_asset_has_its_folder_in_the_layout(tmp_path):
    """training/layout.py names the folders: each asset's is <KILN_DATA_DIR>/<asset key>, the release's releases/."""
    from pathlib import Path

    from assets.resources import Kiln
    from pipelines.definitions import build_definitions
    from training.layout import DAGSTER_HOME, LANDING

    kiln = Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path))
    keys = {k.to_user_string() for k in build_definitions(kiln).resolve_asset_graph().get_all_asset_keys()}
    layout = kiln.layout
    for key in sorted(keys - {"release"}):
        stage = key.removeprefix("pretrain_stage_")
        assert (layout.pretrain_stage(int(stage)) if stage != key else getattr(layout, key)) == tmp_path / key
    assert layout.releases == tmp_path / "releases"
    # The Makefile cannot import the layout: it names the same folders.
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert f"$(KILN_DATA_DIR)/{DAGSTER_HOME}" in makefile and f"$(KILN_DATA_DIR)/{LANDING}" in makefile


def test_importing_the_definitions_changes_no_run(monkeypatch, tmp_path):
    """No side effect on import: a code-server reload, the forkserver's preload, a notebook or a test
    that imports the definitions leaves every run as it is, even a run whose worker is gone (reaping
    happens when a run starts and under the daemon's sensor, pipelines/recovery.py)."""
    import importlib
    import json
    import shutil
    import subprocess
    from pathlib import Path

    from dagster._core.events import DagsterEvent, DagsterEventType
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
    from dagster._core.utils import make_new_run_id

    import pipelines.definitions as module
    from pipelines.recovery import WORKER_TAG, this_machine

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", home / "dagster.yaml")
    child = subprocess.Popen(["true"])
    child.wait()  # a run worker that is gone, recorded on this machine
    run_id = make_new_run_id()
    record = {"run_id": run_id, **this_machine(), "pid": child.pid, "started_after_boot": 0.0}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_run(DagsterRun(job_name="retraining", run_id=run_id, tags={WORKER_TAG: json.dumps(record)}))
        instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_START.value, "retraining", pid=child.pid), run_id)
        instance.event_log_storage.initialize_concurrency_limit_to_default("gpu")
        assert instance.event_log_storage.claim_concurrency_slot("gpu", run_id, "pretrain_stage_1").is_claimed

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path / "data"))
    importlib.reload(module)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED
        assert instance.event_log_storage.check_concurrency_claim("gpu", run_id, "pretrain_stage_1").is_claimed
