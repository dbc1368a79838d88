"""readme-jax: Read-ME (Cai et al., NeurIPS 2024) in JAX/Flax.

Tensor names carry their shape (``x_BLD``, ``w_up_EDX``); the one dimension key is README.md's
"Dimension key" (K is the head dim, T the flattened tokens B*L).

The heavy modules (jax, flax) are imported lazily so that ``readme_jax.errors`` stays importable
from the pure-Python serving code.
"""

from readme_jax.errors import ReadmeJaxError

__all__ = ["load", "LM", "ReadmeJaxError"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in ("load", "LM"):
        from readme_jax import lm

        return getattr(lm, name)
    raise AttributeError(f"module 'readme_jax' has no attribute {name!r}")
