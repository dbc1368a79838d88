"""readme-jax kernels: one folder per op, each with reference + implementations + tests (style §5.5).

Not the PyPI package of the same name; tests/kernels/test_import_guard.py checks that ``import kernels``
resolves to this folder. Benchmarks live in ``kernels.bench`` and are never imported from here.
"""

from kernels.gmm import (
    IMPLEMENTATIONS,
    BlockSizes,
    GmmInputError,
    GroupMetadata,
    ImplementationUnavailableError,
    expert_mlp,
    gmm,
    group_metadata_from_sizes,
    make_group_metadata,
    make_moe_metadata,
    moe_mlp,
    resolve_implementation,
    sort_tokens,
    tgmm,
    unsort_tokens,
)

__all__ = [
    "BlockSizes",
    "GmmInputError",
    "GroupMetadata",
    "IMPLEMENTATIONS",
    "ImplementationUnavailableError",
    "expert_mlp",
    "gmm",
    "group_metadata_from_sizes",
    "make_group_metadata",
    "make_moe_metadata",
    "moe_mlp",
    "resolve_implementation",
    "sort_tokens",
    "tgmm",
    "unsort_tokens",
]
