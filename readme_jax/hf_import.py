"""Read and write HF Llama checkpoint folders: config.json + safetensors (single or sharded) + tokenizer."""

import json
from pathlib import Path

import numpy as np

from readme_jax import atomic
from readme_jax.config import LlamaConfig, load_hf_config, to_hf_config
from readme_jax.errors import ReadmeJaxError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class SafetensorsFolder:
    """Lazy tensor access over one or many safetensors files of an HF folder."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        index = self.folder / INDEX_NAME
        if index.is_file():
            try:
                files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                raise ReadmeJaxError(f"{index}: malformed safetensors index ({exc})") from None
        elif (self.folder / SINGLE_NAME).is_file():
            files = [SINGLE_NAME]
        else:
            files = [p.name for p in sorted(self.folder.glob("*.safetensors"))]
            if not files:
                raise ReadmeJaxError(f"{self.folder}: no model.safetensors or {INDEX_NAME}")
        self._handles = {}
        self.where = {}
        for name in files:
            path = self.folder / name
            if not path.is_file():
                raise ReadmeJaxError(f"{path}: shard listed in the index is missing")
            try:
                handle = safe_open(str(path), framework="np")
                keys = list(handle.keys())
            except Exception as exc:
                raise ReadmeJaxError(f"{path}: truncated or corrupt safetensors file ({exc})") from None
            self._handles[name] = handle
            for key in keys:
                self.where[key] = name

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> np.ndarray:
        try:
            array = self._handles[self.where[name]].get_tensor(name)
        except Exception as exc:
            raise ReadmeJaxError(f"{self.folder}: cannot read tensor {name!r} ({exc})") from None
        return np.asarray(array, dtype=np.float32) if array.dtype != np.float32 else array


    def slice_reader(self, name: str) -> "TensorSlices":
        """Lazy access to one tensor: its shape, and reads of blocks of it (only those bytes are read)."""
        if name not in self.where:
            raise ReadmeJaxError(f"checkpoint is missing tensor {name!r}")
        try:
            return TensorSlices(name, self._handles[self.where[name]].get_slice(name))
        except Exception as exc:
            raise ReadmeJaxError(f"{self.folder}: cannot read tensor {name!r} ({exc})") from None


class TensorSlices:
    def __init__(self, name: str, handle):
        self.name, self._handle = name, handle
        self.shape = tuple(handle.get_shape())

    def read(self, index: tuple) -> np.ndarray:
        """The block ``index`` (a tuple of contiguous slices) in the file's dtype."""
        try:
            return np.asarray(self._handle[index])
        except Exception as exc:
            raise ReadmeJaxError(f"cannot read {index} of tensor {self.name!r} ({exc})") from None


def is_hf_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def load_hf(folder: Path, dtype: str = "float32"):
    """(config, getter, has) for ``readme_jax.weights.hf_to_pure``."""
    folder = Path(folder)
    cfg = load_hf_config(folder / "config.json", dtype=dtype)
    st = SafetensorsFolder(folder)
    return cfg, st.get, st.has


def save_hf(folder: Path, cfg: LlamaConfig, tensors: dict, tokenizer=None, extra_config: dict | None = None,
            shard_bytes: int = 2 << 30):
    """Write an HF folder atomically: build it in a temporary sibling, then rename into place."""
    from safetensors.numpy import save_file

    folder = Path(folder).resolve()
    with atomic.atomic_folder(folder) as tmp:
        config = to_hf_config(cfg)
        config.update(extra_config or {})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        shards, current, size = [], {}, 0
        for name, array in tensors.items():
            array = np.ascontiguousarray(array)
            if current and size + array.nbytes > shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[name], size = array, size + array.nbytes
        shards.append(current)
        if len(shards) == 1:
            save_file(shards[0], str(tmp / SINGLE_NAME), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata={"format": "pt"})
                weight_map.update({k: fname for k in shard})
            total = sum(a.nbytes for a in tensors.values())
            (tmp / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
        if tokenizer is not None:
            tokenizer.save(tmp)
    return folder
