"""WebDataset tar shards, as img2dataset writes them and LAION, DataComp and COYO ship them: a
sample is the run of consecutive members sharing a key (`00000012.jpg`, `00000012.txt`,
`00000012.json`: key `00000012`), split as the `webdataset` package splits names (its
`base_plus_ext`; the package itself imports torch, so its one-line rule is restated here).

The readers read a shard as a stream (`tarfile`'s "r|*" mode: plain, gzip, bz2 or xz, no seeks), so
a shard is never held whole and an object-store shard is read once from its start. Header blocks
that tarfile would read whole into memory (pax and GNU long-name headers) are bounded too, so no
part of a shard, compressed or not, is held beyond a bound whatever its headers claim.

This module only walks headers: `count_samples` is what the accounting counts (one record per
sample, whatever the readers make of it); `training/data/formats.py` reads the members' contents.
"""

from __future__ import annotations

import re
import tarfile
import zlib
from typing import BinaryIO

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_HEADER_BYTES = 1 << 20
"""The most a pax or GNU long-name header may hold (its names and attributes): a real one holds a
path and a few numbers; a larger one is a broken or hostile shard."""
ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)
"""What reading a broken, truncated or hostile shard raises (a truncated stream: tarfile's
`ReadError("unexpected end of data")`)."""
_EXTENDED_HEADERS = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}


class HeaderTooLarge(tarfile.TarError):
    pass


class _BoundedTarInfo(tarfile.TarInfo):
    def _proc_member(self, tarfile):  # noqa: ANN001 (tarfile's own hook)
        if self.type in _EXTENDED_HEADERS and self.size > MAX_HEADER_BYTES:
            raise HeaderTooLarge(f"a {self.size}-byte extended header ({self.name!r}) > {MAX_HEADER_BYTES}")
        return super()._proc_member(tarfile)


def is_shard(name: str) -> bool:
    return name.lower().endswith(SHARD_SUFFIXES)


def open_shard(fileobj: BinaryIO) -> tarfile.TarFile:
    """A shard as a stream of members; raises one of `ERRORS` when it is not a tar archive."""
    return tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_BoundedTarInfo)


_KEY_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset.tariterators.base_plus_ext's


def member_key(name: str) -> tuple[str | None, str]:
    """(the sample a member belongs to, its extension, lowercased): WebDataset's convention, the name up
    to the first dot of its last part and the rest; (None, "") for a name with no extension, which
    belongs to no sample."""
    match = _KEY_EXTENSION.match(name)
    return (match.group(1), match.group(2).lower()) if match else (None, "")


def count_samples(fileobj: BinaryIO) -> int:
    """Records a shard holds, from its headers alone: one per run of consecutive members of one key
    (folders aside), one per member without a key, and one more for the rest of a shard that cannot
    be read to its end (or at all). An uncompressed shard in a seekable file is walked by seeking
    from header to header, its members' contents never read; any other is streamed."""
    count, last = 0, None
    try:
        with _headers(fileobj) as tar:
            while (info := tar.next()) is not None:
                tar.members = []  # nothing kept per member
                if info.isdir():
                    continue
                key = member_key(info.name)[0]
                count += key is None or key != last
                last = key
    except ERRORS:
        return count + 1
    return count


def _headers(fileobj: BinaryIO) -> tarfile.TarFile:
    """A tar read by seeking (tarfile's "r:" mode: it raises at the first header of anything but an
    uncompressed tar, and, as a stream, "unexpected end of data" where the shard breaks off), or by
    streaming when the file cannot seek or is compressed."""
    if fileobj.seekable():
        try:
            return tarfile.open(fileobj=fileobj, mode="r:", tarinfo=_BoundedTarInfo)
        except tarfile.ReadError:
            fileobj.seek(0)
    return open_shard(fileobj)


def companion_of(name: str, names: set[str]) -> str | None:
    """The shard that a file beside it describes, or None: img2dataset writes `00000.parquet` (its
    download log: url, caption, status of every sample it tried) and `00000_stats.json` beside each
    `00000.tar`. `names` are the folder's files, as paths relative to the same folder."""
    for suffix in (".parquet", "_stats.json"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return next((stem + s for s in SHARD_SUFFIXES if stem + s in names), None)
    return None
