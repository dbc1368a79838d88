"""Helpers that turn files on disk into documents: listing, decoding, de-duplication, grouping."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from readme_jax.data.domain import Document


def list_files(root: Path, keep: Callable[[str], bool], skip_dirs: Iterable[str] = ()) -> list[Path]:
    """Regular files under ``root`` whose name passes ``keep``, sorted so that reading order is fixed.

    Folders named in ``skip_dirs`` are not entered, and symlinked folders are not followed (they would
    only repeat files or leave the tree).
    """
    skip = set(skip_dirs)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".")]
        found += [Path(folder, f) for f in files if keep(f) and Path(folder, f).is_file()]
    return sorted(found)


def read_text(path: Path) -> str:
    """File text as UTF-8; undecodable bytes become U+FFFD rather than aborting a whole corpus."""
    return path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")


def file_documents(paths: Sequence[tuple[str, Path]]) -> Iterator[Document]:
    """One document per ``(id, path)``, skipping files whose text repeats an earlier one.

    Exact duplicates are common (many Debian copyright files are identical); keeping one copy stops the
    same text from landing in both the train and the held-out split.
    """
    seen: set[bytes] = set()
    for doc_id, path in paths:
        text = read_text(path)
        digest = hashlib.sha256(text.encode()).digest()
        if digest in seen:
            continue
        seen.add(digest)
        yield Document(doc_id, text)


def group_entries(entries: Iterable[str], prefix: str, target_chars: int = 4000) -> Iterator[Document]:
    """Pack consecutive short entries (dictionary entries, quotes) into documents of ~``target_chars``.

    Single entries are too short to be split units on their own; whole files are too few. Ids are
    ``{prefix}/{k:05d}`` in reading order, so they are stable as long as the source is.
    """
    chunk: list[str] = []
    size = 0
    k = 0
    for entry in entries:
        entry = entry.strip("\n")
        if not entry.strip():
            continue
        chunk.append(entry)
        size += len(entry) + 2
        if size >= target_chars:
            yield Document(f"{prefix}/{k:05d}", "\n\n".join(chunk) + "\n")
            chunk, size, k = [], 0, k + 1
    if chunk:
        yield Document(f"{prefix}/{k:05d}", "\n\n".join(chunk) + "\n")


def human_bytes(n: float) -> str:
    """``12.3 MB`` style size for progress messages (decimal units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
