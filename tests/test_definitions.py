import dagster as dg


def test_definitions_load_and_resolve(monkeypatch, tmp_path):
    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path))
    import importlib

    import pipelines.definitions as module

    defs = importlib.reload(module).defs
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"clip_model", "cleaned_corpus", "base_model", "release"} <= keys
    job = defs.resolve_implicit_global_asset_job_def()
    assert {n.name for n in job.nodes} >= {"clip_model", "cleaned_corpus"}
    assert {defs.resolve_job_def(name).name for name in ("lifecycle", "cleaning")} == {"lifecycle", "cleaning"}
    assert {s.name for s in defs.sensors} == {"landing_sensor", "release_automation"}
    assert [s.name for s in defs.schedules] == ["weekly_retraining"]
    for sensor in defs.sensors:
        defs.resolve_sensor_def(sensor.name)
    for schedule in defs.schedules:
        assert defs.resolve_schedule_def(schedule.name).job_name == "lifecycle"


def test_preset_is_chosen_by_environment(monkeypatch, tmp_path):
    from pipelines.resources import Kiln

    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KILN_PRESET", "gpu-124m")
    monkeypatch.delenv("KILN_LANDING_DIR", raising=False)
    kiln = Kiln.from_env()
    assert kiln.config.name == "gpu-124m"
    assert kiln.landing == tmp_path / "landing"
    assert kiln.path("cleaned_corpus") == tmp_path / "cleaned_corpus"
