"""Bring your own text: a folder of ``.txt`` files per domain, or one JSONL file with a domain field.

Both return a ``DomainSet`` that works everywhere the built-in one does (profiling, splitting, blocks).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from readme_jax.data.domain import Document, Domain, DomainSet
from readme_jax.data.textfiles import file_documents, list_files
from readme_jax.errors import ReadmeJaxError

_USER_LICENCE = "as provided by the user"


# -- folders ------------------------------------------------------------------------------------------

def folder_source(root: str | Path | Mapping[str, str | Path], suffix: str = ".txt") -> DomainSet:
    """Domains from folders of text files, one file per document.

    Args:
      root: a folder with one subfolder per domain (domains in sorted name order), or a mapping
        ``{domain: folder}`` (domains in mapping order).
      suffix: which files count as text.
    """
    if isinstance(root, Mapping):
        folders = [(str(name), Path(folder)) for name, folder in root.items()]
        origin = "folder mapping"
    else:
        base = Path(root)
        if not base.is_dir():
            raise ReadmeJaxError(f"domain folder {base} does not exist or is not a folder")
        folders = [(p.name, p) for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        if not folders:
            raise ReadmeJaxError(f"{base} has no subfolders; expected one subfolder of {suffix} files per "
                                 "domain (e.g. code/, legal/)")
        origin = f"folder {base}"
    if not folders:
        raise ReadmeJaxError("folder_source got an empty mapping of domains")
    return DomainSet(tuple(_folder_domain(name, folder, suffix) for name, folder in folders), origin)


def _folder_domain(name: str, folder: Path, suffix: str) -> Domain:
    def probe() -> str | None:
        if not folder.is_dir():
            return f"folder {folder} does not exist"
        if next(iter(folder.rglob(f"*{suffix}")), None) is None:
            return f"no {suffix} files in {folder}"
        return None

    def read() -> Iterator[Document]:
        files = list_files(folder, lambda f: f.endswith(suffix))
        return file_documents([(f"{name}/{p.relative_to(folder).as_posix()}", p) for p in files])

    return Domain(name, f"text files under {folder}", _USER_LICENCE, probe, read, where=str(folder))


# -- JSONL --------------------------------------------------------------------------------------------

def jsonl_source(path: str | Path, text_field: str = "text", domain_field: str = "domain",
                 id_field: str = "id", domains: Sequence[str] | None = None) -> DomainSet:
    """Domains from a JSON-lines file (optionally ``.gz``) whose records carry a domain field.

    The file is validated once here: a line that is not a JSON object, or lacks a string text or
    domain field, is a ReadmeJaxError naming the file and line. Document ids are ``{domain}/{id}``, from
    ``id_field`` when present and the line number otherwise. Domains come in sorted name order unless
    ``domains`` names (and orders) the ones to use.
    """
    path = Path(path)
    if not path.is_file():
        raise ReadmeJaxError(f"JSONL file {path} does not exist")
    found: set[str] = set()
    for _, record in _jsonl_records(path, text_field, domain_field):
        found.add(record[domain_field])
    if not found:
        raise ReadmeJaxError(f"{path}: no records (the file is empty or holds only blank lines)")
    origin = f"JSONL file {path}"
    every = DomainSet(tuple(_jsonl_domain(name, path, text_field, domain_field, id_field)
                            for name in sorted(found)), origin)
    return every.select(domains) if domains is not None else every


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _jsonl_records(path: Path, text_field: str, domain_field: str) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` for each non-blank line, checking the two required fields."""
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ReadmeJaxError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(record, dict):
                    raise ReadmeJaxError(f"{path}:{lineno}: expected a JSON object, got "
                                         f"{type(record).__name__}")
                for field in (text_field, domain_field):
                    if not isinstance(record.get(field), str):
                        what = "missing" if field not in record else f"a {type(record[field]).__name__}"
                        raise ReadmeJaxError(f"{path}:{lineno}: field {field!r} must be a string, it is {what}")
                yield lineno, record
    except UnicodeDecodeError as e:
        raise ReadmeJaxError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _jsonl_domain(name: str, path: Path, text_field: str, domain_field: str, id_field: str) -> Domain:
    def probe() -> str | None:
        return None if path.is_file() else f"JSONL file {path} no longer exists"

    def read() -> Iterator[Document]:
        for lineno, record in _jsonl_records(path, text_field, domain_field):
            if record[domain_field] == name:
                doc_id = record.get(id_field, f"line{lineno}")
                yield Document(f"{name}/{doc_id}", record[text_field])

    return Domain(name, f"records of {path.name} with {domain_field}={name!r}", _USER_LICENCE, probe, read,
                  where=f"{path}, {domain_field}={name!r}")
