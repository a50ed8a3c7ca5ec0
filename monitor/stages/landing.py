"""Landed files on disk: which ones a feed folder holds and why others are left alone,
whether a file has settled, its checksum, its header and its lines.

No warehouse here: every loader reads a file through these (gzip included), so they all
see the same header and count lines the same way.
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import hashlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

from monitor.core.config import FeedConfig

_SNIFF_BYTES = 65536
_GZIP_MAGIC = b"\x1f\x8b"


class BadFile(Exception):
    """The whole file is unreadable as this feed (binary, wrong delimiter, columns)."""


class StillWriting(Exception):
    """The file changed while it was read: a delivery in progress, retried next cycle."""


def stray_reason(entry: Path) -> str:
    """Why a top-level entry of the landing zone is not read as a feed folder."""
    if entry.is_symlink():
        return "symlink at the top of the landing zone: not followed"
    if entry.is_dir():
        return "unknown feed folder (not in [ingest.feeds])"
    return "file outside any feed folder"


def landed(root: Path, folder: Path, pattern: str) -> Iterator[tuple[Path, str]]:
    """Files under a feed folder, each with "" (ingest it) or why it is left alone.

    Symlinked folders are not walked (no loops, no escape); a symlinked file is followed
    only if it resolves to a regular file inside the landing zone."""
    if not folder.is_dir() or folder.is_symlink():
        return
    found: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            if d.startswith(".") or (here / d).is_symlink():
                dirnames.remove(d)
                if not d.startswith("."):
                    found.append((here / d, "symlinked folder: not followed"))
        found += [(here / name, _file_reason(root, here / name, pattern)) for name in filenames]
    yield from sorted(found)


def _file_reason(root: Path, path: Path, pattern: str) -> str:
    """Why a file in a feed folder is not ingested, or "" to ingest it."""
    name = path.name
    if name.startswith("."):
        return "hidden file (an upload in progress?)"
    if not (fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name, pattern + ".gz")):
        return f"name does not match the feed's pattern {pattern!r}"
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root.resolve()):
            return "symlink leads outside the landing zone: refused"
        if not target.is_file():
            return "symlink to a missing or non-regular file"
    elif not path.is_file():
        return "not a regular file"
    return ""


def checksum(path: Path) -> str:
    """sha256 of the bytes as landed (gzip kept): the batch's identity in the ledger."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_settled(path: Path, seen: os.stat_result) -> None:
    """Second look at the file, before commit: if it grew or was touched since the first,
    a writer is still at it; loading now would keep half a file. Roll back, retry later."""
    now = path.stat()
    if (now.st_size, now.st_mtime_ns) != (seen.st_size, seen.st_mtime_ns):
        raise StillWriting(
            f"still being written (size {seen.st_size} -> {now.st_size} bytes while read): "
            "skipped this cycle"
        )


def open_bytes(path: Path) -> io.BufferedIOBase:
    """The file's bytes, gunzipped when it is gzip (``.csv.gz`` deliveries load too)."""
    fh = path.open("rb")
    if fh.peek(2)[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


def is_gzip(path: Path) -> bool:
    """By the bytes, not the name: a reader that must be told the compression asks this."""
    with path.open("rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def read_header(path: Path, spec: FeedConfig) -> list[str]:
    """Check the file is text with the feed's header; raise BadFile saying why not.

    Only the header line must be UTF-8: a bad byte further down costs its row (it is
    quarantined by the loader), not the whole delivery."""
    try:
        with open_bytes(path) as fh:
            head = fh.read(_SNIFF_BYTES)
    except (OSError, EOFError) as exc:
        raise BadFile(f"unreadable compressed file: {exc}") from exc
    if not head.strip():
        raise BadFile("empty file" if not head else "no header: blank file")
    if b"\x00" in head:
        raise BadFile("binary content (NUL bytes): not a CSV file")
    first_line = _split_lines(head)[0]
    try:
        first = first_line.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadFile(f"header line is not UTF-8 text (byte {exc.start})") from exc
    header = next(csv.reader([first], delimiter=spec.delimiter), [])
    header = [h.strip() for h in header]
    if len(header) <= 1 < len(spec.columns):
        raise BadFile(
            f"header has 1 field with delimiter {spec.delimiter!r}: wrong delimiter or not a CSV"
        )
    if len(set(header)) != len(header):
        dups = sorted({h for h in header if header.count(h) > 1})
        raise BadFile(f"duplicate column names in header: {', '.join(dups)}")
    missing = [c for c in spec.columns if c not in header]
    unexpected = [c for c in header if c not in spec.columns]
    if unexpected or missing:
        # Schema drift. Loading the known columns would silently drop the rest; the
        # file is kept whole in quarantine until the contract is changed or it is fixed.
        parts = []
        if missing:
            parts.append(f"missing columns: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected columns: {', '.join(unexpected)}")
        raise BadFile("schema drift: " + "; ".join(parts))
    return header


def _split_lines(data: bytes) -> list[bytes]:
    """Lines of ``data`` ending in LF, CRLF or a lone CR (the terminators removed)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def count_lines(path: Path) -> int:
    """Physical lines in the file, ended by LF, CRLF or a lone CR (a last line without
    terminator counts), so CR-only and mixed files count like their LF twins."""
    n = 0
    last = b"\n"
    with open_bytes(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            # most files have no CR: `in` finds out at memchr's speed, a count does not
            cr = chunk.count(b"\r") if b"\r" in chunk else 0
            n += chunk.count(b"\n") + (cr - chunk.count(b"\r\n") if cr else 0)
            if last == b"\r" and chunk[:1] == b"\n":
                n -= 1  # a CRLF cut between two chunks
            last = chunk[-1:]
    return n + (0 if last in (b"\n", b"\r") else 1)


def physical_lines(path: Path) -> Iterator[bytes]:
    """The file's lines as bytes, split at LF, CRLF or a lone CR, terminators removed."""
    return (line for _, line in raw_lines(path))


_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line without its terminator) for each line of the file."""
    offset, rest = 0, b""
    with open_bytes(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            data = rest + chunk
            end = len(data) - 1 if data.endswith(b"\r") else len(data)  # CR, LF next?
            pos = 0
            for m in _LINE_BREAK.finditer(data, 0, end):
                yield offset + pos, data[pos:m.start()]
                pos = m.end()
            offset += pos
            rest = data[pos:]
    if rest:
        yield offset, rest[:-1] if rest.endswith(b"\r") else rest
