"""Cleaning throughput from an S3-compatible server against the same landing zone on local disk.

The embedded default landing zone (`training.demo.landing`: text, code, 2,000+ images) is written to
disk in two layouts: packed as object storage keeps data (images as WebDataset shards, code as one
Parquet file) and as loose files (one object per image and code file); each is uploaded to moto's S3 server, which runs in a process of its own on 127.0.0.1 (as a real
store is elsewhere: its work is not on the cleaning's clock). Each repeat cleans the zone from disk,
then from `s3://`, into fresh output folders (nothing cached), with the same config and no CLIP (pairs
are read and decoded, then rejected as `clip_unavailable`). The rows are compared: both runs must keep
and reject the same records.

    python -m bench.object_storage [--repeats 3] [--work DIR] [--scenes 2000]

Prints one JSON object and a markdown table. For `make bench`, a section of bench/run.py:
`results["object_storage"] = {**(row := object_storage.run(work / "object_storage", repeats)),
"markdown": object_storage.markdown(row)}`, and its markdown under a heading of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

TARGET = 0.8
"""Throughput from the S3 server must be at least this share of local disk's (issue 26)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, dict[str, str], float]:
    """moto's S3 server in a child process: (process, the environment that reaches it, seconds to start)."""
    port = _free_port()
    code = (
        "import logging, time; logging.disable(logging.INFO)\n"
        "from moto.server import ThreadedMotoServer\n"
        f"ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False).start()\n"
        "time.sleep(10**9)\n"
    )
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {
        "AWS_ACCESS_KEY_ID": "kiln-bench", "AWS_SECRET_ACCESS_KEY": "kiln-bench", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
    }
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, env, time.perf_counter() - started
        except OSError:
            if proc.poll() is not None or time.perf_counter() - started > 60:
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.05)


def upload(local: Path, fs, root: str) -> float:
    """Every file under `local` as an object under `root` (many at a time), each `_SUCCESS` last."""
    start = time.perf_counter()
    files = sorted(p for p in local.rglob("*") if p.is_file())
    key = lambda p: f"{root}/{p.relative_to(local).as_posix()}"  # noqa: E731
    fs.pipe({key(p): p.read_bytes() for p in files if p.name != "_SUCCESS"})
    fs.pipe({key(p): b"" for p in files if p.name == "_SUCCESS"})
    return time.perf_counter() - start


def pack(loose: Path, packed: Path, shard_samples: int = 1000) -> None:
    """The loose zone's records as they are kept in object storage: each batch's captioned images as
    WebDataset shards (webdataset's TarWriter: `{key}.<ext>`, `.txt` caption, `.json` id and match),
    its code files as one The Stack-shaped Parquet file (`content`, `path`), its text files as they
    are (a few large files already). What only the loose layout can express (an uncaptioned image, a
    caption naming a missing file, an undecodable code file) is left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    for batch in sorted(p for p in loose.iterdir() if (p / "_SUCCESS").is_file()):
        out = packed / batch.name
        if (out / "_SUCCESS").is_file():
            continue
        shutil.copytree(batch / "text", out / "text", dirs_exist_ok=True) if (batch / "text").is_dir() else None
        samples = []
        captions = batch / "images" / "captions.jsonl"
        for line in captions.read_text(errors="replace").splitlines() if captions.is_file() else []:
            try:
                obj = json.loads(line)
                image = batch / "images" / obj["image"]
                data, caption = image.read_bytes(), obj["caption"]
            except (ValueError, KeyError, TypeError, OSError):
                continue
            if isinstance(caption, str) and image.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
                meta = {k: obj[k] for k in ("id", "match") if k in obj}
                samples.append({image.suffix.lower()[1:]: data, "txt": caption, "json": json.dumps(meta)})
        (out / "images").mkdir(parents=True, exist_ok=True)
        for n in range(0, len(samples), shard_samples):
            with wds.TarWriter(str(out / "images" / f"{n // shard_samples:05d}.tar")) as sink:
                for i, sample in enumerate(samples[n : n + shard_samples]):
                    sink.write({"__key__": f"{n // shard_samples:05d}{i:04d}", **sample})
        rows = []
        for path in sorted(p for p in (batch / "code").rglob("*") if p.is_file()) if (batch / "code").is_dir() else []:
            try:
                rows.append({"content": path.read_bytes().decode("utf-8"), "path": path.relative_to(batch / "code").as_posix()})
            except (UnicodeDecodeError, OSError):
                continue
        if rows:
            (out / "code").mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), out / "code" / "code.parquet", row_group_size=64)
        (out / "_SUCCESS").touch()


def _clean(landing: str, out: Path) -> tuple[float, int, list]:
    from training.config import CleaningConfig
    from training.data.clean import clean_landing

    start = time.perf_counter()
    report = clean_landing(landing, out / "corpus", out / "rejected", CleaningConfig(), None, batches_dir=out / "batches")
    seconds = time.perf_counter() - start
    counts = [(r.batch, r.modality, r.kept, r.rejected, r.reasons) for r in report.results]
    return seconds, sum(r.kept + r.rejected for r in report.results), counts


def run(work: Path, repeats: int = 3, scenes: int = 2000) -> dict:
    """Both layouts of the default landing zone: its records packed as shards and Parquet (how data
    is kept in object storage), and as loose files (one object per image and code file)."""
    from training.demo.landing import write_default_landing

    loose = work / "landing"
    if not loose.is_dir():
        write_default_landing(loose, scenes=scenes)
    pack(loose, work / "packed")
    return {"packed": compare(work / "packed", work, repeats), "loose": compare(loose, work, repeats)}


def compare(local: Path, work: Path, repeats: int) -> dict:
    """Clean `local` from disk and, uploaded, from the S3 server, `repeats` times each, alternating."""
    files = [p for p in local.rglob("*") if p.is_file()]
    proc, env, startup = start_server()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import fsspec
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = fsspec.filesystem("s3")
        bucket = f"kiln-bench-{uuid.uuid4().hex[:8]}"
        fs.mkdir(bucket)
        uploaded = upload(local, fs, f"{bucket}/zone")
        times: dict[str, list[float]] = {"local": [], "s3": []}
        counts: dict[str, list] = {}
        records = 0
        for _ in range(repeats):
            for where, location in (("local", str(local)), ("s3", f"s3://{bucket}/zone")):
                out = work / f"out-{uuid.uuid4().hex[:8]}"
                seconds, records, counts[where] = _clean(location, out)
                times[where].append(seconds)
                shutil.rmtree(out)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    local_s, s3_s = statistics.median(times["local"]), statistics.median(times["s3"])
    ratio = local_s / s3_s
    return {
        "landing": {"files": len(files), "mb": round(sum(p.stat().st_size for p in files) / 1e6, 1), "records": records},
        "server_start_s": round(startup, 2), "upload_s": round(uploaded, 2), "repeats": repeats,
        "local_s": round(local_s, 2), "s3_s": round(s3_s, 2),
        "local_records_per_s": round(records / local_s, 1), "s3_records_per_s": round(records / s3_s, 1),
        "s3_over_local": round(ratio, 3), "target": TARGET, "meets_target": ratio >= TARGET,
        "same_counts": counts["local"] == counts["s3"],
        "times": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "cpus": os.cpu_count(),
    }


def markdown(results: dict) -> str:
    lines = [
        "Cleaning the default landing zone from moto's S3 server on 127.0.0.1 against the same files on local disk "
        f"(median of {results['packed']['repeats']} runs each, alternating; no CLIP: pairs decoded, then `clip_unavailable`):",
        "",
        "| layout | files | MB | records | local s | S3 s | local records/s | S3 records/s | S3 / local | same records |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, title in (("packed", "shards + Parquet"), ("loose", "loose files")):
        r = results[name]
        land = r["landing"]
        lines.append(
            f"| {title} | {land['files']} | {land['mb']} | {land['records']} | {r['local_s']} | {r['s3_s']} | {r['local_records_per_s']} | "
            f"{r['s3_records_per_s']} | {r['s3_over_local']}{'' if r['meets_target'] else ' (**< ' + str(TARGET) + '**)'} | {'yes' if r['same_counts'] else '**no**'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"kiln-bench-object-storage-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        row = run(work, args.repeats, args.scenes)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(row))
    print(markdown(row))


if __name__ == "__main__":
    main()
