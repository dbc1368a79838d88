"""Test-wide settings. Must run before jax, transformers or datasets are imported."""

import os
import tempfile

# Offline always: nothing may touch a hub.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HOME", os.path.join(tempfile.gettempdir(), "readme-jax-hf-home"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# 8 fake CPU devices for the sharding tests; the GPU machine keeps its real platform.
if "cuda" not in os.environ.get("JAX_PLATFORMS", ""):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# Strict shapes: an implicit rank promotion ([D] * [B, L, D]) is an error, so every broadcast in the library
# is spelled out and a silently broadcast shape bug cannot pass a test.
jax.config.update("jax_numpy_rank_promotion", "raise")


def _has_gpu() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a GPU")
    gpu = None
    for item in items:
        if "gpu" in item.keywords:
            if gpu is None:
                gpu = _has_gpu()
            if not gpu:
                item.add_marker(skip_gpu)
