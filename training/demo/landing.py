"""The embedded default landing zone: real material that ships with kiln's dependencies, plus
deliberate defects of every kind the cleaning must catch.

- text: Python's documentation topics (`pydoc_data`), standard-library docstrings (as Parquet),
  Python's license (a long legal text), the Zen of Python, Chinese prose written for kiln, and a file
  of broken records (malformed JSON, invalid UTF-8, spam, duplicates, ...).
- code: standard-library modules, small programs in seven more languages (`snippets.py`) and broken
  copies of them, plus binary, undecodable, empty, oversized and unsupported files.
- images: procedurally drawn scenes with generated captions (enough for a small CLIP to learn from),
  scikit-image's sample photographs with captions written for them, a known share of deliberately
  mismatched captions (`"match": false`), and broken images of every kind.

Every deliberate defect is listed with the reason it must get in `<landing>/_expected.json`.
Run by hand:  python -m training.demo.landing <landing dir>
"""

from __future__ import annotations

import ast
import codecs
import io
import json
import random
import struct
import sys
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from training.data.landing import READY_MARKER
from training.demo.snippets import CHINESE_PROSE, SNIPPETS
from training.fsutil import atomic_path, write_json

STDLIB = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
MISMATCH_SHARE = 0.1
"""Share of scene captions that describe a different scene."""

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 170),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (128, 128, 128), "black": (15, 15, 15), "beige": (225, 210, 180)}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "center": (0.5, 0.5)}
SIZES = {"small": 0.14, "large": 0.26}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the middle",
}

# scikit-image's sample photographs, each with captions written for it.
PHOTO_CAPTIONS = {
    "astronaut.png": ["an astronaut in a white spacesuit", "a woman astronaut holding a helmet", "portrait of an astronaut with a flag behind her"],
    "camera.png": ["a black and white photo of a man with a camera on a tripod", "a photographer in a field", "a grayscale image of a cameraman"],
    "coffee.png": ["a cup of coffee on a saucer", "a white cup of black coffee with a spoon", "coffee in a cup seen from above"],
    "chelsea.png": ["an orange tabby cat", "a cat looking to the side", "close up of a ginger cat's face"],
    "rocket.jpg": ["a rocket on the launch pad", "a space rocket standing against a blue sky", "a rocket ready for launch"],
    "horse.png": ["the silhouette of a horse", "a black horse shape on a white background", "a horse outline"],
    "coins.png": ["old coins on a table", "a grayscale photo of many coins", "rows of coins"],
    "moon.png": ["the surface of the moon", "craters on the moon", "a grayscale image of lunar craters"],
    "page.png": ["a scanned page of printed text", "a page of a book with uneven lighting", "printed text on paper"],
    "text.png": ["handwritten and printed text on a wall", "text written on a stone wall", "letters and words in grayscale"],
    "hubble_deep_field.jpg": ["galaxies in deep space", "the hubble deep field full of galaxies", "many distant galaxies on a black sky"],
    "immunohistochemistry.png": ["a microscope image of stained tissue", "stained cells under a microscope", "brown and blue stained tissue sample"],
    "retina.jpg": ["a photo of the human retina", "the back of an eye with blood vessels", "a retinal fundus image"],
    "motorcycle_left.png": ["a motorcycle in a garage", "a parked motorbike", "a red motorcycle seen from the side"],
    "brick.png": ["a brick wall", "a grayscale texture of bricks", "rows of bricks in a wall"],
    "grass.png": ["a patch of grass", "a grayscale texture of grass blades", "close up of grass"],
    "gravel.png": ["a gravel texture", "small stones on the ground", "gray gravel"],
    "color.png": ["a color test chart", "a grid of colored patches", "colorful squares of paint"],
    "logo.png": ["the scikit-image logo", "a snake and a grid logo", "a logo on a white background"],
    "cell.png": ["a single cell under a microscope", "a microscope image of a cell", "a grayscale image of a cell"],
    "chessboard_RGB.png": ["a chessboard pattern", "black and white squares of a checkerboard", "a checkerboard"],
    "clock_motion.png": ["a blurred wall clock", "a clock with motion blur", "a grayscale photo of a clock"],
    "microaneurysms.png": ["a close up of retinal blood vessels", "a grayscale retina image with small spots", "blood vessels in an eye"],
}


def _jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


# --------------------------------------------------------------------------- text


def _pydoc_records() -> list[dict]:
    """Python's documentation topics, cut at paragraph boundaries into records of <= 3,000 characters."""
    from pydoc_data.topics import topics

    records = []
    for name in sorted(topics):
        chunk: list[str] = []
        part = 0
        for para in topics[name].split("\n\n"):
            if chunk and sum(map(len, chunk)) + len(para) > 3000:
                records.append({"id": f"pydoc/{name}/{part}", "text": "\n\n".join(chunk)})
                chunk, part = [], part + 1
            chunk.append(para)
        if chunk:
            records.append({"id": f"pydoc/{name}/{part}", "text": "\n\n".join(chunk)})
    return records


def _stdlib_modules() -> list[Path]:
    return sorted(p for p in STDLIB.glob("*.py") if 2_000 < p.stat().st_size < 40_000)


def _docstrings(modules: list[Path]) -> list[dict]:
    """Module, class and function docstrings of the given standard-library modules (parsed, not imported)."""
    out = []
    for path in modules:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for node in nodes:
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 80:
                name = getattr(node, "name", "")
                out.append({"id": f"docstring/{path.stem}{'.' + name if name else ''}/{getattr(node, 'lineno', 0)}", "text": doc})
    return out


def _parquet(records: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf, compression="zstd")
    return buf.getvalue()


def _text_defects(duplicate_of: str) -> tuple[bytes, list[str]]:
    """One broken record per line, with the reason each must be rejected for."""
    lines: list[tuple[bytes, str]] = [
        (b'{"id": "bad-json", "text": "an unterminated string}', "json_malformed"),
        (b'["a", "json", "array", "is", "not", "a", "record"]', "json_malformed"),
        (b'{"id": "bad-utf8", "text": "caf\xe9 au lait is latin-1, not utf-8"}', "utf8_invalid"),
        (b'{"id": "surrogate", "text": "a lone surrogate \\ud800 cannot be written as utf-8 text at all"}', "utf8_invalid"),
        (b'{"id": "no-text", "body": "the field is called body, not text, so there is no text"}', "text_missing"),
        (b'{"id": "null-text", "text": null}', "text_missing"),
        (b'{"id": "number-text", "text": 42}', "text_not_string"),
        (b'{"id": ["a", "list"], "text": "an id must be a string or an integer, never a list of things"}', "id_invalid"),
        (b'{"id": "empty", "text": ""}', "text_empty"),
        (b'{"id": "blank", "text": "   \\n\\t  "}', "text_empty"),
        (b'{"id": "few-words", "text": "thanks a lot!"}', "too_few_words"),
        (json.dumps({"id": "spam", "text": "buy now " * 60}).encode(), "entropy_low"),
        (json.dumps({"id": "laugh", "text": "hahaha hahahaha hahaha hahahahaha " * 15}).encode(), "entropy_low"),
        (json.dumps({"id": "aaaa", "text": "aaaa " * 80}).encode(), "entropy_low"),
        (json.dumps({"id": "dup-of-first", "text": duplicate_of}).encode(), "duplicate"),
        (json.dumps({"id": "pydoc/assert/0", "text": "This record reuses an id that the Python documentation already gave to its first assert topic."}).encode(), "duplicate_id"),
    ]
    return b"".join(raw + b"\n" for raw, _ in lines), [reason for _, reason in lines]


# --------------------------------------------------------------------------- code


def broken_copy(source: str, language: str) -> str:
    """A broken copy: cut before the last closing brace (or, for Python, inside a call)."""
    if language == "python":
        lines = source.splitlines()
        return "\n".join(lines[: len(lines) // 2]) + "\ndef broken(x, :\n    return (x\n"
    return source[: source.rstrip().rfind("}")]


# --------------------------------------------------------------------------- images


def random_scene(rng: random.Random) -> dict:
    n = 1 if rng.random() < 0.6 else 2
    positions = rng.sample(sorted(POSITIONS), n)
    objects = [
        {"shape": rng.choice(SHAPES), "color": rng.choice(sorted(COLORS)), "size": rng.choice(sorted(SIZES)), "position": p}
        for p in positions
    ]
    background = rng.choice(sorted(BACKGROUNDS))
    while any(COLORS[o["color"]] == BACKGROUNDS.get(background) for o in objects) or (
        background in COLORS and any(o["color"] == background for o in objects)
    ):
        background = rng.choice(sorted(BACKGROUNDS))
    return {"objects": objects, "background": background}


def draw_scene(scene: dict, size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene["background"]])
    draw = ImageDraw.Draw(img)
    for o in scene["objects"]:
        cx, cy = POSITIONS[o["position"]]
        cx, cy = (cx + rng.uniform(-0.04, 0.04)) * size, (cy + rng.uniform(-0.04, 0.04)) * size
        r = SIZES[o["size"]] * size * rng.uniform(0.9, 1.1)
        fill = COLORS[o["color"]]
        box = [cx - r, cy - r, cx + r, cy + r]
        if o["shape"] == "circle":
            draw.ellipse(box, fill=fill)
        elif o["shape"] == "square":
            draw.rectangle(box, fill=fill)
        elif o["shape"] == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        else:
            w = r / 3
            draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
            draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
    return img


def scene_caption(scene: dict, rng: random.Random) -> str:
    parts = [f"a {o['size']} {o['color']} {o['shape']} {POSITION_PHRASES[o['position']]}" for o in scene["objects"]]
    body = " and ".join(parts)
    template = rng.choice(["{b}", "{b} on a {bg} background", "a picture of {b}", "there is {b}, {bg} background"])
    return template.format(b=body, bg=scene["background"])


def encode_image(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring `width`x`height` over a few bytes of data: a decompression bomb
    whose pixels must never be decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _scenes(batch: Path, rng: random.Random, count: int, prefix: str) -> list[dict]:
    captions = []
    formats = [("PNG", ".png")] * 7 + [("JPEG", ".jpg")] * 2 + [("WEBP", ".webp")]
    for i in range(count):
        scene = random_scene(rng)
        fmt, ext = rng.choice(formats)
        name = f"scenes/{prefix}{i:05d}{ext}"
        _write(batch / "images" / name, encode_image(draw_scene(scene, 96, rng), fmt))
        match = rng.random() >= MISMATCH_SHARE
        shown = scene
        if not match:  # a caption of a scene sharing no shape/colour pair with this one
            while {(o["shape"], o["color"]) for o in shown["objects"]} & {(o["shape"], o["color"]) for o in scene["objects"]}:
                shown = random_scene(rng)
        captions.append({"image": name, "caption": scene_caption(shown, rng), "match": match})
    return captions


def _photos(batch: Path, rng: random.Random) -> list[dict]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    names = sorted(PHOTO_CAPTIONS)
    captions = []
    for name in names:
        src = data / name
        if not src.is_file():
            continue
        _write(batch / "images" / "photos" / name, src.read_bytes())
        for caption in PHOTO_CAPTIONS[name]:
            captions.append({"image": f"photos/{name}", "caption": caption, "match": True})
        other = rng.choice([n for n in names if n != name])
        if rng.random() < 0.3:
            captions.append({"image": f"photos/{name}", "caption": PHOTO_CAPTIONS[other][0], "match": False})
    return captions


def _image_defects(batch: Path, rng: random.Random) -> tuple[list[bytes], dict[str, str]]:
    """Broken images (each captioned, so it reaches the decoder) and broken caption lines; the lines
    come first in captions.jsonl, so a malformed one's source is its line number here."""
    images = batch / "images"
    scene_png = encode_image(draw_scene(random_scene(rng), 96, rng), "PNG")
    scene_jpg = encode_image(draw_scene(random_scene(rng), 96, rng), "JPEG")
    files = {
        "broken/empty.png": (b"", "image_empty"),
        "broken/truncated.png": (scene_png[: len(scene_png) * 2 // 3], "image_truncated"),
        "broken/truncated.jpg": (scene_jpg[: len(scene_jpg) // 2], "image_truncated"),
        "broken/garbage.jpg": (bytes(rng.randrange(256) for _ in range(2048)), "image_unreadable"),
        "broken/bomb.png": (_png_bomb(60_000, 60_000), "image_too_large"),
    }
    lines, expected = [], {}
    for name, (data, reason) in files.items():
        _write(images / name, data)
        lines.append(json.dumps({"image": name, "caption": "a red circle on the left"}).encode())
        expected[f"images/{name}"] = reason
    _write(images / "broken/uncaptioned.png", scene_png)
    expected["images/broken/uncaptioned.png"] = "caption_missing"
    _write(images / "notes.txt", "scenes were drawn by kiln's default landing generator\n")
    expected["images/notes.txt"] = "unsupported_extension"
    for name in ("broken/blank_caption.png", "broken/numeric_caption.png"):
        _write(images / name, scene_png)
    for raw, source, reason in [
        (b'{"image": "broken/missing.png", "caption": "a blue square at the top"}', "images/broken/missing.png", "image_missing"),
        (b'{"image": "../text/readme.txt", "caption": "escaping the images folder"}', "images/../text/readme.txt", "outside_landing_zone"),
        (b'{"image": "broken/blank_caption.png", "caption": "   "}', "images/broken/blank_caption.png", "caption_empty"),
        (b'{"image": "broken/numeric_caption.png", "caption": 7}', "images/broken/numeric_caption.png", "caption_invalid"),
        (b'{"image": "broken/unterminated.png", "caption": "unterminated', None, "json_malformed"),
    ]:
        lines.append(raw)
        expected[source or f"images/captions.jsonl:{len(lines)}"] = reason
    return lines, expected


# --------------------------------------------------------------------------- batches


def _batch_one(batch: Path, rng: random.Random, scenes: int, modules: list[Path]) -> dict[str, str]:
    expected: dict[str, str] = {}
    pydoc = _pydoc_records()
    _write(batch / "text/python_docs.jsonl", _jsonl(pydoc))
    _write(batch / "text/docstrings.parquet", _parquet(_docstrings(modules)))
    license_text = (STDLIB / "LICENSE.txt").read_text(encoding="utf-8") if (STDLIB / "LICENSE.txt").is_file() else ""
    # The Zen of Python, rot13-encoded in this.py (read, not imported: importing prints it).
    assign = next(n for n in ast.parse((STDLIB / "this.py").read_text()).body if isinstance(n, ast.Assign))
    zen = codecs.decode(ast.literal_eval(assign.value), "rot13")
    long_texts = [{"id": "python-license", "text": license_text}] if license_text else []
    long_texts += [{"id": "zen-of-python", "text": zen}] + [{"id": f"zh/{i}", "text": t} for i, t in enumerate(CHINESE_PROSE)]
    _write(batch / "text/prose.jsonl", _jsonl(long_texts))
    defects, reasons = _text_defects(pydoc[0]["text"])
    _write(batch / "text/scraped.jsonl", defects)
    expected.update({f"text/scraped.jsonl:{i + 1}": r for i, r in enumerate(reasons)})
    _write(batch / "text/readme.txt", "text records belong in .jsonl or .parquet files\n")
    expected["text/readme.txt"] = "unsupported_extension"
    _write(batch / "text/corrupt.parquet", b"PAR1" + bytes(rng.randrange(256) for _ in range(512)) + b"PAR1")
    expected["text/corrupt.parquet"] = "file_unreadable"

    for path in modules:
        _write(batch / "code/python" / path.name, path.read_bytes())
    for name, source in SNIPPETS.items():
        _write(batch / "code" / name, source)
        stem, ext = name.rsplit(".", 1)
        broken = f"{stem}_broken.{ext}"
        language = {"js": "javascript", "ts": "typescript", "tsx": "tsx"}.get(ext, ext)
        _write(batch / "code" / broken, broken_copy(source, language))
        expected[f"code/{broken}"] = "tree_sitter_error"
    first = modules[0]
    code_defects = {
        "python/broken_module.py": (broken_copy(first.read_text(encoding="utf-8"), "python").encode(), "tree_sitter_error"),
        f"python/copy_of_{first.name}": (first.read_bytes(), "duplicate"),
        "c/blob.c": (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4, "binary_file"),
        "c/latin1.c": ("/* r\xe9sum\xe9 */\nint main(void) { return 0; }\n".encode("latin-1"), "undecodable"),
        "go/empty.go": (b"", "file_empty"),
        "rust/blank.rs": (b"  \n\n\t\n", "file_empty"),
        "ruby/hello.rb": (b"puts 'hello'\n", "unsupported_extension"),
        "javascript/huge.js": (b"var counter = counter + 1;\n" * 45_000, "file_too_large"),
    }
    for name, (data, reason) in code_defects.items():
        _write(batch / "code" / name, data)
        expected[f"code/{name}"] = reason

    lines, image_expected = _image_defects(batch, rng)
    captions = _scenes(batch, rng, scenes, "a") + _photos(batch, rng)
    # Broken lines first, so their line numbers (their sources) are known.
    _write(batch / "images/captions.jsonl", b"".join(line + b"\n" for line in lines) + _jsonl(captions))
    expected.update(image_expected)
    return expected


def _batch_two(batch: Path, rng: random.Random, scenes: int, modules: list[Path], earlier_text: str) -> dict[str, str]:
    docs = _docstrings(modules)
    _write(batch / "text/docstrings.parquet", _parquet(docs))
    _write(batch / "text/repeats.jsonl", _jsonl([{"id": "repeat-of-batch-1", "text": earlier_text}]))
    for path in modules:
        _write(batch / "code/python" / path.name, path.read_bytes())
    _write(batch / "images/captions.jsonl", _jsonl(_scenes(batch, rng, scenes, "b")))
    return {"text/repeats.jsonl:1": "duplicate"}


def write_default_landing(landing: Path, scenes: int = 2000, seed: int = 0) -> dict[str, str]:
    """Write the default batches into `landing` (batches already there are left alone) and return
    the expected rejection reason of every deliberate defect, by source. Deterministic for a seed."""
    modules = _stdlib_modules()
    half = len(modules) // 2
    plan = {
        "batch-0001": lambda b: _batch_one(b, random.Random(seed + 1), scenes * 2 // 3, modules[:half]),
        "batch-0002": lambda b: _batch_two(
            b, random.Random(seed + 2), scenes - scenes * 2 // 3, modules[half:], _pydoc_records()[1]["text"]
        ),
    }
    expected_path = landing / "_expected.json"
    expected: dict[str, str] = json.loads(expected_path.read_text()) if expected_path.is_file() else {}
    for name, build in plan.items():
        if (landing / name / READY_MARKER).is_file():
            continue
        with atomic_path(landing / name) as tmp:
            expected.update({f"{name}/{k}": v for k, v in build(tmp).items()})
            (tmp / READY_MARKER).touch()
    # A batch still being written: no _SUCCESS, so cleaning must not read it.
    incoming = landing / "batch-0003"
    if not incoming.exists():
        _write(incoming / "text/partial.jsonl", _jsonl([{"text": "this batch has no _SUCCESS marker yet, so nothing in it is read"}]))
    write_json(expected_path, expected)
    return expected


if __name__ == "__main__":
    out = write_default_landing(Path(sys.argv[1]))
    print(f"wrote {sys.argv[1]} with {len(out)} deliberate defects")
