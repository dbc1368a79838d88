"""Where readme-jax keeps downloaded assets: ``$READMEJAX_CACHE`` or ``~/.cache/readme-jax``."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """The asset cache folder (not created here)."""
    env = os.environ.get("READMEJAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "readme-jax"
