"""Records of a landed file as Python's csv reader sees them, each with its physical
first line or the reason it is no good: the rules every Python-side loader shares, so
a row is quarantined for the same reason whichever of them read it.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from monitor.stages.landing import physical_lines

_NOT_PLAIN = ('"', "\x00", "\r", "\n")
_MAX_SPAN = 100  # physical lines one quoted record may span


Record = tuple[int, str, list[str], str]  # first line, reason ("" if good), fields, text


def records(path: Path, delimiter: str, width: int) -> Iterator[Record]:
    """Data records with their first line. An open quote joins the next lines (up to
    ``_MAX_SPAN``); if the joined text is no good record, only its first line is bad and
    the lines after it are read again one by one."""
    source = itertools.islice(enumerate(physical_lines(path), start=1), 1, None)
    pending: deque[tuple[int, bytes]] = deque()

    def next_line() -> tuple[int, bytes] | None:
        return pending.popleft() if pending else next(source, None)

    while (item := next_line()) is not None:
        no, raw = item
        text, bad = _decode(raw)
        if bad:
            yield no, bad, [], text
            continue
        if text.count('"') % 2:
            record, taken = _join_open_quote(no, text, next_line, delimiter, width)
            if record is not None:
                yield record
                continue
            pending.extendleft(reversed(taken))
        reason, values = _parse_line(text, delimiter, width)
        yield no, reason, values, text


def _join_open_quote(
    no: int, text: str, next_line: Callable[[], tuple[int, bytes] | None], delimiter: str,
    width: int,
) -> tuple[Record | None, list[tuple[int, bytes]]]:
    """Join following lines to close an open quote: the record (or None) and the lines
    taken, to be read again when no good record came of them."""
    taken: list[tuple[int, bytes]] = []
    parts = [text]
    while len(taken) < _MAX_SPAN and (nxt := next_line()) is not None:
        taken.append(nxt)
        part, bad = _decode(nxt[1])
        if bad:
            break
        parts.append(part)
        if part.count('"') % 2:
            whole = "\n".join(parts)
            reason, values = _parse_line(whole, delimiter, width)
            return ((no, "", values, whole) if not reason else None), ([] if not reason
                                                                        else taken)
    return None, taken


def _decode(raw: bytes) -> tuple[str, str]:
    """A line as text, and why not if it is not UTF-8 (the text then shows the bytes)."""
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", "backslashreplace")
        return text, f"INVALID ENCODING: not UTF-8 at byte {exc.start} (latin-1?)"


def plain(line: str) -> bool:
    """True when csv's reader would split ``line`` at the delimiter and nothing else: no
    quote, no NUL, no line break, not empty."""
    return bool(line) and not any(c in line for c in _NOT_PLAIN)


def _parse_line(line: str, delimiter: str, width: int) -> tuple[str, list[str]]:
    if plain(line):
        fields = line.split(delimiter)  # csv's reader gives the same fields, ~5x slower
    else:
        try:
            fields = next(csv.reader(io.StringIO(line, newline=""), delimiter=delimiter,
                                     strict=True), [])
        except csv.Error as exc:
            return f"malformed CSV: {exc}", []
    if len(fields) != width:
        kind = "MISSING COLUMNS" if len(fields) < width else "TOO MANY COLUMNS"
        return f"{kind}: expected {width} fields, found {len(fields)}", []
    return "", fields
