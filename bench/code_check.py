"""The code check (`training/data/filters/code.py`) on real code kiln did not write: the source files of
the packages installed beside kiln (site-packages), and copies of them cut inside an open bracket.

    python -m bench.code_check                 # 300 files a language, prints the table
    python -m bench.code_check --files 50

Per language (the extension map of `training/data/readers.py`, `.h` as C or C++):
- installed files: those with the language's extensions and at most `max_file_bytes`; sampled: a
  seeded choice of them (from sorted paths, so the same tree gives the same sample) that the reader
  would hand to the parser (UTF-8, not binary, not blank), all of them where there are fewer.
- valid kept: the share of the sample the check keeps (every file is valid: it ships in a package);
  "any error rejects" is the same share under the rule kiln had before, which rejected every file
  with an ERROR or MISSING node.
- cut inside a bracket rejected: each sampled file cut at a random byte (on a character boundary)
  that lies between an opening bracket token of its parse and the matching closing one.
- another language rejected: the Python sample (the JavaScript one for Python) given this language:
  a file that is not C at all must not pass as C because C forgives macros.
"""

from __future__ import annotations

import argparse
import random
import sysconfig
import time
from collections import Counter, defaultdict
from pathlib import Path

from tree_sitter import Node

from training.config import CodeFilterConfig
from training.data.filters.code import check_code, parser_for
from training.data.readers import CODE_LANGUAGES
from training.markdown import markdown_table

PAIRS = {"(": ")", "[": "]", "{": "}"}
LABELS = {"c_or_cpp": ".h (C or C++)"}


def installed_files(root: Path, cfg: CodeFilterConfig) -> dict[str, list[Path]]:
    """The files under `root` with an extension of the reader's map and a size it would read
    (1 byte to `max_file_bytes`), by language, in sorted order."""
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(root.rglob("*")):
        language = CODE_LANGUAGES.get(path.suffix.lower())
        if language is not None and not path.is_symlink() and path.is_file() and 0 < path.stat().st_size <= cfg.max_file_bytes:
            found[language].append(path)
    return found


def sample(paths: list[Path], n: int, seed: int, cfg: CodeFilterConfig) -> list[tuple[Path, str]]:
    """`n` of `paths` in a seeded order, skipping those the reader would reject (not UTF-8, binary,
    blank), sorted by path."""
    order = list(paths)
    random.Random(seed).shuffle(order)
    chosen = []
    for path in order:
        if len(chosen) == n:
            break
        if (text := readable(path, cfg)) is not None and text.strip():
            chosen.append((path, text))
    return sorted(chosen)


def readable(path: Path, cfg: CodeFilterConfig) -> str | None:
    data = path.read_bytes()[: cfg.max_file_bytes]
    if b"\0" in data[: cfg.binary_sniff_bytes]:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def inside_bracket(root: Node, offset: int) -> bool:
    """Whether byte `offset` lies between an opening bracket token and its closing one."""
    node: Node | None = root.descendant_for_byte_range(offset, offset)
    while node is not None and node.parent is not None:  # the root holds no bracket tokens of its own
        kids = node.children
        opened = [k for k in kids if k.type in PAIRS and not k.is_missing and k.end_byte <= offset]
        if opened and any(k.type == PAIRS[opened[-1].type] and not k.is_missing and k.start_byte >= offset for k in kids):
            return True
        node = node.parent
    return False


def cut_inside_bracket(grammar: str, text: str, rng: random.Random, tries: int = 200) -> str | None:
    """`text` cut at a random byte inside an open bracket of its parse; None if none was drawn."""
    data = text.encode("utf-8")
    if len(data) < 2:
        return None
    root = parser_for(grammar).parse(data).root_node
    for _ in range(tries):
        offset = rng.randrange(1, len(data))
        while offset > 0 and data[offset] & 0xC0 == 0x80:  # not inside a UTF-8 sequence
            offset -= 1
        if offset and inside_bracket(root, offset):
            return data[:offset].decode("utf-8")
    return None


def _pct(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def run(files_per_language: int = 300, seed: int = 26, root: Path | None = None, cfg: CodeFilterConfig = CodeFilterConfig()) -> dict:
    root = root or Path(sysconfig.get_paths()["purelib"])
    start = time.perf_counter()
    found = installed_files(root, cfg)
    samples = {lang: sample(paths, files_per_language, seed, cfg) for lang, paths in sorted(found.items())}
    texts = {lang: [text for _, text in chosen] for lang, chosen in samples.items()}
    rows = []
    for language, chosen in samples.items():
        rng = random.Random(seed)
        kept = strict = 0
        grammars: Counter = Counter()
        rejected_examples = []
        cuts = cut_rejected = 0
        for path, text in chosen:
            verdict, grammar = check_code(language, text, cfg)
            grammars[grammar] += 1
            kept += verdict is None
            strict += not parser_for(grammar).parse(text.encode("utf-8")).root_node.has_error
            if verdict is not None and len(rejected_examples) < 5:
                rejected_examples.append(f"{path.relative_to(root)}: {verdict.detail}")
            if (cut := cut_inside_bracket(grammar, text, rng)) is not None:
                cuts += 1
                cut_rejected += check_code(language, cut, cfg)[0] is not None
        other = texts.get("javascript" if language == "python" else "python", [])
        other_rejected = sum(check_code(language, t, cfg)[0] is not None for t in other)
        rows.append({
            "language": language, "files": len(found[language]), "sampled": len(chosen),
            "valid_kept_pct": _pct(kept, len(chosen)), "any_error_rejects_kept_pct": _pct(strict, len(chosen)),
            "cut_copies": cuts, "cut_rejected_pct": _pct(cut_rejected, cuts),
            "other_language_files": len(other), "other_language_rejected_pct": _pct(other_rejected, len(other)),
            "grammars": dict(grammars), "rejected_examples": rejected_examples,
        })
    return {"root": str(root), "seed": seed, "files_per_language": files_per_language, "rows": rows,
            "max_error_lines": cfg.max_error_lines, "max_skipped_bytes": cfg.max_skipped_bytes,
            "seconds": round(time.perf_counter() - start, 1)}


def markdown(result: dict) -> str:
    rows = []
    for r in result["rows"]:
        label = LABELS.get(r["language"], r["language"])
        if len(r["grammars"]) > 1 or r["language"] in LABELS:
            label += " (" + ", ".join(f"{g} {n}" for g, n in sorted(r["grammars"].items())) + ")"
        rows.append([label, r["files"], r["sampled"], r["valid_kept_pct"], r["any_error_rejects_kept_pct"], r["cut_copies"], r["cut_rejected_pct"], r["other_language_rejected_pct"]])
    table = markdown_table(["language", "installed files", "sampled", "valid kept %", "valid kept % if any error rejects", "copies cut inside a bracket", "cut copies rejected %", "another language's files rejected %"], rows)
    rejected = [f"- {LABELS.get(r['language'], r['language'])}: {e}" for r in result["rows"] for e in r["rejected_examples"]]
    return (f"Installed packages' source files ({result['root']}), seed {result['seed']}, C/C++ limits: errors on "
            f"{result['max_error_lines']:.0%} of lines, {result['max_skipped_bytes']:.0%} of bytes skipped; {result['seconds']} s.\n\n{table}"
            + ("\n\nValid files rejected (up to 5 a language):\n\n" + "\n".join(rejected) if rejected else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300, help="files sampled per language")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--root", type=Path, default=None, help="default: this environment's site-packages")
    args = parser.parse_args()
    print(markdown(run(args.files, args.seed, args.root)))


if __name__ == "__main__":
    main()
