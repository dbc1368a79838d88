"""Deterministic split of documents into train and held-out.

A document is held out when ``sha256(salt + ":" + id)``, read as a fraction of 2**64, is below
``heldout_fraction``. The decision depends only on the document id and the salt, so it is the same on
every machine and in every run, whatever the order or number of the other documents; adding documents
to a domain never moves an old one across the split.

One exception keeps both sides usable: a domain with at least two documents whose hashes all fall on one
side gets its most extreme document moved to the other side (the lowest score is held out, or the
highest one is kept for training). This only happens for tiny domains.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

from readme_jax.data.domain import Document, Domain
from readme_jax.errors import ReadmeJaxError

DEFAULT_HELDOUT_FRACTION = 0.1
DEFAULT_SALT = "readme-jax-split-v1"


@dataclasses.dataclass(frozen=True)
class Split:
    """Train and held-out documents, each in their input order."""

    train: tuple[Document, ...]
    heldout: tuple[Document, ...]


def heldout_score(doc_id: str, salt: str = DEFAULT_SALT) -> float:
    """A uniform-looking number in [0, 1) fixed by the id; below the held-out fraction means held out."""
    digest = hashlib.sha256(f"{salt}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_heldout(doc_id: str, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
               salt: str = DEFAULT_SALT) -> bool:
    """The hash rule alone (without the small-domain guard of ``split_documents``)."""
    return heldout_score(doc_id, salt) < heldout_fraction


def split_documents(docs: Iterable[Document], heldout_fraction: float = DEFAULT_HELDOUT_FRACTION, *,
                    salt: str = DEFAULT_SALT, name: str = "documents") -> Split:
    """Split ``docs`` by id hash; ``name`` labels error messages (e.g. the domain name)."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ReadmeJaxError(f"heldout_fraction must be strictly between 0 and 1, got {heldout_fraction}")
    docs = list(docs)
    seen: set[str] = set()
    for doc in docs:
        if doc.id in seen:
            raise ReadmeJaxError(f"{name}: duplicate document id {doc.id!r}; ids must be unique for the split")
        seen.add(doc.id)
    if not docs:
        raise ReadmeJaxError(f"{name}: no documents to split")
    scores = [heldout_score(d.id, salt) for d in docs]
    held = [s < heldout_fraction for s in scores]
    if len(docs) >= 2 and all(held):
        held[scores.index(max(scores))] = False
    elif len(docs) >= 2 and not any(held):
        held[scores.index(min(scores))] = True
    return Split(train=tuple(d for d, h in zip(docs, held) if not h),
                 heldout=tuple(d for d, h in zip(docs, held) if h))


def split_domain(domain: Domain, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION, *,
                 salt: str = DEFAULT_SALT) -> Split:
    """Read all of ``domain``'s documents and split them."""
    return split_documents(domain.documents(), heldout_fraction, salt=salt, name=f"domain {domain.name!r}")
