"""kiln operated as users run it: `dagster dev` (webserver and daemon) on a free loopback port over a
landing zone holding a ready batch, and, without a click, its partition appears and its cleaning run
succeeds; then the asset graph and the partitions view in headless Chromium (the Debian package,
driven by Playwright; .ci/run installs it). The batch is in place when the daemon starts, so the
landing sensor's first tick finds it rather than one 30 s later; the corpus that follows it by
declarative automation is tested in tests/pipelines/test_landing.py."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LOCATION = "pipelines.definitions"
PROSE = [
    "Kilns fire clay at high temperature until it turns hard and dense.",
    "A curriculum orders training examples from easy to hard and back again.",
    "Tokenizers split text into units that a language model can embed.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _land(batch: Path) -> None:
    (batch / "text").mkdir(parents=True)
    (batch / "text" / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in PROSE + ["buy now " * 40]))
    (batch / "code").mkdir()
    (batch / "code" / "ok.py").write_text("def area(r):\n    return 3.14159 * r * r\n")
    (batch / "_SUCCESS").touch()


@pytest.fixture
def dagster_dev(tmp_path):
    data, home = tmp_path / "data", tmp_path / "data" / "dagster_home"
    home.mkdir(parents=True)
    _land(data / "landing" / "batch-0001")
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "DAGSTER_"))}
    env |= {"KILN_DATA_DIR": str(data), "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "dagster-dev.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(Path(os.sys.executable).parent / "dagster"), "dev", "-m", LOCATION, "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/server_info", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "dagster-dev.log").read_text()[-3000:]
            time.sleep(1)
    instance = dg.DagsterInstance.from_config(str(home))
    yield base, data, instance, tmp_path
    instance.dispose()
    stop(proc)
    log.close()


def stop(proc: subprocess.Popen) -> None:
    """Stop `dagster dev` and everything it started (its own session): SIGTERM, SIGKILL after 30 s."""
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def _wait(what: str, predicate, log: Path, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; dagster dev said:\n" + log.read_text()[-4000:])


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_a_landed_batch_is_cleaned_without_a_click_and_shown_in_the_ui(dagster_dev):
    from playwright.sync_api import expect, sync_playwright

    base, data, instance, tmp = dagster_dev
    log = tmp / "dagster-dev.log"
    started = time.monotonic()

    _wait("the partition", lambda: "batch-0001" in instance.get_dynamic_partitions("landing_batches"), log)
    cleaning = _wait(
        "the cleaning run",
        lambda: [r for r in instance.get_runs(dg.RunsFilter(tags={"kiln/batch": "batch-0001"})) if r.is_finished],
        log,
    )
    assert [r.status for r in cleaning] == [dg.DagsterRunStatus.SUCCESS], log.read_text()[-4000:]
    print(f"the UI up to a cleaned partition: {time.monotonic() - started:.1f} s")
    assert instance.get_materialized_partitions(dg.AssetKey("cleaned_batch")) == {"batch-0001"}
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("cleaned_batch"), "records_accounted")]
    )
    assert check  # the blocking check ran with the partition's run (the run succeeded, so it passed)
    assert not instance.get_runs(dg.RunsFilter(tags={"kiln/retraining": "true"}))  # 4 MB policy: no training

    shots = tmp
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(f"{base}/locations/{LOCATION}/asset-groups/data")
        expect(page.get_by_text("cleaned_batch").first).to_be_visible()
        page.wait_for_timeout(2000)  # let the graph settle before the picture
        page.screenshot(path=str(shots / "ui-asset-graph.png"))
        page.goto(f"{base}/assets/cleaned_batch?view=partitions")
        page.get_by_text("batch-0001").first.click()
        expect(page.get_by_text("records_per_second").first).to_be_visible()  # the partition's metadata
        page.wait_for_timeout(1500)
        page.screenshot(path=str(shots / "ui-partitions.png"))
        browser.close()
    assert (shots / "ui-partitions.png").stat().st_size > 10_000
