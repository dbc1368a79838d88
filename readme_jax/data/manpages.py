"""Render man pages to plain text for the ``manuals`` domain.

``man -l`` (groff) gives the real rendering; when ``man`` is missing a regex roff stripper is used
instead, which keeps the prose and drops the markup. Rendering takes ~0.1 s per page, so callers cap the
amount of text (a few MB is plenty for neuron statistics).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

DEFAULT_MAN_ROOT = Path("/usr/share/man")
# Section 2 (system calls), 3 (library) and 7 (overviews) are API and technical prose; section 1 is
# mostly option lists, and localised trees (/usr/share/man/de, ...) would add other languages.
DEFAULT_SECTIONS = ("2", "3", "7")
_MIN_PAGE_CHARS = 200
# Compressed sources above this (cmake-modules(7) renders to 860 KB, libpng(3), bpf-helpers(7), ...) are
# single reference dumps that would dominate the domain; they are skipped.
MAX_SOURCE_BYTES = 40_000


def list_pages(root: Path = DEFAULT_MAN_ROOT, sections=DEFAULT_SECTIONS,
               max_source_bytes: int = MAX_SOURCE_BYTES) -> list[Path]:
    """Page files in a fixed order that makes any prefix a fair sample.

    Within a section, pages are ordered by a hash of their name (alphabetical order would start with the
    PostgreSQL and OpenSSL pages), and sections are interleaved so that a capped prefix covers all of
    them. Symlinks (aliases of another page) and giant pages are left out.
    """
    def usable(p: Path) -> bool:
        return p.is_file() and not p.is_symlink() and p.stat().st_size <= max_source_bytes

    def by_hash(p: Path) -> bytes:
        return hashlib.sha256(p.name.encode()).digest()

    per_section = [sorted((p for p in (root / f"man{s}").glob("*") if usable(p)), key=by_hash) for s in sections]
    order = []
    for i in range(max((len(s) for s in per_section), default=0)):
        order += [s[i] for s in per_section if i < len(s)]
    return order


def read_source(path: Path) -> str:
    """The roff source of a (possibly gzipped) page."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def is_redirect(source: str) -> bool:
    """Whether the page only includes another one (``.so man3/other.3``)."""
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.startswith(('.\\"', "'\\\""))]
    return len(lines) == 1 and lines[0].startswith(".so ")


def have_man() -> bool:
    return shutil.which("man") is not None


def render_page(path: Path, use_man: bool | None = None, timeout: float = 30.0) -> str:
    """Plain text of one page ("" for redirects and pages that fail to render)."""
    source = read_source(path)
    if is_redirect(source):
        return ""
    if use_man is None:
        use_man = have_man()
    if use_man:
        env = dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat", LC_ALL="C.UTF-8")
        env.pop("MAN_KEEP_FORMATTING", None)
        # --nh --nj: no hyphenation or justification, so words are not split across lines.
        proc = subprocess.run(["man", "--nh", "--nj", "-l", str(path)], capture_output=True, env=env,
                              timeout=timeout, check=False)
        if proc.returncode != 0:
            return ""
        text = _plain(proc.stdout.decode("utf-8", errors="replace"))
    else:
        text = strip_roff(source)
    return text if len(text) >= _MIN_PAGE_CHARS else ""


def _plain(text: str) -> str:
    """What ``col -bx`` would do: drop overstrike (bold/underline) sequences and expand tabs."""
    text = re.sub(r".\x08", "", text)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [ln.expandtabs().rstrip() for ln in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


# Named glyphs that are common in man pages; others are dropped.
_GLYPHS = {"em": "--", "en": "-", "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'",
           "bu": "*", "co": "(c)", "rg": "(R)", "tm": "(TM)", "mu": "x", "<=": "<=", ">=": ">=",
           "->": "->", "<-": "<-", "ti": "~", "ha": "^", "rs": "\\", "dg": "+", "hy": "-"}
_FONT_MACROS = {".B", ".I", ".SM", ".SB"}
_ALT_MACROS = {".BR", ".RB", ".BI", ".IB", ".IR", ".RI"}


def strip_roff(source: str) -> str:
    """Approximate plain text of a man(7) roff page without running groff.

    Section headings become upper-case lines; the arguments of font macros are joined
    (``.BR open (2)`` -> ``open(2)``); text lines are filled into paragraphs except inside ``.nf``/``.EX``
    blocks (code); escapes and all other requests are removed.
    """
    out: list[str] = []
    para: list[str] = []
    fill = True

    def put(text: str) -> None:
        if fill:
            para.append(text)
        else:
            out.append(text)

    def end_paragraph() -> None:
        if para:
            out.append(" ".join(para))
            para.clear()
        out.append("")

    for line in source.splitlines():
        if line.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        if re.fullmatch(r"\s*(\\\{\\?|\\\})\s*", line):
            continue  # brace residue of .ie/.el conditionals (pod2man pages)
        if not line.startswith((".", "'")):
            if line.strip():
                put(line)
            else:
                end_paragraph()
            continue
        macro, _, rest = line.partition(" ")
        args = _macro_args(rest.rstrip("\\"))
        if macro in (".SH", ".SS"):
            end_paragraph()
            out.append(" ".join(args).upper() if macro == ".SH" else " ".join(args))
        elif macro in _FONT_MACROS:
            put(" ".join(args))
        elif macro in _ALT_MACROS:
            put("".join(args))
        elif macro in (".PP", ".P", ".LP", ".TP", ".IP", ".sp", ".br"):
            end_paragraph()
            if macro == ".IP" and args and args[0] not in ("*", "\\(bu", "\\[bu]"):
                out.append(args[0])
        elif macro in (".nf", ".EX", ".fi", ".EE"):
            end_paragraph()
            fill = macro in (".fi", ".EE")
        # .TH, .in, .RS, .RE and the like carry no text.
    end_paragraph()
    text = _unescape("\n".join(out))
    lines = [ln.rstrip() for ln in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def _macro_args(rest: str) -> list[str]:
    """Macro arguments: space separated, double quotes group words."""
    return [quoted or bare for quoted, bare in re.findall(r'"([^"]*)"|(\S+)', rest)]


def _unescape(text: str) -> str:
    text = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", text)  # font changes
    text = re.sub(r"\\\[([^\]]*)\]", lambda m: _GLYPHS.get(m.group(1), ""), text)
    text = re.sub(r"\\\((..)", lambda m: _GLYPHS.get(m.group(1), ""), text)
    text = re.sub(r"\\[*n]\(?(\[[^\]]*\]|..|.)", "", text)  # strings and registers
    text = re.sub(r"\\[sh]'?[-+]?\d*'?", "", text)  # size changes and motions
    text = text.replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ").replace("\\~", " ")
    return re.sub(r"\\[&c|^%:]", "", text)
