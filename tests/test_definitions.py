import dagster as dg


def test_definitions_load_and_resolve(monkeypatch, tmp_path):
    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path))
    import importlib

    import pipelines.definitions as module

    defs = importlib.reload(module).defs
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"clip_model", "cleaned_corpus"} <= keys
    job = defs.resolve_implicit_global_asset_job_def()
    assert {n.name for n in job.nodes} >= {"clip_model", "cleaned_corpus"}


def test_preset_is_chosen_by_environment(monkeypatch, tmp_path):
    from pipelines.resources import Kiln

    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KILN_PRESET", "gpu-124m")
    monkeypatch.delenv("KILN_LANDING_DIR", raising=False)
    kiln = Kiln.from_env()
    assert kiln.config.name == "gpu-124m"
    assert kiln.landing == tmp_path / "landing"
    assert kiln.path("cleaned_corpus") == tmp_path / "cleaned_corpus"
