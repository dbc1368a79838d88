"""readme-jax: Read-ME (Cai et al., NeurIPS 2024) in JAX/Flax.

Dimension key used in names throughout the project (``x_BLD``, ``w_up_EDX``):

    B  batch (sequences)                    E  routed experts per layer
    L  query length in this call            X  hidden width of one routed expert
    S  key/value (cache) length             R  hidden width of the always-on shared slice
    T  flattened tokens (B*L)               N  decoder layers
    D  model width                          V  vocabulary
    H  query heads                          C  expert-cache slots (serving)
    G  KV heads (GQA groups)                K  head dim
    F  dense MLP hidden width               Q  query heads per KV head (H // G)

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
