"""Parsers for the two entry-based sources: dictd databases (FOLDOC) and fortune files."""

from __future__ import annotations

import re
from collections.abc import Iterator

# dictd writes offsets and lengths in its own base64 digits, most significant first.
_DICT_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DICT_DIGIT = {c: i for i, c in enumerate(_DICT_B64)}


def dict_b64(s: str) -> int:
    """Decode one dictd base64 number (``"Gb9L"`` -> int)."""
    n = 0
    for c in s:
        n = n * 64 + _DICT_DIGIT[c]
    return n


def dictd_entries(data: bytes, index: str) -> Iterator[str]:
    """Entries of a dictd database as plain text, in file order, each once.

    Args:
      data: the uncompressed ``.dict`` bytes (a ``.dict.dz`` file is gzip-readable).
      index: the ``.index`` text: ``headword<TAB>offset<TAB>length`` per line. Several headwords may share
        one entry (aliases); the ``00-database-*`` pseudo-entries hold metadata, not definitions.
    """
    spans = set()
    for line in index.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].replace("-", "").startswith("00database"):
            continue
        spans.add((dict_b64(parts[1]), dict_b64(parts[2])))
    for offset, length in sorted(spans):
        entry = data[offset:offset + length].decode("utf-8", errors="replace")
        text = _clean_foldoc(entry)
        if text:
            yield text


def _clean_foldoc(entry: str) -> str:
    """Headword lines at column 0 (one alias per line, rarely ``%%%``-joined), then an indented body.

    The body is de-indented and FOLDOC's ``{cross reference}`` braces are dropped, so the text reads as
    ordinary prose.
    """
    lines = entry.strip("\n").splitlines()
    head: list[str] = []
    while lines and lines[0] and not lines[0][0].isspace():
        head.append(lines.pop(0))
    title = ", ".join(h.strip() for h in head).replace("%%%", ", ")
    body = "\n".join(line.strip() for line in lines).strip("\n")
    body = re.sub(r"\n{3,}", "\n\n", body).replace("{", "").replace("}", "")
    if not body:
        return ""
    return f"{title}\n\n{body}" if title else body


def fortune_entries(text: str) -> list[str]:
    """The entries of one fortune file: blocks separated by lines holding a single ``%``."""
    return [e.strip("\n") for e in re.split(r"(?m)^%[ \t]*$", text) if e.strip()]
