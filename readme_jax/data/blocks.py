"""Tokenize documents into fixed-length blocks, as a ``datasets.Dataset`` with an ``input_ids`` column.

1. Tokenize the documents with ``Dataset.map(batched=True)`` (one ``tokenizer.encode`` per document).
2. Concatenate them in order with ``eos_id`` after every document, so a block that spans a document
   boundary has the EOS token between the two texts.
3. Cut the stream into blocks of ``block_len`` tokens and drop the incomplete tail.

With ``max_blocks`` set, documents are tokenized in slices and tokenizing stops once enough tokens exist,
so asking for a few blocks from a 15 MB domain does not tokenize all of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import numpy as np

from readme_jax.data.domain import Document
from readme_jax.errors import ReadmeJaxError

# With max_blocks, the first slice holds about this many characters per needed token. Real tokenizers
# give 1-6 characters per token, so one slice almost always suffices; more slices follow if not.
_CHARS_PER_TOKEN_GUESS = 8


class Tokenizer(Protocol):
    """What the block builder needs from a tokenizer."""

    eos_id: int

    def encode(self, text: str) -> list[int]: ...


def tokenize_blocks(docs: Iterable[Document | str], tokenizer: Tokenizer, block_len: int,
                    max_blocks: int | None = None, *, batch_size: int = 16, desc: str = "documents"):
    """Fixed-length token blocks from ``docs``.

    Args:
      docs: documents (or plain strings), used in the order given.
      tokenizer: any object with ``encode(text) -> list[int]`` and an int ``eos_id``.
      block_len: tokens per block (L).
      max_blocks: stop after this many blocks (default: as many as the text gives).
      batch_size: documents per ``map`` batch.
      desc: names the text in progress bars and errors (e.g. the domain name).

    Returns:
      A ``datasets.Dataset`` in numpy int32 format with one column ``input_ids`` of length L per row.
    """
    import datasets  # deferred: importing datasets takes ~1.5 s

    if not isinstance(block_len, int) or block_len < 1:
        raise ReadmeJaxError(f"block_len must be a positive int, got {block_len!r}")
    if max_blocks is not None and (not isinstance(max_blocks, int) or max_blocks < 1):
        raise ReadmeJaxError(f"max_blocks must be a positive int or None, got {max_blocks!r}")
    eos = getattr(tokenizer, "eos_id", None)
    if not isinstance(eos, (int, np.integer)) or isinstance(eos, bool):
        raise ReadmeJaxError(f"tokenizer {type(tokenizer).__name__} has no int eos_id (got {eos!r})")
    texts = [d.text if isinstance(d, Document) else str(d) for d in docs]
    if not texts:
        raise ReadmeJaxError(f"{desc}: no documents to tokenize")

    def encode_batch(batch):
        return {"ids": [np.asarray(tokenizer.encode(t) + [eos], dtype=np.int32) for t in batch["text"]]}

    needed = None if max_blocks is None else max_blocks * block_len
    pieces: list[np.ndarray] = []
    total = start = 0
    while start < len(texts) and (needed is None or total < needed):
        stop = len(texts) if needed is None else _slice_end(texts, start, (needed - total) * _CHARS_PER_TOKEN_GUESS)
        part = datasets.Dataset.from_dict({"text": texts[start:stop]})
        part = part.map(encode_batch, batched=True, batch_size=batch_size, remove_columns=["text"],
                        desc=f"tokenizing {desc}").with_format("numpy", dtype=np.int32)
        for ids in part["ids"]:
            pieces.append(ids)
            total += len(ids)
        start = stop

    stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    n_blocks = len(stream) // block_len if max_blocks is None else min(max_blocks, len(stream) // block_len)
    if n_blocks == 0:
        raise ReadmeJaxError(f"{desc}: only {len(stream)} tokens, fewer than one block of {block_len}")
    blocks = stream[: n_blocks * block_len].reshape(n_blocks, block_len)
    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32"), length=block_len)})
    return datasets.Dataset.from_dict({"input_ids": blocks}, features=features).with_format("numpy",
                                                                                           dtype=np.int32)


def _slice_end(texts: list[str], start: int, chars: int) -> int:
    """Smallest end index after ``start`` whose texts hold at least ``chars`` characters (at least one)."""
    size, end = 0, start
    while end < len(texts) and (size < chars or end == start):
        size += len(texts[end])
        end += 1
    return end


def labelled_blocks(per_domain: Mapping[str, Iterable[Document | str]], tokenizer: Tokenizer, block_len: int,
                    max_blocks_per_domain: int | None = None, *, batch_size: int = 16):
    """Blocks of several domains in one dataset, with a ``domain`` column (index in mapping order).

    This is the labelled mixture that router training and domain-ID evaluation read.
    """
    import datasets

    if not per_domain:
        raise ReadmeJaxError("labelled_blocks needs at least one domain")
    parts = []
    for index, (name, docs) in enumerate(per_domain.items()):
        part = tokenize_blocks(docs, tokenizer, block_len, max_blocks_per_domain, batch_size=batch_size,
                               desc=f"domain {name!r}")
        parts.append(part.with_format(None).add_column("domain", np.full(len(part), index, np.int32),
                                                         feature=datasets.Value("int32")))
    return datasets.concatenate_datasets(parts).with_format("numpy", dtype=np.int32)
