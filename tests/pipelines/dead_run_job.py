"""A GPU-pool asset that sleeps KILN_TEST_SLEEP seconds (default 0), for the dead-run test
(tests/pipelines/test_recovery.py): `dagster asset materialize -f <this file> --select gpu_sleeper`.
Like pipelines/definitions.py, the module reaps dead runs when it is loaded."""

import os
import time

import dagster as dg

from assets.gpus import GPU_POOL
from pipelines.recovery import reap_on_load

reap_on_load()


@dg.asset(pool=GPU_POOL)
def gpu_sleeper() -> None:
    time.sleep(float(os.environ.get("KILN_TEST_SLEEP", "0")))


defs = dg.Definitions(assets=[gpu_sleeper])
