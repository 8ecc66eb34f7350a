"""Training metrics as files: one JSON line per logged step, and the loss curve as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402

from training.fsutil import atomic_path  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the lines of steps up to `last_step`: a resumed stage logs the later steps again."""
    kept = [m for m in read_metrics(path) if m["step"] <= last_step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(m) + "\n" for m in kept))


def append_metrics(path: Path, metrics: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(metrics) + "\n")


def plot_loss(metrics: list[dict], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot([m["global_step"] for m in metrics], [m["loss"] for m in metrics], color="#c2410c", linewidth=1.5)
    ax.set_xlabel("optimizer step (whole curriculum)")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
