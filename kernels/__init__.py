"""readme-jax kernels: one folder per op, each with reference + implementations + tests (style §5.5).

Not the PyPI package of the same name; tests/kernels/test_import_guard.py checks that ``import kernels``
resolves to this folder. Benchmarks live in ``kernels.bench`` and are never imported from here.
"""

import importlib as _importlib

# The public names are listed once, in kernels/gmm/__init__.py; this package re-exports all of them, so the two
# lists cannot drift apart. The function ``gmm`` then shadows the subpackage attribute, as it always has.
_gmm_package = _importlib.import_module("kernels.gmm")
__all__ = list(_gmm_package.__all__)
globals().update({_name: getattr(_gmm_package, _name) for _name in __all__})
del _gmm_package, _importlib
