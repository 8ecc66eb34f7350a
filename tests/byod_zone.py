"""A landing batch in the formats users' tools write (issue 26's "bring your own data"), for any test
that needs one: the cleaning of local files, and the same files served from an object store.

    <landing>/<name>/images/00000.tar           a WebDataset shard written by webdataset's TarWriter:
                                                100 samples (.jpg, .txt, .json), 5 without a caption,
                                                3 with a corrupt JPEG, 1 whose members are named ../x.*
    <landing>/<name>/images/00000.parquet       img2dataset's log of the shard, and its stats, beside it
    <landing>/<name>/images/00000_stats.json
    <landing>/<name>/code/the-stack.parquet     The Stack v1's columns, 200 rows in 5 languages, 10 that
                                                do not parse, 4 whose language comes from the path
    <landing>/<name>/text/fineweb.parquet       FineWeb's columns (text, id, url, language, ...)

`byod_batch` returns what must become of the records whose fate the files decide, {source: reason,
or None for kept}; the rest may be kept or rejected by the content filters, with a reason.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from training.config import CleaningConfig, NearDupConfig, TextFilterConfig

SAMPLES = 100
NO_CAPTION = {7, 23, 41, 66, 88}
CORRUPT = {12: "truncated", 50: "garbage", 77: "bad header"}
OUTSIDE = 99
"""The sample whose members are written as `../x.jpg`, `../x.txt`, `../x.json`."""
BLUE = {3, 30, 60, 90}
"""Blue squares captioned as blue: the test scorer (`tests.helpers.redness`) scores them low."""

LANGUAGES = {"Python": ".py", "JavaScript": ".js", "Java": ".java", "C": ".c", "Go": ".go"}
BROKEN_CODE = {17, 38, 59, 80, 101, 122, 143, 164, 185, 199}
PATH_ONLY = {5, 55, 105, 155}
"""Rows with a null `lang`: the language comes from the path's extension."""

# A config that makes the outcome depend on the files alone: one worker (no process pool in a
# test), no near-duplicate judgement between the generated programs.
CONFIG = CleaningConfig(workers=1, near_dup=NearDupConfig(enabled=False), text=TextFilterConfig(min_words=3))


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="JPEG")
    return buf.getvalue()


def _corrupt(kind: str) -> bytes:
    good = _jpeg((200, 10, 10))
    return {"truncated": good[: len(good) * 3 // 4], "garbage": bytes(range(256)) * 4, "bad header": b"\xff\xd8\xff\xe0" + b"\x00" * 300}[kind]


def _key(i: int) -> str:
    return f"{i:09d}"  # img2dataset's keys: shard number and index, zero-padded


def write_shard(path: Path) -> dict[str, str | None]:
    """The WebDataset shard, through webdataset's own TarWriter; {source suffix: expected reason}."""
    expected: dict[str, str | None] = {}
    with wds.TarWriter(str(path)) as sink:
        for i in range(SAMPLES):
            key = "../x" if i == OUTSIDE else _key(i)
            blue = i in BLUE
            sample = {
                "__key__": key,
                "jpg": _corrupt(CORRUPT[i]) if i in CORRUPT else _jpeg((10, 10, 200) if blue else (200, 10, 10)),
                "json": json.dumps({"url": f"https://images.example.com/{i}.jpg", "key": key, "status": "success", "width": 16, "height": 16}),
            }
            if i not in NO_CAPTION:
                sample["txt"] = f"a blue square, photograph {i}" if blue else f"a red square, photograph {i}"
            sink.write(sample)
            expected[key] = (
                "outside_landing_zone" if i == OUTSIDE else "caption_missing" if i in NO_CAPTION
                else ("image_truncated" if CORRUPT[i] == "truncated" else "image_unreadable") if i in CORRUPT else "clip_low" if blue else None
            )
    return expected


def _program(language: str, i: int, rng: random.Random) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(14))
    n, m = rng.randrange(1000), rng.randrange(1000)
    return {
        "Python": f"# {words}\ndef step_{i}(x):\n    return x * {n} + {m}\n",
        "JavaScript": f"// {words}\nfunction step{i}(x) {{\n  return x * {n} + {m};\n}}\n",
        "Java": f"// {words}\nclass Step{i} {{\n  static int apply(int x) {{ return x * {n} + {m}; }}\n}}\n",
        "C": f"/* {words} */\nint step_{i}(int x) {{\n  return x * {n} + {m};\n}}\n",
        "Go": f"// {words}\npackage steps\n\nfunc Step{i}(x int) int {{\n\treturn x*{n} + {m}\n}}\n",
    }[language]


WORDS = (
    "kiln clay glaze fire cone bisque stoneware porcelain slip wheel throw trim kick wedge bat rib "
    "sponge needle loop wire ware shelf post damper flue chimney soda salt ash wood gas electric reduction "
    "oxidation crawl craze shiver pinhole blister dunt bloat warp slump sag flux frit silica alumina feldspar"
).split()


def write_the_stack(path: Path) -> dict[str, str | None]:
    """The Stack v1's columns; {source suffix: expected reason} (kept, or tree_sitter_error)."""
    rng = random.Random(26)
    names = list(LANGUAGES)
    rows = []
    for i in range(200):
        lang = names[i % len(names)]
        content = _program(lang, i, rng)
        if i in BROKEN_CODE:
            content = content[: content.index("(") + 1] + "\n"  # cut inside an open bracket
        rows.append({
            "hexsha": f"{i:040x}", "size": len(content.encode()), "ext": LANGUAGES[lang][1:],
            "lang": None if i in PATH_ONLY else lang,
            "max_stars_repo_path": f"src/{lang.lower()}/step_{i}{LANGUAGES[lang]}",
            "max_stars_repo_name": "kiln/examples", "max_stars_repo_licenses": ["MIT"], "content": content,
        })
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=64)
    return {str(i + 1): "tree_sitter_error" if i in BROKEN_CODE else None for i in range(200)}


def write_fineweb(path: Path) -> dict[str, str | None]:
    """FineWeb's columns, documents from Python's own documentation; {source suffix: expected reason}."""
    from pydoc_data.topics import topics

    texts = [t for _, t in sorted(topics.items()) if len(t) < 20_000][:40]
    rows = [
        {"text": t, "id": f"<urn:uuid:{i:08x}-kiln>", "dump": "CC-MAIN-2024-10", "url": f"https://docs.example.org/{i}",
         "date": "2024-02-20T00:00:00Z", "file_path": "s3://commoncrawl/x.warc.gz", "language": "en", "language_score": 0.97,
         "token_count": len(t.split())}
        for i, t in enumerate(texts)
    ]
    rows[5]["text"] = None
    rows[9]["id"] = ""
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=16)
    return {"6": "text_missing", "10": "id_invalid"}


def byod_batch(landing: Path, name: str = "b1") -> dict[str, str | None]:
    """The batch, ready (`_SUCCESS` written last); {source: expected reason or None (kept)}."""
    b = landing / name
    for folder in ("images", "code", "text"):
        (b / folder).mkdir(parents=True)
    expected: dict[str, str | None] = {}
    for key, reason in write_shard(b / "images" / "00000.tar").items():
        expected[f"{name}/images/00000.tar:{key}"] = reason
    pq.write_table(pa.table({"key": [_key(i) for i in range(SAMPLES)], "status": ["success"] * SAMPLES}), b / "images" / "00000.parquet")
    (b / "images" / "00000_stats.json").write_text(json.dumps({"count": SAMPLES, "successes": SAMPLES}))
    expected[f"{name}/images/00000.parquet"] = expected[f"{name}/images/00000_stats.json"] = "shard_metadata"
    for row, reason in write_the_stack(b / "code" / "the-stack.parquet").items():
        expected[f"{name}/code/the-stack.parquet:{row}"] = reason
    for row, reason in write_fineweb(b / "text" / "fineweb.parquet").items():
        expected[f"{name}/text/fineweb.parquet:{row}"] = reason
    (b / "_SUCCESS").touch()
    return expected

