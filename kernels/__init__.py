"""readme-jax kernels: one folder per op, each with reference + implementations + tests (style §5.5).

The bottom layer of the project: nothing here imports ``readme_jax``, ``train`` or ``serve``
(tests/test_layers.py checks it). Not the PyPI package of the same name; tests/kernels/test_kernels_import.py
checks that ``import kernels`` resolves to this folder. Benchmarks live in ``kernels.bench`` and are never
imported from here.

The grouped-matmul names are re-exported lazily, so ``kernels.errors`` (the project's error base) stays
importable without jax.
"""

import importlib as _importlib


def _gmm_names():
    # The public names are listed once, in kernels/gmm/__init__.py; this package re-exports all of them.
    return list(_importlib.import_module("kernels.gmm").__all__)


def __getattr__(name):
    if name == "__all__":
        return _gmm_names()
    gmm_package = _importlib.import_module("kernels.gmm")
    if name in gmm_package.__all__:
        return getattr(gmm_package, name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_gmm_names()))
