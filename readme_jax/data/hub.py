"""Domains from a ``datasets`` dataset with a domain column (RedPajama/SlimPajama style).

This is the path for real users with network access or a local dataset folder. In offline mode (as in
tests and CI) a hub name fails at once, with a ReadmeJaxError that names the dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence

from readme_jax.data.domain import Document, Domain, DomainSet
from readme_jax.errors import ReadmeJaxError


def hf_dataset_source(name: str, domain_column: str, text_column: str = "text", *, split: str = "train",
                      config: str | None = None, id_column: str | None = None,
                      domains: Sequence[str] | None = None, **load_kwargs) -> DomainSet:
    """Load ``datasets.load_dataset(name, config, split=split, **load_kwargs)`` and group rows by domain.

    Args:
      name: a hub id, a local dataset folder, or a builder such as ``"json"`` (with ``data_files=``).
      domain_column: the column holding the domain label. A dotted name reaches into a dict (or a
        JSON-encoded dict) column, e.g. ``"meta.redpajama_set_name"`` for SlimPajama.
      text_column: the column holding the document text.
      split: any ``datasets`` split expression; slice it (``"train[:20000]"``) for big datasets, since
        the domain labels of all selected rows are read into memory.
      id_column: a column of document ids (default: the row number).
      domains: which domains to keep, in this order (default: all, sorted by name).
    """
    import datasets  # deferred: importing datasets takes ~1.5 s

    what = f"dataset {name!r}" + (f" (config {config!r})" if config else "") + f", split {split!r}"
    try:
        ds = datasets.load_dataset(name, config, split=split, **load_kwargs)
    except Exception as e:  # datasets raises many unrelated types (connection, file, value errors)
        offline = os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0") or \
            os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = (" Offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE), so only local or already "
                "cached datasets can load; use folder_source or jsonl_source for local text."
                if offline else "")
        raise ReadmeJaxError(f"cannot load {what}: {type(e).__name__}: {_first_line(e)}.{hint}") from e
    if not isinstance(ds, datasets.Dataset):
        raise ReadmeJaxError(f"{what}: expected a single split (a datasets.Dataset), got {type(ds).__name__}; "
                             "pass split= and do not stream")
    root = domain_column.split(".")[0]
    for column in {root, text_column} | ({id_column} if id_column else set()):
        if column not in ds.column_names:
            raise ReadmeJaxError(f"{what} has no column {column!r}; its columns are {ds.column_names}")

    labels = [_label(v, domain_column, what, i) for i, v in enumerate(ds[root])]
    rows: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        rows.setdefault(label, []).append(i)
    if not rows:
        raise ReadmeJaxError(f"{what} has no rows")
    origin = f"dataset {name!r}"
    every = DomainSet(tuple(_row_domain(ds, label, rows[label], text_column, id_column, what)
                            for label in sorted(rows)), origin)
    return every.select(domains) if domains is not None else every


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else "no message"


def _label(value, dotted: str, what: str, row: int) -> str:
    """Follow ``a.b.c`` into nested dicts (or JSON strings of dicts) and return the label as a string."""
    for key in dotted.split(".")[1:]:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = None
        if not isinstance(value, dict) or key not in value:
            raise ReadmeJaxError(f"{what}, row {row}: cannot read {dotted!r} (no key {key!r})")
        value = value[key]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ReadmeJaxError(f"{what}, row {row}: empty domain label in {dotted!r}")
    return str(value)


def _row_domain(ds, label: str, indices: list[int], text_column: str, id_column: str | None,
                what: str) -> Domain:
    def read() -> Iterator[Document]:
        part = ds.select(indices)
        ids = part[id_column] if id_column else indices
        for doc_id, text in zip(ids, part[text_column]):
            yield Document(f"{label}/{doc_id}", text if isinstance(text, str) else "")

    return Domain(label, f"{len(indices)} rows of {what}", "see the dataset card", lambda: None, read,
                  where=f"{what}, {len(indices)} rows")
