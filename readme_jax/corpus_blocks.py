"""Token blocks per domain for profiling, evaluation and training, from the domain registry.

Documents are split train/held-out by a hash of their id, then ordered by a second hash so that a
small ``max_blocks`` samples across the whole domain instead of its first files. Each document is cut to
its first ``doc_chars`` characters, so a few blocks span many documents: per-domain statistics from a
handful of long files (a licence, a play) generalise poorly to the domain's other documents.
"""

import numpy as np

from readme_jax.errors import ReadmeJaxError


def select_domains(names=None, cache=None):
    """The DomainSet to use: the named domains, or every available default domain (at least 3)."""
    from readme_jax.data import MIN_DOMAINS, available_domains, default_domains

    domains = default_domains(cache)
    if names:
        chosen = domains.select(list(names))
        for d in chosen:
            if not d.available():
                raise ReadmeJaxError(f"domain {d.name!r} is not available: {d.reason}")
        return chosen
    return available_domains(domains, minimum=MIN_DOMAINS)


def domain_blocks(tokenizer, domains, split: str, block_len: int, max_blocks: int,
                  doc_chars: int | None = 2048) -> dict[str, np.ndarray]:
    """{domain name: int32 [n_blocks, block_len]} from the train or held-out documents of each domain."""
    from readme_jax.data import Document, heldout_score, split_domain, tokenize_blocks

    if split not in ("train", "heldout"):
        raise ReadmeJaxError(f"split must be 'train' or 'heldout', got {split!r}")
    out = {}
    for domain in domains:
        docs = list(getattr(split_domain(domain), split))
        if not docs:
            raise ReadmeJaxError(f"domain {domain.name!r} has no {split} documents")
        docs.sort(key=lambda d: heldout_score(d.id, salt="block-order"))
        if doc_chars:
            docs = [Document(d.id, d.text[:doc_chars]) for d in docs]
        ds = tokenize_blocks(docs, tokenizer, block_len, max_blocks, desc=domain.name)
        blocks = np.asarray(ds["input_ids"], np.int32)
        if len(blocks) == 0:
            raise ReadmeJaxError(f"domain {domain.name!r} has too little {split} text for one "
                                 f"{block_len}-token block")
        out[domain.name] = blocks
    return out
