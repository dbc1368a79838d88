"""The one exception type that user-facing code raises for bad input (``ReadmeJaxError``).

It is defined in ``kernels.errors`` (the bottom layer, so that the kernels can raise it without importing
upwards) and re-exported here. Importing this module imports no jax, so the pure-Python serving code may use it.
"""

from kernels.errors import ReadmeJaxError

__all__ = ["ReadmeJaxError"]
