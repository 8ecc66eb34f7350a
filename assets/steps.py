"""What every kiln step shares: the cache rule (training/cache.py) as the assets apply it (the key,
the recorded result when it is reused, the metadata that says which), and the lock that makes a step
the only writer of its output (`exclusive_outputs`)."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
from dagster._core.definitions.decorators.op_decorator import DecoratedOpFunction
from dagster._utils.warnings import disable_dagster_warnings

from training.cache import reused, step_key
from training.locks import Busy, exclusive


def lookup(
    context: dg.AssetExecutionContext, out_dir: Path, step: str, version: int, config: object, inputs: Sequence[Path | str]
) -> tuple[str, dict | None]:
    """(the step's key, the result recorded under it in `out_dir` or None: do the work)."""
    key = step_key(step, version, config, inputs)
    result = reused(out_dir, key)
    if result is not None:
        context.log.info(f"reused {step} {key[:12]}")
    return key, result


def key_metadata(key: str, was_reused: bool) -> dict:
    """Every step's metadata says its key, and "reused" with the key when no work was done."""
    return {"key": key, **({"reused": key} if was_reused else {})}


def lock_file(root: Path, asset: str, partition: str | None = None) -> Path:
    """The lock of an asset's output, beside its folder: `<root>/.<asset>.lock`, and for one partition
    `<root>/<asset>/.<partition>.lock` (beside `<root>/<asset>/<partition>/`). Dot names: no listing of
    batch folders and no content hash of a folder counts them."""
    for name in (asset, partition):
        if name is not None and (not name or "/" in name or name.startswith(".") or "\0" in name):
            raise ValueError(f"cannot name a lock after {name!r}: not a folder name")
    return root / f".{asset}.lock" if partition is None else root / asset / f".{partition}.lock"


def _held(context: dg.AssetExecutionContext) -> list[tuple[Path, str]]:
    """(lock file, what it guards) for each output the step writes, in one order for every step."""
    root = context.resources.kiln.layout.root
    partitions = sorted(context.partition_keys) if context.has_partition_key or context.has_partition_key_range else [None]
    return [
        (lock_file(root, key, partition), key if partition is None else f"{key} partition {partition}")
        for key in sorted(k.to_user_string() for k in context.selected_asset_keys)
        for partition in partitions
    ]


def _locked(fn, context_getter):
    """`fn` run while its step holds the locks of every output it writes (sorted, so two steps never
    wait for each other in opposite orders)."""

    def holding(stack_enter):
        context = context_getter()
        kiln = context.resources.kiln
        holder = {"run_id": context.run.run_id, "step": context.op_execution_context.get_step_execution_context().step.key}
        for path, what in _held(context):
            try:
                stack_enter(exclusive(path, holder, kiln.output_lock_wait_seconds, what=what, on_wait=context.log.info))
            except Busy as busy:
                raise dg.Failure(
                    f"{busy} (lock {path}). Two writers of one output would mix their files: let that run finish "
                    "or stop it, then materialize again; the resource kiln's output_lock_wait_seconds says how long "
                    "a step waits.",
                    metadata={"lock": dg.MetadataValue.path(path), "holder": dg.MetadataValue.json(busy.holder)},
                ) from None

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def run_generator(*args, **kwargs):
            with contextlib.ExitStack() as stack:
                holding(stack.enter_context)
                yield from fn(*args, **kwargs)

        return run_generator

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            holding(stack.enter_context)
            return fn(*args, **kwargs)

    return run


def exclusive_outputs(asset: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """`asset` with its step holding an flock on each output it writes (`lock_file`, under the `kiln`
    resource's data folder) for the whole step: a second run writing the same output, whoever started
    it (the daemon, `dagster asset materialize`, CI), waits for it up to `Kiln.output_lock_wait_seconds`
    and then fails, naming the run that holds it. An asset without the `kiln` resource writes nothing
    of kiln's and is returned as is.

    Dagster has no hook around a step's compute, so the op is rebuilt around its function (the same
    name, ins, outs, config, resources, tags, pool and retry policy)."""
    op = asset.op
    if "kiln" not in op.required_resource_keys or not isinstance(op.compute_fn, DecoratedOpFunction):
        return asset
    locked = dg.OpDefinition(
        compute_fn=DecoratedOpFunction(_locked(op.compute_fn.decorated_fn, dg.AssetExecutionContext.get)),
        name=op.name,
        ins=op.ins,
        outs=op.outs,
        description=op.description,
        config_schema=op.config_schema,
        required_resource_keys=op.required_resource_keys,
        tags=op.tags,
        code_version=op._version,  # the public `version` is deprecated, `code_version` not exposed
        retry_policy=op.retry_policy,
        pool=op.pool,
    )
    with disable_dagster_warnings():  # as Dagster's own with_resources rebuilds an asset
        return dg.AssetsDefinition(**{**asset.get_attributes_dict(), "node_def": locked})
