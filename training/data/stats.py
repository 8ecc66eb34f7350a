"""Per-batch histograms: what one cleaned landing batch looks like, as numbers and as one PNG, and
the difficulty levels of every batch.

    <batches_dir>/<batch>/_histograms.png    one figure, a panel per statistic the batch has data for:
                                             text entropy and pair CLIPScore (kept vs rejected, with
                                             the filter's threshold), record length per modality,
                                             language, rejection reasons
    <batches_dir>/<batch>/_histograms.json   the numbers drawn, the thresholds, the drawing version;
                                             a rerun where all are equal keeps the PNG
    <scores_dir>/levels_by_batch.png         the share of each difficulty level, per batch

The leading underscore keeps both files out of a Parquet dataset scan of the folder, and under the
batch's folder they are swept with the batch. The statistics are polars queries over the kept and
rejected Parquet files; the pictures are matplotlib figures on the Agg canvas (no pyplot, so no
global figure state between calls).

Run by hand:  python -m training.data.stats <cleaned_batch/<batch>> <rejected/<batch>>
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from PIL import Image
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from training.data.records import MODALITIES
from training.fsutil import atomic_path, remove, write_json
from training.layout import HISTOGRAMS_JSON, HISTOGRAMS_PNG, records_file

# Bump when the pictures are drawn differently, so every batch's picture is drawn again.
DRAWING_VERSION = 1
UNKNOWN = "unknown"
"""The language of a record nobody identified (captions; text before language identification)."""
QUANTILES = (0.05, 0.5, 0.95)
ENTROPY_RANGE, ENTROPY_BINS = (0.0, 1.0), 20
"""Normalized entropy lies in [0, 1]; bins 0.05 wide resolve the default threshold of 0.8."""
CLIP_RANGE, CLIP_BINS = (0.0, 2.5), 20
"""CLIPScore = 2.5 * max(cos, 0) lies in [0, 2.5]; bins 0.125 wide."""
LENGTH_BINS_PER_DECADE, LENGTH_DECADES = 4, 7
"""Characters per record on a log scale from 1 to 10^7: a caption of 40 characters and a source file
of 400,000 in one panel (a record is at most 4 MiB)."""
TOP_LANGUAGES = 6
"""Bars per modality in the language panel; the rest are summed as `other`."""
TOP_REASONS = 4
"""Bars per modality in the rejection panel; the rest are summed as `other`."""
MAX_LEVEL_BATCHES = 40
"""The level picture shows the latest batches only: more bars than this are unreadable."""
STATUSES = ("kept", "rejected")
KEPT_COLOR, REJECTED_COLOR = "#15803d", "#b91c1c"
MODALITY_COLORS = {"text": "#1d4ed8", "code": "#c2410c", "image_text": "#7c3aed"}


# --- Numbers ----------------------------------------------------------------------------------------


def scan_batch(kept_dir: Path, rejected_dir: Path) -> pl.LazyFrame | None:
    """A batch's kept and rejected records of every modality as one lazy frame with the columns the
    statistics need (`status` is kept/rejected, `length` the text's characters); None without files."""
    frames = []
    for status, folder in zip(STATUSES, (kept_dir, rejected_dir)):
        for modality in MODALITIES:
            path = folder / records_file(modality)
            if not path.is_file():
                continue
            frame = pl.scan_parquet(path)
            reason = pl.col("reason") if status == "rejected" else pl.lit(None, pl.String)
            frames.append(
                frame.select(
                    pl.col("modality"), pl.lit(status).alias("status"), pl.col("language"),
                    pl.col("entropy").cast(pl.Float64), pl.col("clip_score").cast(pl.Float64),
                    pl.col("text").str.len_chars().alias("length"), reason.alias("reason"),
                )
            )
    return pl.concat(frames, how="vertical") if frames else None


def linear_bin(column: str, lo: float, hi: float, bins: int) -> pl.Expr:
    """Index of the bin of width (hi - lo) / bins holding the value, left-closed; values outside
    [lo, hi) go to the first or last bin (a score of exactly `hi` is in the last)."""
    return ((pl.col(column) - lo) / ((hi - lo) / bins)).floor().clip(0, bins - 1).cast(pl.Int32)


def log_bin(column: str) -> pl.Expr:
    """Index of the log-spaced length bin, left-closed; an empty text counts in the first bin."""
    bins = LENGTH_BINS_PER_DECADE * LENGTH_DECADES
    return (pl.col(column).clip(1).cast(pl.Float64).log10() * LENGTH_BINS_PER_DECADE).floor().clip(0, bins - 1).cast(pl.Int32)


def linear_edges(lo: float, hi: float, bins: int) -> list[float]:
    return [round(lo + (hi - lo) * k / bins, 6) for k in range(bins + 1)]


def length_edges() -> list[float]:
    return [round(10 ** (k / LENGTH_BINS_PER_DECADE), 3) for k in range(LENGTH_BINS_PER_DECADE * LENGTH_DECADES + 1)]


def _dense(rows: pl.DataFrame, keys: list[str], bins: int) -> dict:
    """{key...: [count per bin]} from rows of (keys..., bin, len)."""
    out: dict = {}
    for row in rows.iter_rows(named=True):
        node = out
        for k in keys[:-1]:
            node = node.setdefault(row[k], {})
        node.setdefault(row[keys[-1]], [0] * bins)[row["bin"]] += row["len"]
    return out


def _quantiles(frame: pl.LazyFrame, column: str, by: str) -> pl.LazyFrame:
    return frame.group_by(by).agg(
        pl.col(column).quantile(q, interpolation="linear").alias(f"p{round(q * 100)}") for q in QUANTILES
    )


def _quantile_dict(rows: pl.DataFrame, by: str) -> dict:
    return {r.pop(by): {k: round(v, 4) for k, v in r.items()} for r in rows.sort(by).iter_rows(named=True)}


def batch_stats(kept_dir: Path, rejected_dir: Path) -> dict:
    """The numbers behind the batch's panels; every statistic is empty when the batch has no records for it.

    entropy, clip_score: {"edges", "counts": {status: [per bin]}, "quantiles": {status: {p5, p50, p95}}}
    length:              {"edges", "counts": {modality: {status: [per bin]}}, "quantiles": {modality: {...}}}
                         (characters of `text`; the quantiles of kept records)
    languages:           {modality: {language: {status: count}}}, a missing language as "unknown"
    reasons:             {modality: {reason: count}}
    """
    frame = scan_batch(kept_dir, rejected_dir)
    empty_scores = {"counts": {}, "quantiles": {}}
    if frame is None:
        return {
            "entropy": {"edges": linear_edges(*ENTROPY_RANGE, ENTROPY_BINS), **empty_scores},
            "clip_score": {"edges": linear_edges(*CLIP_RANGE, CLIP_BINS), **empty_scores},
            "length": {"edges": length_edges(), **empty_scores},
            "languages": {},
            "reasons": {},
        }
    # is_finite is null, so filtered out, for a record the filter never scored.
    text = frame.filter((pl.col("modality") == "text") & pl.col("entropy").is_finite())
    pairs = frame.filter((pl.col("modality") == "image_text") & pl.col("clip_score").is_finite())
    lengths = frame.filter(pl.col("length").is_not_null())
    queries = [
        text.group_by("status", linear_bin("entropy", *ENTROPY_RANGE, ENTROPY_BINS).alias("bin")).len(),
        _quantiles(text, "entropy", "status"),
        pairs.group_by("status", linear_bin("clip_score", *CLIP_RANGE, CLIP_BINS).alias("bin")).len(),
        _quantiles(pairs, "clip_score", "status"),
        lengths.group_by("modality", "status", log_bin("length").alias("bin")).len(),
        _quantiles(lengths.filter(pl.col("status") == "kept"), "length", "modality"),
        frame.group_by("modality", pl.col("language").fill_null(UNKNOWN), "status").len(),
        frame.filter(pl.col("status") == "rejected").group_by("modality", "reason").len(),
    ]
    ent, ent_q, clip, clip_q, length, length_q, languages, reasons = pl.collect_all(queries)
    return {
        "entropy": {"edges": linear_edges(*ENTROPY_RANGE, ENTROPY_BINS), "counts": _dense(ent, ["status"], ENTROPY_BINS), "quantiles": _quantile_dict(ent_q, "status")},
        "clip_score": {"edges": linear_edges(*CLIP_RANGE, CLIP_BINS), "counts": _dense(clip, ["status"], CLIP_BINS), "quantiles": _quantile_dict(clip_q, "status")},
        "length": {
            "edges": length_edges(),
            "counts": _dense(length, ["modality", "status"], LENGTH_BINS_PER_DECADE * LENGTH_DECADES),
            "quantiles": _quantile_dict(length_q, "modality"),
        },
        "languages": _nested(languages, ["modality", "language", "status"]),
        "reasons": _nested(reasons, ["modality", "reason"]),
    }


def _nested(rows: pl.DataFrame, keys: list[str]) -> dict:
    """{k1: {k2: ... count}} from rows of (keys..., len), sorted by key at every level."""
    out: dict = {}
    for row in rows.sort(keys).iter_rows(named=True):
        node = out
        for k in keys[:-1]:
            node = node.setdefault(row[k], {})
        node[row[keys[-1]]] = row["len"]
    return out


# --- Pictures ---------------------------------------------------------------------------------------


def _style(ax, title: str, xlabel: str, ylabel: str = "records") -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    # Few ticks: laying out tick labels is most of a panel's drawing time.
    for axis, nbins in ((ax.xaxis, 5), (ax.yaxis, 4)):
        if isinstance(axis.get_major_locator(), MaxNLocator):  # not the log, category or emptied axes
            axis.get_major_locator().set_params(nbins=nbins)
    ax.grid(alpha=0.3)


def _score_panel(ax, stat: dict, threshold: float, title: str, xlabel: str) -> None:
    for status, color in zip(STATUSES, (KEPT_COLOR, REJECTED_COLOR)):
        if status in stat["counts"]:
            total = sum(stat["counts"][status])
            ax.stairs(stat["counts"][status], stat["edges"], fill=True, alpha=0.55, color=color, label=f"{status} ({total})")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.legend(fontsize=7)
    _style(ax, title, xlabel)


def _length_panel(ax, stat: dict) -> None:
    """Share of each modality's records per length bin, so a modality of 40 records and one of 4,000
    compare by shape; kept solid, rejected dotted."""
    occupied = []
    for modality, by_status in stat["counts"].items():
        total = sum(sum(c) for c in by_status.values())
        label = f"{modality} ({total})"
        for status, style in zip(STATUSES, ("-", ":")):
            if counts := by_status.get(status):
                occupied += [k for k, c in enumerate(counts) if c]
                ax.stairs([c / total for c in counts], stat["edges"], color=MODALITY_COLORS.get(modality), linestyle=style, linewidth=1.5, label=label)
                label = None
    ax.set_xscale("log")
    ax.set_xlim(stat["edges"][min(occupied)], stat["edges"][max(occupied) + 1])
    # Plain tick labels: the default ones are typeset as TeX (10^3), a third of the panel's drawing time.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _compact(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=6)
    _style(ax, "record length (dotted: rejected)", "characters (log scale)", "share of the modality's records")


def _compact(value: float) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _language_bars(languages: dict) -> list[tuple[str, str, int, int]]:
    """(modality, label, kept, rejected) per bar: the TOP_LANGUAGES largest of each modality and the
    rest as `other`. A modality whose every record is of unknown language draws no bars: they would
    say nothing about language and dwarf the others (captions)."""
    bars = []
    for modality, by_language in languages.items():
        if set(by_language) == {UNKNOWN}:
            continue
        ranked = sorted(by_language.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        head, tail = ranked[:TOP_LANGUAGES], ranked[TOP_LANGUAGES:]
        if tail:
            head.append(("other", {s: sum(c.get(s, 0) for _, c in tail) for s in STATUSES}))
        bars += [(modality, lang, c.get("kept", 0), c.get("rejected", 0)) for lang, c in head]
    return bars


def _labelled_bars(ax, labels: list[str], segments: list[tuple[list[int], str | list[str], str | None]]) -> None:
    """Horizontal bars, top to bottom in `labels` order, each the stack of `segments` (values, a color
    or one per bar, legend label), with its label and total written inside the axes: no tick labels
    to lay out, so every panel keeps the same margins (and the figure needs no layout engine, which
    would double its drawing time)."""
    y = list(range(len(labels)))[::-1]
    left = [0] * len(labels)
    for values, color, label in segments:
        ax.barh(y, values, left=left, color=color, alpha=0.45, label=label, height=0.8)
        left = [a + b for a, b in zip(left, values)]
    for row, text, total in zip(y, labels, left):
        ax.text(0.01, row, f"{text}  {total}", transform=ax.get_yaxis_transform(), va="center", fontsize=6)
    ax.set_yticks([])
    ax.set_ylim(-0.6, len(labels) - 0.4)


def _language_panel(ax, bars: list[tuple[str, str, int, int]]) -> None:
    labels = [f"{m} · {lang}" for m, lang, _, _ in bars]
    _labelled_bars(ax, labels, [([k for _, _, k, _ in bars], KEPT_COLOR, "kept"), ([r for _, _, _, r in bars], REJECTED_COLOR, "rejected")])
    ax.legend(fontsize=7)
    _style(ax, "language", "records", "")


def _reason_rows(reasons: dict) -> list[tuple[str, str, int]]:
    """(modality, reason, count) per bar: the TOP_REASONS most frequent of each modality, largest
    first, and the rest summed as `other (k reasons)`: a batch of deliberate defects has dozens."""
    rows = []
    for modality, by_reason in reasons.items():
        ranked = sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
        rows += [(modality, r, n) for r, n in ranked[:TOP_REASONS]]
        if tail := ranked[TOP_REASONS:]:
            rows.append((modality, f"other ({len(tail)} reasons)", sum(n for _, n in tail)))
    return rows


def _reasons_panel(ax, reasons: dict) -> None:
    rows = _reason_rows(reasons)
    colors = [MODALITY_COLORS.get(m, "gray") for m, _, _ in rows]
    _labelled_bars(ax, [f"{m} · {r}" for m, r, _ in rows], [([n for _, _, n in rows], colors, None)])
    _style(ax, "rejected, by reason", "records", "")


def batch_panels(stats: dict, entropy_threshold: float, clip_threshold: float) -> list[Callable[[Axes], None]]:
    """One drawing function per panel the batch has data for, in reading order."""
    panels = []
    if stats["entropy"]["counts"]:
        panels.append(lambda ax: _score_panel(ax, stats["entropy"], entropy_threshold, "text entropy", "normalized n-gram entropy"))
    if stats["clip_score"]["counts"]:
        panels.append(lambda ax: _score_panel(ax, stats["clip_score"], clip_threshold, "pair CLIPScore", "CLIPScore"))
    if stats["length"]["counts"]:
        panels.append(lambda ax: _length_panel(ax, stats["length"]))
    if bars := _language_bars(stats["languages"]):
        panels.append(lambda ax: _language_panel(ax, bars))
    if stats["reasons"]:
        panels.append(lambda ax: _reasons_panel(ax, stats["reasons"]))
    return panels


def draw_panels(panels: list[Callable[[Axes], None]], path: Path, title: str, columns: int = 3, size: tuple[float, float] = (3.9, 2.9), bottom: float = 0.45) -> bool:
    """All panels in one figure, `columns` wide, each `size` inches (margins included; `bottom` inches
    under each for the x labels), written atomically to `path` as a PNG. Without panels, any earlier
    picture at `path` is removed (it would describe other data). Returns whether a picture was written."""
    if not panels:
        remove(path)
        return False
    cols = min(columns, len(panels))
    rows = math.ceil(len(panels) / cols)
    width, height = size[0] * cols, size[1] * rows + 0.3  # + the title
    fig = Figure(figsize=(width, height), dpi=80)
    # Fixed margins in inches: a layout engine would measure every label first (half the cost).
    fig.subplots_adjust(
        left=0.55 / width, right=1 - 0.15 / width, top=1 - 0.6 / height, bottom=bottom / height,
        wspace=0.7 / (size[0] - 0.7), hspace=(0.3 + bottom) / (size[1] - 0.3 - bottom),
    )
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, draw in zip(axes, panels):
        draw(ax)
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    fig.suptitle(title, fontsize=10)
    save_png(fig, path)
    return True


def save_png(fig: Figure, path: Path) -> None:
    """Render on the Agg canvas and write atomically with 64 colors: the panels use a dozen plus
    their anti-aliasing, and the file is a quarter of the RGBA one (the UI's event log stores it)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    with atomic_path(path) as tmp:
        image.quantize(64, method=Image.Quantize.FASTOCTREE).save(tmp, format="PNG")


@dataclass(frozen=True)
class BatchHistograms:
    path: Path | None
    """The PNG; None when the batch has no records to draw."""
    stats: dict
    drawn: bool
    """False when the numbers equal those of the picture already there, which is kept."""
    seconds: float


def batch_histograms(kept_dir: Path, rejected_dir: Path, entropy_threshold: float, clip_threshold: float) -> BatchHistograms:
    """Compute a cleaned batch's statistics and draw them to `<kept_dir>/_histograms.png`, unless the
    picture there already shows these numbers."""
    start = time.perf_counter()
    stats = batch_stats(kept_dir, rejected_dir)
    thresholds = {"entropy": entropy_threshold, "clip_score": clip_threshold}
    record = json.loads(json.dumps({"version": DRAWING_VERSION, "thresholds": thresholds, "stats": stats}))
    png, numbers = kept_dir / HISTOGRAMS_PNG, kept_dir / HISTOGRAMS_JSON
    drawn = False
    if _read_json(numbers) != record:
        # The picture first: numbers that match mean the picture beside them shows them.
        drawn = draw_panels(batch_panels(stats, entropy_threshold, clip_threshold), png, kept_dir.name)
        write_json(numbers, record)
    return BatchHistograms(png if png.is_file() else None, stats, drawn, round(time.perf_counter() - start, 3))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summary(stats: dict) -> dict:
    """The compact numbers for a batch's metadata: quantiles, and kept records by language (the
    languages of kept records only; rejected ones are in the picture and `_histograms.json`)."""
    kept = {m: {lang: c["kept"] for lang, c in by.items() if c.get("kept")} for m, by in stats["languages"].items()}
    return {
        "entropy_quantiles": stats["entropy"]["quantiles"],
        "clip_score_quantiles": stats["clip_score"]["quantiles"],
        "length_quantiles": stats["length"]["quantiles"],
        "languages": {m: by for m, by in kept.items() if by},
    }


# --- Difficulty levels per batch --------------------------------------------------------------------


def level_counts(scores: Path | Sequence[Path], levels: int) -> dict[str, list[int]]:
    """{batch: [records at level 1, ..., level `levels`]} of a scores file or several, in batch order."""
    paths = [scores] if isinstance(scores, (str, Path)) else list(scores)
    if not paths:
        return {}
    rows = pl.scan_parquet(paths).group_by("batch", "level").len().sort("batch").collect()
    out: dict[str, list[int]] = {}
    for row in rows.iter_rows(named=True):
        out.setdefault(row["batch"], [0] * levels)[row["level"] - 1] += row["len"]
    return out


def _levels_panel(ax, counts: dict[str, list[int]], levels: int) -> None:
    """Stacked shares of each level per batch, so batches of different sizes compare by their mix;
    easy levels green, hard ones red."""
    shown = list(counts)[-MAX_LEVEL_BATCHES:]
    palette = colormaps["RdYlGn_r"]
    bottoms = [0.0] * len(shown)
    labels = [f"{b} ({sum(counts[b])})" for b in shown]
    for level in range(levels):
        shares = [counts[b][level] / max(sum(counts[b]), 1) for b in shown]
        ax.bar(labels, shares, bottom=bottoms, color=palette(level / max(levels - 1, 1)), label=f"level {level + 1}")
        bottoms = [b + s for b, s in zip(bottoms, shares)]
    ax.set_ylim(0, 1.2)  # room for the legend above the bars
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.tick_params(axis="x", rotation=_rotation(len(shown)))
    ax.legend(fontsize=7, loc="upper center", ncol=levels)
    more = f" (latest {len(shown)} of {len(counts)})" if len(counts) > len(shown) else ""
    _style(ax, f"difficulty level by batch{more}", "batch (records)", "share of the batch's records")


def _rotation(batches: int) -> int:
    """Upright batch labels while they fit side by side, vertical beyond."""
    return 90 if batches > 4 else 0


def level_histograms(scores: Path | Sequence[Path], png: Path, levels: int) -> tuple[Path | None, dict[str, list[int]]]:
    """Per-batch level counts of the scored corpus, drawn to `png`: (the PNG or None, the counts)."""
    counts = level_counts(scores, levels)
    panels = [lambda ax: _levels_panel(ax, counts, levels)] if counts else []
    shown = min(len(counts), MAX_LEVEL_BATCHES)
    bottom = 1.5 if _rotation(shown) else 0.5  # vertical labels need the room
    size = (min(3.5 + 0.45 * shown, 16), 2.6 + bottom)
    drawn = draw_panels(panels, png, "difficulty_scores", columns=1, size=size, bottom=bottom)
    return (png if drawn else None), counts


if __name__ == "__main__":
    result = batch_histograms(Path(sys.argv[1]), Path(sys.argv[2]), 0.8, 0.75)
    print(json.dumps({"path": str(result.path), "drawn": result.drawn, "seconds": result.seconds, **summary(result.stats)}, indent=2))
