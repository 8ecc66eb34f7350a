"""Two sleeping GPU-pool assets and two pool-less ones, each recording when it ran: a job for the
concurrency test, loaded by file path in the step subprocesses of the multiprocess executor."""

import json
import os
import time
from pathlib import Path

import dagster as dg

from assets.gpus import GPU_POOL


def _asset(name: str, pool: str | None) -> dg.AssetsDefinition:
    @dg.asset(name=name, pool=pool)
    def _record() -> None:
        start = time.time()
        time.sleep(1.5)
        log = Path(os.environ["KILN_POOL_LOG"]) / f"{name}.json"
        log.write_text(json.dumps({"start": start, "end": time.time()}))

    return _record


ASSETS = [_asset("gpu_a", GPU_POOL), _asset("gpu_b", GPU_POOL), _asset("cpu_a", None), _asset("cpu_b", None)]


def job() -> dg.JobDefinition:
    return dg.Definitions(assets=ASSETS, jobs=[dg.define_asset_job("pool_test")]).resolve_job_def("pool_test")
