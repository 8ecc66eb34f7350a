"""Assets that sleep KILN_TEST_SLEEP seconds (default 0), for the tests of dead runs and of runs sharing
KILN_DATA_DIR (tests/pipelines/test_recovery.py, test_shared_outputs.py): `gpu_sleeper` in the `gpu`
pool, `sleeper` in none; `dagster asset materialize -f <this file> --select gpu_sleeper`. They run as
kiln's steps do: under kiln's executor (a run's worker recorded, dead runs reaped when a run starts)
and holding the lock on their output under KILN_DATA_DIR (assets/steps.py), without importing the
pipeline's libraries."""

import os
import time

import dagster as dg

from assets.gpus import GPU_POOL
from assets.resources import Kiln
from assets.steps import exclusive_outputs
from pipelines.recovery import kiln_executor


@dg.asset(pool=GPU_POOL)
def gpu_sleeper(kiln: Kiln) -> None:
    time.sleep(float(os.environ.get("KILN_TEST_SLEEP", "0")))


@dg.asset
def sleeper(kiln: Kiln) -> None:
    time.sleep(float(os.environ.get("KILN_TEST_SLEEP", "0")))


defs = dg.Definitions(
    assets=[exclusive_outputs(gpu_sleeper), exclusive_outputs(sleeper)],
    resources={"kiln": Kiln.from_env()},
    executor=kiln_executor(dg.multiprocess_executor),
)
