"""kiln over a landing zone in a bucket, as users run it: `dagster dev` (webserver and daemon) with
KILN_LANDING_DIR=s3://<bucket>/zone on moto's S3 server (127.0.0.1, reached through AWS_ENDPOINT_URL_S3
like any S3-compatible store). A batch is uploaded, `_SUCCESS` last; without a click, the landing
sensor's first look registers it and its cleaning run succeeds. (The batch lands before the daemon
starts, so the test does not wait out the sensor's 30 s interval; a batch that is still landing, and
one that lands between two looks, are the in-process sensor tests of tests/pipelines/test_landing.py.)"""

import os
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from tests.e2e.test_ui import LOCATION, PROSE, ROOT, _free_port, _wait, stop
from tests.object_store import moto_s3


@pytest.mark.slow
def test_a_batch_landing_in_a_bucket_is_cleaned_without_a_click(tmp_path):
    import shutil
    import subprocess
    import urllib.request

    data, home = tmp_path / "data", tmp_path / "data" / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    log_path = tmp_path / "dagster-dev.log"
    with moto_s3() as (fs, s3_env), open(log_path, "w") as log:
        root = f"kiln-{uuid.uuid4().hex[:8]}/zone"
        fs.mkdir(root.split("/")[0])
        fs.pipe_file(f"{root}/", b"")  # the empty zone
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "DAGSTER_", "AWS_"))}
        env |= s3_env | {"KILN_DATA_DIR": str(data), "KILN_LANDING_DIR": f"s3://{root}", "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1"}
        # The batch lands: its objects, then _SUCCESS.
        lines = "".join(f'{{"text": "{t}"}}\n' for t in PROSE).encode()
        fs.pipe_file(f"{root}/batch-0001/text/docs.jsonl", lines)
        fs.pipe_file(f"{root}/batch-0001/code/ok.py", b"def area(r):\n    return 3.14159 * r * r\n")
        fs.pipe_file(f"{root}/batch-0001/_SUCCESS", b"")
        landed = time.monotonic()
        port = _free_port()
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-m", LOCATION, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            _wait("the webserver", lambda: _up(urllib.request, port), log_path, timeout=180)
            _wait("the partition", lambda: "batch-0001" in instance.get_dynamic_partitions("landing_batches"), log_path, timeout=120)
            runs = _wait(
                "the cleaning run",
                lambda: [r for r in instance.get_runs(dg.RunsFilter(tags={"kiln/batch": "batch-0001"})) if r.is_finished],
                log_path, timeout=240,
            )
            assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS], log_path.read_text()[-4000:]
            print(f"from _SUCCESS in the bucket to a cleaned partition: {time.monotonic() - landed:.1f} s")
            assert instance.get_materialized_partitions(dg.AssetKey("cleaned_batch")) == {"batch-0001"}
            assert (data / "cleaned_batch" / "batch-0001" / "text.parquet").exists()
            assert "kiln-test-secret" not in log_path.read_text()  # credentials are never logged
        finally:
            instance.dispose()
            stop(proc)


def _up(request, port: int) -> bool:
    try:
        request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
        return True
    except OSError:
        return False
