"""End to end: `make demo` (every asset of the tiny preset, from the embedded landing zone to a
release) timed, and its wall time taken apart from the Dagster event log:

- start-up: a step's process launched until the step starts (interpreter, imports, code location);
- work: the step's asset and checks computing; for a pretraining stage, of which the trainer's own
  training loop (stage.json's `train_seconds`), the rest being torchrun, DeepSpeed and export;
- the run outside any step (the CLI, the run coordinator, the executor).

Run by hand:  python -m bench.e2e <work dir>      (or `analyse <dagster home>` for a finished run)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from training.layout import STAGE_JSON, Layout

REPO = Path(__file__).resolve().parent.parent


def analyse(dagster_home: Path, data_dir: Path) -> dict:
    """Per step of the demo's runs (the CLIP, one per batch, the retraining): start-up, work and, for
    stages, the training loop; and the totals."""
    os.environ["DAGSTER_HOME"] = str(dagster_home.resolve())
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        events = [(run, r.event_log_entry) for run in runs for r in instance.get_records_for_run(run.run_id, limit=100_000).records]
    marks: dict[str, dict[str, float]] = defaultdict(dict)
    run_start = run_end = None
    for run, e in events:
        kind = e.dagster_event.event_type_value if e.dagster_event else None
        if kind in ("RUN_START", "PIPELINE_START"):
            run_start = min(run_start or e.timestamp, e.timestamp)
        elif kind in ("RUN_SUCCESS", "RUN_FAILURE", "PIPELINE_SUCCESS", "PIPELINE_FAILURE"):
            run_end = max(run_end or e.timestamp, e.timestamp)
        elif kind in ("STEP_WORKER_STARTING", "STEP_START", "STEP_SUCCESS", "STEP_FAILURE") and e.step_key:
            partition = run.tags.get("dagster/partition")
            marks[f"{e.step_key}[{partition}]" if partition else e.step_key].setdefault(kind, e.timestamp)
    steps = []
    for key, m in marks.items():
        end = m.get("STEP_SUCCESS", m.get("STEP_FAILURE"))
        launched = m.get("STEP_WORKER_STARTING", m.get("STEP_START"))
        if end is None or launched is None or "STEP_START" not in m:
            continue
        row = {"step": key, "startup_s": round(m["STEP_START"] - launched, 2), "work_s": round(end - m["STEP_START"], 2),
               "launched": launched, "ended": end}
        stage_json = Layout(data_dir).asset(key) / STAGE_JSON
        if key.startswith("pretrain_stage_") and stage_json.is_file():
            row["training_loop_s"] = json.loads(stage_json.read_text())["train_seconds"]
        steps.append(row)
    steps.sort(key=lambda r: r["launched"])
    wall = (run_end or max(r["ended"] for r in steps)) - (run_start or min(r["launched"] for r in steps))
    # Seconds of the run in which at least one step was between launch and end.
    covered, last = 0.0, float("-inf")
    for r in steps:
        lo, hi = max(r["launched"], last), r["ended"]
        covered += max(0.0, hi - lo)
        last = max(last, hi)
    startup = sum(r["startup_s"] for r in steps)
    work = sum(r["work_s"] for r in steps)
    loops = sum(r.get("training_loop_s", 0.0) for r in steps)
    stage_work = sum(r["work_s"] for r in steps if "training_loop_s" in r)
    step_seconds = startup + work
    return {
        "run_wall_s": round(wall, 1),
        "outside_steps_s": round(wall - covered, 1),
        "steps": [{k: v for k, v in r.items() if k not in ("launched", "ended")} for r in steps],
        "step_seconds": round(step_seconds, 1),
        "startup_s": round(startup, 1),
        "work_s": round(work, 1),
        "stage_work_s": round(stage_work, 1),
        "training_loop_s": round(loops, 1),
        "stage_overhead_s": round(stage_work - loops, 1),
        "share_outside_own_work": round((startup + stage_work - loops) / step_seconds, 3) if step_seconds else None,
    }


def markdown(r: dict) -> str:
    lines = [
        f"`make demo` wall time {r.get('make_demo_wall_s', r['run_wall_s'])} s (the run itself {r['run_wall_s']} s; "
        f"{r['outside_steps_s']} s of it with no step in flight).",
        "",
        f"Of {r['step_seconds']} step-seconds: {r['startup_s']} s process start-up, {r['work_s']} s in assets and checks; "
        f"the pretraining stages' {r['stage_work_s']} s hold {r['training_loop_s']} s of training loop and "
        f"{r['stage_overhead_s']} s of torchrun, DeepSpeed start-up and export. Outside the assets' own work: "
        f"{100 * r['share_outside_own_work']:.0f}% of step-seconds.",
        "",
        "| step | start-up s | work s | training loop s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s['step']} | {s['startup_s']} | {s['work_s']} | {s.get('training_loop_s', '')} |" for s in r["steps"]]
    return "\n".join(lines)


def demo(work: Path) -> dict:
    """A fresh `make demo` into `work`, timed and analysed."""
    shutil.rmtree(work, ignore_errors=True)
    env = {**os.environ, "KILN_DATA_DIR": str(work), "DAGSTER_HOME": str(Layout(work).dagster_home)}
    for name in ("KILN_LANDING_DIR", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # the demo's own landing zone; torchrun sets the ranks of its stages itself
    start = time.perf_counter()
    subprocess.run(["make", "-C", str(REPO), "demo"], env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    result = analyse(Layout(work).dagster_home, work)
    result["make_demo_wall_s"] = round(wall, 1)
    result["markdown"] = markdown(result)
    return result


if __name__ == "__main__":
    if sys.argv[1] == "analyse":
        home = Path(sys.argv[2]).resolve()
        print(markdown(analyse(home, home.parent)))
    else:
        print(demo(Path(sys.argv[1]))["markdown"])
