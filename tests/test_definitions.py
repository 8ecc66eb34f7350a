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
