"""The generated benchmark corpus: a landing batch of text records and code files, drawn
deterministically (one seed) from material that ships with Python, with the defects a real crawl
holds in known shares.

- text: documents of 3-20 sentences drawn from Python's documentation topics, standard-library
  docstrings and kiln's Chinese prose (about 900 characters on average), in JSONL shards; 3% exact
  duplicates of an earlier document, 4% low-entropy spam, 1% fragments of a few words, 0.5% empty
  and 0.2% malformed lines.
- code: standard-library modules and kiln's snippets in eight languages, each file made unique by a
  header comment, 10% of them broken (cut inside a call or before the last brace).

Run by hand:  python -m bench.corpus <landing> [--text N] [--code N]   (one landing zone per modality)
"""

from __future__ import annotations

import argparse
import functools
import ast
import json
import random
import re
from pathlib import Path

from training.demo.landing import STDLIB, broken_copy
from training.data.landing import READY_MARKER
from training.demo.snippets import CHINESE_PROSE, SNIPPETS
from training.fsutil import atomic_path

SHARD_RECORDS = 100_000
COMMENT = {"python": "#", "c": "//", "cpp": "//", "go": "//", "rust": "//", "java": "//", "javascript": "//", "typescript": "//"}
SPAM = ["buy now ", "click here to win ", "hahaha ", "free free free ", "lol ", "best price best price "]


@functools.cache
def sentences() -> tuple[str, ...]:
    """Every sentence of Python's documentation topics, the standard library's docstrings and the
    Chinese prose, whitespace collapsed, at least 20 characters long. Parsed once per process (seconds:
    the whole standard library), however many batches are written."""
    from pydoc_data.topics import topics

    chunks = list(topics.values()) + list(CHINESE_PROSE)
    for path in sorted(STDLIB.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        chunks += [d for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and (d := ast.get_docstring(n))]
    split = re.compile(r"(?<=[.!?。！？])\s*")
    out = [" ".join(s.split()) for c in chunks for s in split.split(c)]
    return tuple(sorted({s for s in out if len(s) >= 20}))


def _text_line(rng: random.Random, pool: tuple[str, ...], earlier: list[str], i: int, record_id: str) -> bytes:
    roll = rng.random()
    if roll < 0.03 and earlier:
        text = rng.choice(earlier)
    elif roll < 0.07:
        text = rng.choice(SPAM) * rng.randint(20, 200)
    elif roll < 0.08:
        text = " ".join(rng.choice(pool).split()[:3])
    elif roll < 0.085:
        text = ""
    elif roll < 0.087:
        return b'{"id": "broken-%d", "text": "unterminated\n' % i
    else:
        text = " ".join(rng.choice(pool) for _ in range(rng.randint(3, 20)))
        if len(earlier) < 10_000:
            earlier.append(text)
        elif rng.random() < 0.01:
            earlier[rng.randrange(len(earlier))] = text
    return json.dumps({"id": record_id, "text": text}, ensure_ascii=False).encode() + b"\n"


def _code_sources() -> list[tuple[str, str, str]]:
    """(language, extension, source) of every standard-library module under 64 KB and every snippet."""
    out = [("python", ".py", p.read_text(encoding="utf-8")) for p in sorted(STDLIB.glob("*.py")) if p.stat().st_size < 65_536]
    for name, source in sorted(SNIPPETS.items()):
        language = name.split("/", 1)[0]
        out.append((language, "." + name.rsplit(".", 1)[1], source))
    return out


def _write_batch(batch: Path, card: dict, fill) -> dict:
    """Write a ready batch atomically, or reuse it when one with the same card already lies there."""
    card_path = batch.parent / f"{batch.name}.corpus.json"  # beside the batch: inside, it would be an unrecognized file
    if card_path.is_file() and json.loads(card_path.read_text()) == card and (batch / READY_MARKER).is_file():
        return card
    with atomic_path(batch) as tmp:
        tmp.mkdir(parents=True)
        fill(tmp, random.Random(card["seed"]))
        (tmp / READY_MARKER).touch()
    card_path.write_text(json.dumps(card))
    return card


def write_text_batch(batch: Path, records: int, seed: int = 0) -> dict:
    def fill(tmp: Path, rng: random.Random) -> None:
        pool = sentences()
        earlier: list[str] = []
        (tmp / "text").mkdir()
        for shard in range(0, records, SHARD_RECORDS):
            with open(tmp / "text" / f"part-{shard // SHARD_RECORDS:05d}.jsonl", "wb") as f:
                f.writelines(_text_line(rng, pool, earlier, i, f"doc-{seed}-{i}" if seed else f"doc-{i}") for i in range(shard, min(shard + SHARD_RECORDS, records)))

    # Batches of other seeds get ids of their own: batches of one landing zone do not share ids.
    return _write_batch(batch, {"text_records": records, "seed": seed, **({"ids": "doc-<seed>-<i>"} if seed else {})}, fill)


def write_code_batch(batch: Path, files: int, seed: int = 0) -> dict:
    def fill(tmp: Path, rng: random.Random) -> None:
        sources = _code_sources()
        for i in range(files):
            language, ext, source = sources[i % len(sources)]
            if rng.random() < 0.1:
                source = broken_copy(source, language)
            path = tmp / "code" / f"{i // 1000:03d}" / f"file_{i:06d}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{COMMENT[language]} kiln benchmark file {i}\n{source}", encoding="utf-8")

    return _write_batch(batch, {"code_files": files, "seed": seed}, fill)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("landing", type=Path, help="writes <landing>/text/batch-0001 and <landing>/code/batch-0001")
    parser.add_argument("--text", type=int, default=1_000_000)
    parser.add_argument("--code", type=int, default=50_000)
    args = parser.parse_args()
    print(write_text_batch(args.landing / "text" / "batch-0001", args.text))
    print(write_code_batch(args.landing / "code" / "batch-0001", args.code))
