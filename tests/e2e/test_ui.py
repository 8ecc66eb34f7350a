"""The Dagster UI in a real browser: `dagster dev` on a free loopback port, headless Chromium (the
Debian package, driven by Playwright; .ci/run installs it), the cleaning job materialized from its
page, and screenshots of the asset graph and the run (docs/ keeps the ones the README shows)."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LOCATION = "pipelines.definitions"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def _runs(base: str) -> list[dict]:
    data = _graphql(base, "{ runsOrError { ... on Runs { results { runId status jobName } } } }")
    return data["runsOrError"]["results"]


@pytest.fixture
def webserver(tmp_path):
    from training.data.default_landing import write_default_landing

    data, home = tmp_path / "data", tmp_path / "data" / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    write_default_landing(data / "landing")
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
    yield base, data, tmp_path
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
    log.close()


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_materialize_cleaning_from_the_ui(webserver):
    from playwright.sync_api import expect, sync_playwright

    base, data, tmp = webserver
    shots = Path(os.environ.get("KILN_SCREENSHOT_DIR", tmp))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(120_000)

        page.goto(f"{base}/locations/{LOCATION}/asset-groups/model")
        expect(page.get_by_text("pretrain_stage_9").first).to_be_visible(timeout=120_000)
        page.wait_for_timeout(2000)  # let the graph settle before the picture
        page.screenshot(path=str(shots / "ui-asset-graph.png"))

        page.goto(f"{base}/locations/{LOCATION}/jobs/cleaning")
        expect(page.get_by_text("clip_model").first).to_be_visible(timeout=120_000)
        page.get_by_role("button", name="Materialize all").click()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (runs := _runs(base)):
            time.sleep(1)
        [run] = runs
        assert run["jobName"] == "cleaning"
        while run["status"] not in ("SUCCESS", "FAILURE", "CANCELED") and time.monotonic() < deadline:
            time.sleep(2)
            [run] = _runs(base)
        assert run["status"] == "SUCCESS", run

        page.goto(f"{base}/runs/{run['runId']}")
        expect(page.get_by_text("Success").first).to_be_visible(timeout=120_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(shots / "ui-cleaning-run.png"))
        browser.close()
    assert (data / "cleaned_corpus" / "batch-0001" / "text.parquet").is_file()
    assert (shots / "ui-asset-graph.png").stat().st_size > 10_000
