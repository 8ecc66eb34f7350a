"""Where a landing zone lives: a local folder, or a prefix of any fsspec filesystem.

    KILN_LANDING_DIR=/srv/landing              a folder (pathlib, as always: links, pipes and
                                               folders are judged as `landing.entry_problem` says)
    KILN_LANDING_DIR=s3://bucket/zone          S3 or an S3-compatible store (s3fs)
    KILN_LANDING_DIR=gs://bucket/zone          Google Cloud Storage (needs gcsfs installed)
    KILN_LANDING_DIR=memory://zone             fsspec's in-process filesystem (tests)

A batch of an object store is a prefix holding a `_SUCCESS` object; its entries are the objects under
it. `ObjectPath` gives them the part of `pathlib.Path` the landing code uses, so readers handle both
kinds alike: they open entries with `path.open("rb")` and hand pyarrow `arrow_source(path)`.

- Listing: one listing of a batch (`Listing`) is taken when its entries are first asked for and kept
  for the batch's lifetime, so a cleaning run sees one consistent set of objects; names, sizes, ETags
  and modification times come from it, never from a download.
- Reading streams: an object is read in `READ_BLOCK` ranges (one request for a smaller one), and on S3
  every range is asked for with the listed ETag (If-Match): an object replaced after the listing fails
  to read (`file_unreadable`) instead of mixing two versions.
- Nothing outside a batch's prefix is read: keys are joined and normalised like paths, so `..` and
  absolute names resolve outside the batch and are rejected by the landing code before any request;
  a name holding a URL (`s3://other/x`) is a key under the batch, never another bucket.
- Credentials come from the environment the usual way for each filesystem (for S3: AWS_* variables,
  ~/.aws, instance roles; AWS_ENDPOINT_URL_S3 for an S3-compatible server); kiln never reads, logs
  or records them. Locations are shown without any user:password part.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import stat
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit, urlunsplit

import fsspec

IO_THREADS = 8
"""Reads in flight at once from an object store (`read_ahead`, image decoding): enough to hide a
request's latency on small objects."""
READ_BLOCK = 8 << 20
"""Bytes per ranged read of an object (what one request brings; an object up to this size is one request)."""
CONTENT_IDS = ("ETag", "etag", "md5Hash", "crc32c", "checksum")
"""Listing fields that identify an object's content (S3 and compatibles; GCS; others), in that order."""
LOCAL_PROTOCOLS = ("file", "local")
T = TypeVar("T")
R = TypeVar("R")


class LandingZoneNotFound(FileNotFoundError):
    """The configured landing zone does not exist or cannot be listed: never an empty corpus."""


def landing_root(location: str | Path | ObjectPath) -> Path | ObjectPath:
    """The landing zone at `location`: a `Path` for a local folder (or a file:// URL), an `ObjectPath`
    for any other fsspec URL. An unknown scheme, or one whose filesystem is not installed, raises
    LandingZoneNotFound naming it."""
    if isinstance(location, (Path, ObjectPath)):
        return location
    text = str(location)
    if "://" not in text:
        return Path(text)
    protocol = text.split("://", 1)[0]
    if protocol in LOCAL_PROTOCOLS:
        return Path(text.split("://", 1)[1])
    try:
        fs, key = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as e:
        raise LandingZoneNotFound(f"landing zone {shown(text)}: no filesystem for {protocol}:// ({e})") from e
    return ObjectPath(fs, key.rstrip("/") or key)


def shown(location: str) -> str:
    """A location as kiln shows it: without any user:password part of a URL."""
    parts = urlsplit(location)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return location


def require_zone(root: Path | ObjectPath) -> None:
    """Raise LandingZoneNotFound unless `root` is a folder, or a prefix with at least one object under
    it in a bucket kiln may list (an empty zone of an object store is marked by an empty `<prefix>/`
    object, which is what a console's "create folder" writes)."""
    if isinstance(root, Path):
        if not root.is_dir():
            raise LandingZoneNotFound(f"landing zone {root} not found: no such folder (KILN_LANDING_DIR)")
        return
    root.fs.invalidate_cache()
    try:
        found = root.fs.isdir(root.key)
    except (OSError, ValueError) as e:  # no such bucket, access denied, no endpoint
        raise LandingZoneNotFound(f"landing zone {root} cannot be listed: {type(e).__name__}: {e}"[:500]) from e
    if not found:
        top = root.key.strip("/").split("/")[0]  # the bucket
        try:
            root.fs.ls(top, detail=False)
            why = "no object under that prefix"
        except (OSError, ValueError) as e:
            why = f"{top!r} cannot be listed ({type(e).__name__}: {e})"
        raise LandingZoneNotFound(f"landing zone {root} not found: {why} (KILN_LANDING_DIR)"[:500])


def read_ahead(paths: Sequence[T], read: Callable[[T], R], window: int = IO_THREADS) -> Iterator[tuple[T, R]]:
    """(path, read(path)) for each path, in order, with up to `window` reads in flight on threads:
    from an object store a request's latency, not its bandwidth, bounds reading many small objects
    one at a time. Memory: `window` results."""
    with ThreadPoolExecutor(window) as pool:
        pending: deque = deque()
        it = iter(paths)
        for path in it:
            pending.append((path, pool.submit(read, path)))
            if len(pending) >= window:
                break
        while pending:
            path, future = pending.popleft()
            for nxt in it:
                pending.append((nxt, pool.submit(read, nxt)))
                break
            yield path, future.result()


def io_workers(paths: Iterable[object], workers: int) -> int:
    """Threads for reading `paths`: `workers` for local files, at least IO_THREADS from an object store."""
    return max(workers, IO_THREADS) if any(isinstance(p, ObjectPath) for p in paths) else workers


def arrow_source(path: Path | ObjectPath) -> str | BinaryIO:
    """What to hand pyarrow for an entry: the path of a local file (pyarrow reads it natively), an
    open stream otherwise (pyarrow reads a Parquet footer and row groups by range)."""
    return str(path) if isinstance(path, Path) else path.open("rb")


class Listing:
    """One listing of every object under `root`, taken when first needed and then kept: `files`
    {key: its metadata} in key order, and `dirs`, the keys of the folders they make (and of empty
    `<folder>/` marker objects)."""

    def __init__(self, fs: Any, root: str):
        self.fs, self.root = fs, root
        self._files: dict[str, dict] | None = None
        self._dirs: set[str] = set()

    @classmethod
    def take(cls, fs: Any, root: str) -> Listing:
        listing = cls(fs, root)
        listing.files  # noqa: B018  (taken now)
        return listing

    @property
    def files(self) -> dict[str, dict]:
        if self._files is None:
            self._files = self._take()
        return self._files

    @property
    def dirs(self) -> set[str]:
        self.files  # noqa: B018
        return self._dirs

    def _take(self) -> dict[str, dict]:
        fs, root = self.fs, self.root
        fs.invalidate_cache()  # a long-lived process (the sensor) must see new objects, never a cached listing
        found = fs.find(root, detail=True, withdirs=False) if fs.isdir(root) else {}
        files = {}
        for key in sorted(found):
            info = found[key]
            name = info.get("name", key).rstrip("/")
            if key.endswith("/") or info.get("type") == "directory":
                self._dirs.add(name)  # a folder marker object: not an entry
            else:
                files[name] = info
        for key in files:
            parent = posixpath.dirname(key)
            while len(parent) > len(root) and parent not in self._dirs:
                self._dirs.add(parent)
                parent = posixpath.dirname(parent)
        self._dirs.add(root)
        return files

    def covers(self, key: str) -> bool:
        return key == self.root or key.startswith(self.root + "/")


def batch_root(landing: Path | ObjectPath, name: str) -> Path | ObjectPath:
    """The folder (or prefix) of batch `name`; under a prefix, with the batch's own listing, taken on
    first use and shared by every path derived from it."""
    if isinstance(landing, Path):
        return landing / name
    path = landing / name
    return ObjectPath(path.fs, path.key, Listing(path.fs, path.key))


class ObjectPath:
    """A key of an fsspec filesystem with the part of `pathlib.Path`'s interface the landing code
    uses. Names, sizes and times come from the batch's listing when it covers the key (no request);
    `open` streams. Its string form is the URL (`s3://bucket/key`), so every message names it."""

    __slots__ = ("fs", "key", "_listing")

    def __init__(self, fs: Any, key: str, listing: Listing | None = None):
        self.fs, self.key, self._listing = fs, key, listing

    # --- pure path operations ---------------------------------------------------------------------
    def _child(self, key: str) -> ObjectPath:
        return ObjectPath(self.fs, key, self._listing)

    def __truediv__(self, other: str | PurePosixPath) -> ObjectPath:
        """Joined and normalised like a path (`a/../b` is `b`); an absolute name replaces the key, as
        pathlib does: either resolves outside the batch and is rejected before any request."""
        other = str(other)
        joined = posixpath.normpath(other.lstrip("/") if other.startswith("/") else f"{self.key}/{other}")
        return self._child(joined)

    @property
    def name(self) -> str:
        return self.key.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> ObjectPath:
        return self._child(posixpath.dirname(self.key) or self.key)

    @property
    def parents(self) -> tuple[ObjectPath, ...]:
        out, key = [], posixpath.dirname(self.key)
        while key and key not in ("/", "."):
            out.append(self._child(key))
            key = posixpath.dirname(key)
        return tuple(out)

    def relative_to(self, other: ObjectPath) -> PurePosixPath:
        if not self.key.startswith(other.key.rstrip("/") + "/"):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.key[len(other.key.rstrip("/")) + 1 :])

    def as_posix(self) -> str:
        return self.key

    def resolve(self) -> ObjectPath:
        """The key normalised (`..`, `.` and empty segments folded): where it really points."""
        return self._child(posixpath.normpath(self.key))

    def __str__(self) -> str:
        return shown(f"{_protocols(self.fs)[0]}://{self.key.lstrip('/')}")

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and self.key == other.key and _protocols(self.fs) == _protocols(other.fs)

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: ObjectPath) -> bool:
        return self.key < other.key

    # --- metadata: from the listing that covers the key, else one request ----------------------------
    def listing(self) -> Listing:
        """The listing this path's entries come from: its batch's, taken once (see the module doc)."""
        if self._listing is None or not self._listing.covers(self.key):
            self._listing = Listing.take(self.fs, self.key)
        return self._listing

    def entries(self) -> list[ObjectPath]:
        """Every object under this prefix, in key order (from the listing)."""
        listing = self.listing()
        prefix = self.key + "/"
        return [ObjectPath(self.fs, k, listing) for k in listing.files if k.startswith(prefix)]

    def info(self) -> dict:
        if self._listing is not None and self._listing.covers(self.key):
            info = self._listing.files.get(self.key)
            if info is None:
                raise FileNotFoundError(f"{self}: no such object")
            return info
        return self.fs.info(self.key)

    def is_file(self) -> bool:
        if self._listing is not None and self._listing.covers(self.key):
            return self.key in self._listing.files
        try:
            return self.fs.isfile(self.key)
        except OSError:
            return False

    def is_dir(self) -> bool:
        if self._listing is not None and self._listing.covers(self.key):
            return self.key in self._listing.dirs and self.key not in self._listing.files
        try:
            return self.fs.isdir(self.key)
        except OSError:
            return False

    def is_symlink(self) -> bool:
        return False  # object stores have no links

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def stat(self) -> SimpleNamespace:
        info = self.info()
        mtime = modified(info)
        return SimpleNamespace(st_size=int(info.get("size") or 0), st_mtime=mtime, st_mtime_ns=int(mtime * 1e9), st_mode=stat.S_IFREG | 0o444)

    lstat = stat

    def content_id(self) -> str:
        """What identifies the object's content, from its metadata (ETag, MD5, CRC); for a filesystem
        that lists none (memory://), the SHA-256 of its bytes, streamed."""
        info = self.info()
        for name in CONTENT_IDS:
            if info.get(name):
                return f"{name}:{info[name]}"
        h = hashlib.sha256()
        with self.open("rb") as f:
            while chunk := f.read(READ_BLOCK):
                h.update(chunk)
        return f"sha256:{h.hexdigest()}"

    def change_id(self) -> str:
        """Size, content id from the metadata and modification time: what the landing sensor compares."""
        info = self.info()
        content = next((f"{info[n]}" for n in CONTENT_IDS if info.get(n)), "")
        return f"{info.get('size')}\0{content}\0{modified(info)}"

    # --- reading ---------------------------------------------------------------------------------------
    def open(self, mode: str = "rb") -> BinaryIO:
        """A binary stream of the object, read in READ_BLOCK ranges (read only: kiln never writes to a
        landing zone). Listed metadata is reused: no extra request for the size, and on S3 each range
        is asked for with the listed ETag."""
        if mode != "rb":
            raise ValueError(f"{self}: landing zones are opened read-only ('rb'), not {mode!r}")
        info = None
        if self._listing is not None and self._listing.covers(self.key):
            info = self._listing.files.get(self.key)
            if info is None:
                raise FileNotFoundError(f"{self}: no such object")
        if info is None or "s3" not in _protocols(self.fs):
            f = self.fs.open(self.key, "rb")
        else:
            f = self.fs.open(self.key, "rb", block_size=READ_BLOCK, cache_type="readahead", size=int(info["size"]))
            if "ETag" in info and isinstance(getattr(f, "read_kw", None), dict):
                # Each range asks for the listed version (If-Match, as s3fs does after its own HEAD):
                # an object replaced since the listing fails to read instead of mixing two versions.
                f.details = info
                f.read_kw = {**f.read_kw, "IfMatch": info["ETag"]}
        # io's buffered reader over it: readline(limit), peek and seek behave as on a local file.
        return f if isinstance(f, io.BufferedIOBase) else io.BufferedReader(f, 1 << 16)  # type: ignore[arg-type]


def _protocols(fs: Any) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def modified(info: dict) -> float:
    """An object's modification time (seconds since the epoch) from its listing, 0.0 when none is listed."""
    for name in ("LastModified", "mtime", "updated", "last_modified", "created"):
        value = info.get(name)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return 0.0
