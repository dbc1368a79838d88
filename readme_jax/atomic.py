"""Atomic writes: the data goes to a temporary file (or folder) beside the target, which then replaces it.

A reader (or a run killed half-way) sees the old file or the new one, never a half-written one. The
temporary sits in the target's folder so that ``os.replace`` is a rename on one file system. A folder
cannot be renamed over a non-empty one, so ``atomic_folder`` moves the old folder aside first: between
the two renames the target is briefly absent, but it is never incomplete.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; it replaces ``path`` on success and is removed on error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_folder(folder):
    """Yield a temporary folder beside ``folder``; it replaces ``folder`` on success and is removed on error."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".part"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result should read like any other folder
    try:
        yield tmp
        if not folder.exists():
            os.replace(tmp, folder)
            return
        old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
        os.replace(folder, old)  # onto the empty placeholder: the old copy survives until the new one is in
        try:
            os.replace(tmp, folder)
        except BaseException:
            os.replace(old, folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
