"""Sharded loading: an HF folder of several safetensors files goes straight into the training shardings of a
2x2x2 mesh of 8 fake CPU devices, one shard-sized read per device, equal to the plain full load."""

import tracemalloc

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from readme_jax import hf_import
from readme_jax.hf_import import load_hf, save_hf
from readme_jax.lm import jax_to_numpy
from readme_jax.sharded_load import load_hf_sharded
from readme_jax.weights import hf_to_pure, pure_to_hf
from tests.helpers import tiny_config, tiny_model
from train import sharding


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    # Shapes that the mesh axes divide (V=96, D=256, F=2048, 4 heads of 64, 2 KV heads), so most tensors split;
    # the MLP matrices (2 MB each) are large enough that Python's own allocations do not hide them.
    cfg = tiny_config(vocab_size=96, d_model=256, d_ff=2048, n_heads=4, n_kv_heads=2)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg, seed=1))[1]))
    folder = save_hf(tmp_path_factory.mktemp("hf") / "llama", cfg, pure_to_hf(cfg, pure), shard_bytes=4_000_000)
    assert (folder / hf_import.INDEX_NAME).is_file()  # really a sharded folder (several files)
    return folder


def test_sharded_load_reads_only_shards_and_equals_the_full_load(hf_folder, monkeypatch):
    if jax.device_count() < 8:
        pytest.skip("needs the 8 fake CPU devices of tests/conftest.py")
    mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2", jax.devices()[:8])
    reads = []
    original = hf_import.TensorSlices.read

    def counting_read(self, index):
        block = original(self, index)
        reads.append((self.name, block.size, int(np.prod(self.shape))))
        return block

    monkeypatch.setattr(hf_import.TensorSlices, "read", counting_read)

    def sharding_of(path, shape):
        return NamedSharding(mesh, sharding.logical_spec(sharding.PARAM_AXES[path[-1]], shape, mesh))

    tracemalloc.start()
    want = hf_to_pure(*load_hf(hf_folder))  # the plain load: every full tensor on the host
    _, full_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    cfg, arrays = load_hf_sharded(hf_folder, sharding_of)
    after, peak = tracemalloc.get_traced_memory()  # both include the plain load's arrays, still held
    tracemalloc.stop()

    flat_got = jax.tree_util.tree_leaves_with_path(arrays)
    flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
    assert len(flat_got) == len(flat_want)
    model_bytes = sum(np.asarray(x).nbytes for x in flat_want.values())
    largest = max(np.asarray(x).nbytes for x in flat_want.values())
    for path, array in flat_got:
        np.testing.assert_array_equal(np.asarray(array), flat_want[path])
        for shard in array.addressable_shards:  # every device holds exactly its block
            np.testing.assert_array_equal(np.asarray(shard.data), flat_want[path][shard.index])
    gate = arrays["blocks"][0]["w_gate_DF"]
    assert tuple(gate.sharding.spec) == ("fsdp", "tensor") and len(gate.sharding.device_set) == 8
    assert tuple(arrays["blocks"][1]["w_q_DHK"].sharding.spec) == ("fsdp", "tensor", None)
    # One read per distinct block (replicas over "data" share it): with (fsdp, tensor) splits a read is a
    # quarter of its tensor, never the whole of it.
    blocks = sum(len({tuple((i.start, i.stop) for i in idx) for idx in a.sharding.addressable_devices_indices_map(
        a.shape).values()}) for _, a in flat_got)
    assert len(reads) == blocks
    assert all(size < total for n, size, total in reads if "mlp" in n or "self_attn" in n)
    # On CPU the device buffers are host memory too (some alias the numpy blocks), so what the load *stages*
    # is its peak above what the devices still hold after it. The plain load peaks at the whole model.
    staged = peak - after
    print(f"host memory: plain load peak {full_peak / 1e6:.2f} MB (model {model_bytes / 1e6:.2f} MB); sharded "
          f"load staged {staged / 1e6:.2f} MB at peak (largest tensor {largest / 1e6:.2f} MB)")
    assert full_peak >= model_bytes
    assert staged < 1.5 * largest and staged < model_bytes / 4
    assert cfg.d_model == 256
