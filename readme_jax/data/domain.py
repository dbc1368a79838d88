"""Documents, domains and ordered sets of domains: the vocabulary of the data package.

A *domain* is a named source of text documents (Python code, licence texts, ...). Read-ME profiles the
dense model's MLP neurons on each domain and slices one expert per domain, so the order of the domains in
a ``DomainSet`` is the expert index order.

A domain is cheap to construct: it only knows how to check for its source (``probe``) and how to read it
(``reader``). Nothing is read until ``documents()`` is iterated.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Iterator, Sequence

from readme_jax.errors import ReadmeJaxError


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    """One unit of text. The train/held-out split is decided per document ``id``."""

    id: str
    text: str


@dataclasses.dataclass(frozen=True)
class Domain:
    """A named text source that can say whether it is present.

    ``probe()`` returns None when the source is present and a one-line reason otherwise; ``reader()``
    yields the documents. ``where`` names the source location in error messages.
    """

    name: str
    description: str
    licence: str
    probe: Callable[[], str | None] = dataclasses.field(repr=False, compare=False)
    reader: Callable[[], Iterable[Document]] = dataclasses.field(repr=False, compare=False)
    where: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip() or self.name != self.name.strip():
            raise ReadmeJaxError(f"bad domain name {self.name!r}: it must be a non-empty string without "
                                 "surrounding whitespace")

    def available(self) -> bool:
        """Whether the source is present (cheap: no document is read)."""
        return self.probe() is None

    @property
    def reason(self) -> str | None:
        """Why the domain is unavailable, or None when it is available."""
        return self.probe()

    def documents(self) -> Iterator[Document]:
        """The domain's non-blank documents, in a fixed order.

        Raises ReadmeJaxError at once when the source is missing, and at the end of iteration when the
        source held no text at all.
        """
        why = self.probe()
        if why is not None:
            raise ReadmeJaxError(f"domain {self.name!r} is not available: {why}")
        return self._iter_documents()

    def _iter_documents(self) -> Iterator[Document]:
        count = 0
        for doc in self.reader():
            if doc.text.strip():
                count += 1
                yield doc
        if count == 0:
            where = f" ({self.where})" if self.where else ""
            raise ReadmeJaxError(f"domain {self.name!r} has no text: its source{where} holds no "
                                 "non-empty document")


@dataclasses.dataclass(frozen=True)
class DomainSet:
    """An ordered collection of domains with unique names; position = expert index."""

    domains: tuple[Domain, ...]
    origin: str = "domain set"

    def __post_init__(self):
        names = [d.name for d in self.domains]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ReadmeJaxError(f"{self.origin}: duplicate domain names {dupes}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)

    def __iter__(self) -> Iterator[Domain]:
        return iter(self.domains)

    def __len__(self) -> int:
        return len(self.domains)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def get(self, name: str) -> Domain:
        """The domain called ``name``; an unknown name is an error that lists the known ones."""
        for d in self.domains:
            if d.name == name:
                return d
        hint = difflib.get_close_matches(str(name), self.names, n=1)
        maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
        known = ", ".join(self.names) or "none"
        raise ReadmeJaxError(f"unknown domain {name!r} in {self.origin}{maybe}; known domains: {known}")

    def index(self, name: str) -> int:
        """Position of ``name`` in this set, i.e. its expert index."""
        return self.names.index(self.get(name).name)

    def select(self, names: Sequence[str]) -> DomainSet:
        """The named domains, in the order given."""
        if isinstance(names, str):
            names = [names]
        return DomainSet(tuple(self.get(n) for n in names), self.origin)

    def status(self) -> list[tuple[str, str | None]]:
        """``(name, reason)`` for every domain; reason is None for available ones."""
        return [(d.name, d.reason) for d in self.domains]

    def available(self, minimum: int = 0) -> DomainSet:
        """The available domains (order kept); fewer than ``minimum`` is an error that says why."""
        status = self.status()
        keep = tuple(d for d, (_, why) in zip(self.domains, status) if why is None)
        if len(keep) < minimum:
            missing = "; ".join(f"{n}: {why}" for n, why in status if why is not None)
            raise ReadmeJaxError(f"{self.origin}: {len(keep)} domain(s) available, at least {minimum} "
                                 f"needed. Missing: {missing or 'none'}")
        return DomainSet(keep, self.origin)
