"""Domain corpora for Read-ME: which text each expert is profiled on.

Data flow:

1. A ``DomainSet`` names the domains in expert order. ``default_domains()`` gives the six built-in ones
   (code, legal, manuals, literature, encyclopedic, quotes; ``python -m readme_jax.data.fetch`` prepares
   the last four). ``folder_source``, ``jsonl_source`` and ``hf_dataset_source`` build one from the
   user's own text; ``fixture_source`` from the small texts committed for tests.
2. ``domain.documents()`` yields ``Document(id, text)``; ``split_documents`` / ``split_domain`` assign each
   document to train or held-out by a hash of its id.
3. ``tokenize_blocks`` turns documents into a ``datasets.Dataset`` of fixed-length ``input_ids`` blocks;
   ``labelled_blocks`` does it for several domains at once and adds a ``domain`` column.

Importing this package does not import ``datasets`` (that happens on first use).
"""

from readme_jax.data.blocks import Tokenizer, labelled_blocks, tokenize_blocks
from readme_jax.data.builtin import corpora_dir
from readme_jax.data.domain import Document, Domain, DomainSet
from readme_jax.data.fixtures import fixture_source
from readme_jax.data.hub import hf_dataset_source
from readme_jax.data.registry import (DEFAULT_DOMAINS, MIN_DOMAINS, available_domains, default_domains,
                                      get_domain)
from readme_jax.data.sources import folder_source, jsonl_source
from readme_jax.data.split import (DEFAULT_HELDOUT_FRACTION, Split, heldout_score, is_heldout, split_documents,
                                   split_domain)

__all__ = [
    "DEFAULT_DOMAINS", "DEFAULT_HELDOUT_FRACTION", "MIN_DOMAINS", "Document", "Domain", "DomainSet", "Split",
    "Tokenizer", "available_domains", "corpora_dir", "default_domains", "fixture_source", "folder_source",
    "get_domain", "heldout_score", "hf_dataset_source", "is_heldout", "jsonl_source", "labelled_blocks",
    "split_documents", "split_domain", "tokenize_blocks",
]
