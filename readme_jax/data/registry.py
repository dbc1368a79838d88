"""The default domain registry: look domains up by name, list the available ones."""

from __future__ import annotations

from pathlib import Path

from readme_jax.data.builtin import builtin_domains
from readme_jax.data.domain import Domain, DomainSet

# The default order is the expert index order of a refactored model.
DEFAULT_DOMAINS = ("code", "legal", "manuals", "literature", "encyclopedic", "quotes")
# Fewer domains than this make too coarse a mixture of experts; the fetch step enforces it.
MIN_DOMAINS = 3


def default_domains(cache: Path | None = None) -> DomainSet:
    """The six built-in domains, reading fetched corpora from ``cache`` (default: ``cache_dir()``)."""
    domains = DomainSet(builtin_domains(cache), origin="built-in domains")
    assert domains.names == DEFAULT_DOMAINS, domains.names
    return domains


def get_domain(name: str, domains: DomainSet | None = None) -> Domain:
    """The domain called ``name`` (ReadmeJaxError listing the known names when there is none)."""
    return (domains if domains is not None else default_domains()).get(name)


def available_domains(domains: DomainSet | None = None, minimum: int = 1) -> DomainSet:
    """The domains whose source is present, in order; fewer than ``minimum`` is a ReadmeJaxError."""
    return (domains if domains is not None else default_domains()).available(minimum)
