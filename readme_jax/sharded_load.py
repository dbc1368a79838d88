"""Load an HF Llama folder straight into sharded device arrays: no host ever holds the whole model.

Every parameter is built with ``jax.make_array_from_callback``: for each shard that a device of *this*
process holds, the callback reads exactly the matching block of the safetensors tensor (``safe_open``'s
``get_slice`` reads only those bytes) and converts it to our layout; replicas of a block share one read. So
a process reads only its own devices' shards, and the host memory it stages at once is its share of one
tensor, never the model.

The HF -> ours maps of ``readme_jax.weights`` are transposes and head reshapes; the block a shard needs is
found per layout (below). The head dimension K is never split in a source read: a shard that splits K reads
its heads whole and slices them after the reshape (K is replicated by every sharding rule we have).
"""

from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Sharding

from readme_jax.config import LlamaConfig, load_hf_config
from readme_jax.errors import ReadmeJaxError
from readme_jax.hf_import import SafetensorsFolder
from readme_jax.model import abstract_model

# Layout of each parameter relative to its HF tensor W (HF Linear weights are [out, in]).
#   same:      ours == W                          (norms [D], embedding [V, D])
#   transpose: ours[i, j] == W[j, i]              (MLP, LM head)
#   heads_out: ours[d, h, k] == W[h*K + k, d]     (q / k / v projections: [D, H, K] from [H*K, D])
#   heads_in:  ours[h, k, d] == W[d, h*K + k]     (o projection: [H, K, D] from [D, H*K])
LAYOUTS = {
    "embed_VD": "same", "final_norm_D": "same", "attn_norm_D": "same", "mlp_norm_D": "same",
    "w_head_DV": "transpose", "w_gate_DF": "transpose", "w_up_DF": "transpose", "w_down_FD": "transpose",
    "w_q_DHK": "heads_out", "w_k_DGK": "heads_out", "w_v_DGK": "heads_out", "w_o_HKD": "heads_in",
}


def _hf_names(cfg: LlamaConfig) -> dict:
    """Our path (tuple of keys) -> HF tensor name, for every parameter of the dense model."""
    from readme_jax.weights import _block_map

    names = {("embed_VD",): "model.embed_tokens.weight", ("final_norm_D",): "model.norm.weight"}
    if not cfg.tie_embeddings:
        names[("w_head_DV",)] = "lm_head.weight"
    for n in range(cfg.n_layers):
        for ours, (suffix, _, _) in _block_map(cfg).items():
            names[("blocks", n, ours)] = f"model.layers.{n}.{suffix}"
    return names


def _span(s: slice, size: int) -> tuple[int, int]:
    start, stop, step = s.indices(size)
    if step != 1:
        raise ReadmeJaxError(f"a shard index with step {step} is not a contiguous block")
    return start, stop


def read_block(read: Callable, layout: str, shape: tuple, index: tuple) -> np.ndarray:
    """Our-layout block ``index`` (a tuple of slices over ``shape``) from ``read(hf_index)`` of the HF tensor."""
    spans = [_span(s, n) for s, n in zip(index, shape)]
    if layout == "same":
        return read(tuple(slice(a, b) for a, b in spans))
    if layout == "transpose":
        (a0, b0), (a1, b1) = spans
        return read((slice(a1, b1), slice(a0, b0))).T
    (d0, d1), (h0, h1), (k0, k1) = (spans[0], spans[1], spans[2]) if layout == "heads_out" else \
        (spans[2], spans[0], spans[1])
    K = shape[2] if layout == "heads_out" else shape[1]
    heads = slice(h0 * K, h1 * K)
    if layout == "heads_out":  # W[h*K + k, d] -> [d, h, k]
        block = read((heads, slice(d0, d1))).T.reshape(d1 - d0, h1 - h0, K)
        return block[:, :, k0:k1]
    block = read((slice(d0, d1), heads)).T.reshape(h1 - h0, K, d1 - d0)  # W[d, h*K + k] -> [h, k, d]
    return block[:, k0:k1, :]


def load_hf_sharded(folder, sharding_of: Callable[[tuple, tuple], Sharding], dtype: str = "float32"):
    """(config, pure state dict of global ``jax.Array``) of an HF Llama folder, each parameter placed with
    ``sharding_of(path, shape)`` (path: our keys, e.g. ``("blocks", 0, "w_q_DHK")``).

    Works in a multi-process job: each process reads only the shards of its own devices.
    """
    folder = Path(folder)
    cfg = load_hf_config(folder / "config.json", dtype=dtype)
    st = SafetensorsFolder(folder)
    _, abstract = abstract_model(cfg)
    from flax import nnx

    shapes = nnx.to_pure_dict(abstract)
    np_dtype = np.dtype(jax.numpy.dtype(cfg.dtype))
    out = {}
    for path, name in _hf_names(cfg).items():
        want = shapes
        for key in path:
            want = want[key]
        shape = tuple(want.shape)
        source = st.slice_reader(name)
        expected = {"same": shape, "transpose": shape[::-1]}.get(LAYOUTS[path[-1]])
        if expected is None:  # heads: [D, H, K] <- [H*K, D]; [H, K, D] <- [D, H*K]
            expected = (shape[1] * shape[2], shape[0]) if LAYOUTS[path[-1]] == "heads_out" else \
                (shape[2], shape[0] * shape[1])
        if tuple(source.shape) != expected:
            raise ReadmeJaxError(f"tensor {name!r} has shape {tuple(source.shape)}, expected {expected} "
                                 "for this config")

        blocks = {}  # devices holding the same block (replicas over a data axis) share one read

        def callback(index, source=source, layout=LAYOUTS[path[-1]], shape=shape, blocks=blocks):
            key = tuple(_span(s, n) for s, n in zip(index, shape))
            if key not in blocks:
                block = read_block(source.read, layout, shape, index)
                blocks[key] = np.ascontiguousarray(block).astype(np_dtype, copy=False)
            return blocks[key]

        array = jax.make_array_from_callback(shape, sharding_of(path, shape), callback)
        blocks.clear()
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = array
    return cfg, out
