"""Landing batches as partitions from the command line, for runs without the daemon (`make demo`, CI).

`python -m pipelines.batches` registers every ready batch as a partition (of `cleaned_batch` and
`difficulty_scores`), deletes the partitions (and outputs) of batches that left the landing zone, and
prints the ready batches, one per line; under the daemon, `landing_sensor` does the same on its own.
`python -m pipelines.batches --difficulty` prints the batches of the cleaned corpus whose difficulty is
not up to date (starting a new rescoring round first when the predictor policy says so), as
`difficulty_sensor` requests them.

    python -m pipelines.batches | xargs -I{} dagster asset materialize -m pipelines.definitions \\
        --select cleaned_batch --partition {}
    python -m pipelines.batches --difficulty | xargs -I{} dagster asset materialize -m pipelines.definitions \\
        --select difficulty_scores --partition {}
"""

from __future__ import annotations

import sys

import dagster as dg

from assets.cleaning import LANDING_BATCHES
from assets.resources import Kiln
from training.curriculum.batches import due_batches
from training.data.clean import remove_batch
from training.data.landing import ready_batches


def sync_partitions(instance: dg.DagsterInstance, kiln: Kiln) -> tuple[list[str], list[str], list[str]]:
    """(ready, added, deleted): the instance's partitions made equal to the ready batches."""
    ready = [b.name for b in ready_batches(kiln.landing)]
    known = set(instance.get_dynamic_partitions(LANDING_BATCHES.name))
    added = [n for n in ready if n not in known]
    deleted = sorted(known - set(ready))
    if added:
        instance.add_dynamic_partitions(LANDING_BATCHES.name, added)
    for name in deleted:
        instance.delete_dynamic_partition(LANDING_BATCHES.name, name)
        remove_batch(name, kiln.layout.cleaned_batch, kiln.layout.rejected, kiln.layout.difficulty_scores)
    return ready, added, deleted


if __name__ == "__main__":
    if sys.argv[1:] == ["--difficulty"]:
        kiln = Kiln.from_env()
        print("\n".join(s.batch for s in due_batches(kiln.layout, kiln.config.difficulty, advance=True)[1]))
    elif sys.argv[1:]:
        sys.exit("usage: python -m pipelines.batches [--difficulty]")
    else:
        with dg.DagsterInstance.get() as inst:
            for batch in sync_partitions(inst, Kiln.from_env())[0]:
                print(batch)
