"""Held-out text of the domain corpora as token sequences: what routing traces and engine benchmarks serve.

The documents are the split's held-out side (``readme_jax.data.split_domain``), never seen by profiling or
training, taken in a fixed salted order so that small counts still sample widely.
"""

import dataclasses

import numpy as np

from readme_jax.errors import ReadmeJaxError

SPLIT_SALT = "block-order"  # corpus_blocks.domain_blocks' document order, so small counts sample widely


@dataclasses.dataclass
class TextSequence:
    """One held-out text sequence: its domain (expert index), document id, tokens and per-token experts."""

    domain: int
    doc_id: str
    ids_T: np.ndarray  # int32 [T]
    experts_T: np.ndarray | None = None  # int32 [T], filled by routing


def text_pieces(text: str, doc_chars: int) -> list[tuple[int, str]]:
    """(character offset, piece) of consecutive whole-line pieces of at most ``doc_chars`` characters (a longer
    line is cut); ``doc_chars`` 0 keeps the whole text as one piece."""
    if not doc_chars:
        return [(0, text)]
    pieces, start, size, offset = [], 0, 0, 0
    for line in text.splitlines(keepends=True):
        if size and size + len(line) > doc_chars:
            pieces.append((start, text[start:start + size]))
            start, size = offset, 0
        size += len(line)
        offset += len(line)
    if size:
        pieces.append((start, text[start:start + size]))
    return [(o, piece[:doc_chars]) for o, piece in pieces if piece.strip()]


def heldout_sequences(tokenizer, domains, per_domain: int, doc_chars: int, max_tokens: int,
                      progress: bool = True) -> list[TextSequence]:
    """Step 1: up to ``per_domain`` held-out sequences of >= 2 tokens per domain, in expert order.

    Documents come in ``domain_blocks``' order; a document longer than ``doc_chars`` gives several pieces, taken
    breadth-first (every document's first piece, then every second piece, ...), so a domain with a few long
    documents (plays, books) still yields enough distinct text while short-document domains stay diverse.
    """
    from tqdm import tqdm

    from readme_jax.data import heldout_score, split_domain

    out = []
    for d, domain in enumerate(tqdm(list(domains), desc="held-out text", unit="domain", disable=not progress)):
        docs = sorted(split_domain(domain).heldout, key=lambda doc: heldout_score(doc.id, salt=SPLIT_SALT))
        pieces = [text_pieces(doc.text, doc_chars) for doc in docs]
        found = 0
        for rank in range(max((len(p) for p in pieces), default=0)):
            for doc, doc_pieces in zip(docs, pieces):
                if rank >= len(doc_pieces) or found == per_domain:
                    continue
                offset, text = doc_pieces[rank]
                ids = tokenizer.encode(text)[:max_tokens]
                if len(ids) < 2:  # a request needs one prompt and one output token
                    continue
                out.append(TextSequence(d, f"{doc.id}@{offset}", np.asarray(ids, np.int32)))
                found += 1
            if found == per_domain:
                break
        if found == 0:
            raise ReadmeJaxError(f"domain {domain.name!r} has no held-out text of at least 2 tokens")
    return out
