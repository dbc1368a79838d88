"""The small committed fixture texts (``fixtures/<domain>.txt``) exposed as domains, for tests and demos.

Each file holds several documents; a line ``=== name ===`` starts the document called ``name``. Sources
and licences of every excerpt are listed in ``fixtures/README.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from readme_jax.data.domain import Document, Domain, DomainSet
from readme_jax.data.registry import DEFAULT_DOMAINS
from readme_jax.data.textfiles import read_text

FIXTURES_DIR = Path(__file__).parent / "fixtures"
_HEADER = re.compile(r"^=== (.+?) ===[ \t]*$", re.MULTILINE)


def parse_marked(text: str, prefix: str) -> list[Document]:
    """Documents of a fixture file; text before the first header is ignored (it is a comment)."""
    heads = list(_HEADER.finditer(text))
    docs = []
    for head, nxt in zip(heads, heads[1:] + [None]):
        body = text[head.end():nxt.start() if nxt else len(text)].strip("\n")
        docs.append(Document(f"{prefix}/{head.group(1).strip()}", body + "\n"))
    return docs


def fixture_source(folder: Path = FIXTURES_DIR) -> DomainSet:
    """One domain per ``<domain>.txt``: default domains first in expert order, then any others by name."""
    names = sorted(p.stem for p in folder.glob("*.txt"))
    ordered = [n for n in DEFAULT_DOMAINS if n in names] + [n for n in names if n not in DEFAULT_DOMAINS]
    return DomainSet(tuple(_fixture_domain(n, folder / f"{n}.txt") for n in ordered), f"fixtures in {folder}")


def _fixture_domain(name: str, path: Path) -> Domain:
    def read() -> Iterator[Document]:
        return iter(parse_marked(read_text(path), f"fixture/{name}"))

    def probe() -> str | None:
        return None if path.is_file() else f"fixture file {path} is missing"

    return Domain(name, f"fixture excerpt for the {name!r} domain", "see readme_jax/data/fixtures/README.md",
                  probe, read, where=str(path))
