"""Small helpers that turn the library's plain stats into Dagster metadata."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from pathlib import Path

import dagster as dg

from training.markdown import markdown_table


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> dg.MarkdownMetadataValue:
    """`training.markdown.markdown_table` as Dagster metadata."""
    return dg.MetadataValue.md(markdown_table(headers, rows))


def md_image(path: Path | None, alt: str, missing: str) -> dg.MarkdownMetadataValue:
    """A PNG inlined as a base64 data URI, which the UI renders in the materialization's metadata
    with no file server; `missing` when there is no picture."""
    if path is None or not path.is_file():
        return dg.MetadataValue.md(missing)
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})")


GPU_POOL = "gpu"
"""Concurrency pool of every step with GPU work. dagster.yaml's default pool limit (1) keeps one such
step at a time; on a machine with N GPUs: `dagster instance concurrency set gpu N`."""

GPU_STEP = {
    "pool": GPU_POOL,
    # Under the k8s_job_executor each step is a pod; GPU steps request one GPU.
    "op_tags": {
        "dagster-k8s/config": {
            "container_config": {"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}
        }
    },
}
"""Keyword arguments of `@dg.asset` for a step that does GPU work when a GPU is present."""
