"""Two walks over nested parameter trees that the loaders and the trainer share."""

import jax


def flatten_dict(tree: dict, prefix: str = "") -> dict:
    """Nested dict -> {"a.b.c": leaf}: the names safetensors files and checkpoint fingerprints use."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat.update(flatten_dict(value, name + ".") if isinstance(value, dict) else {name: value})
    return flat


def leaf_name(path) -> str:
    """The parameter's own name on a pytree path: its last string key (block indices are ints); "" if none."""
    for entry in reversed(path):
        if isinstance(entry, jax.tree_util.DictKey) and isinstance(entry.key, str):
            return entry.key
    return ""
