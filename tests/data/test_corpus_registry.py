"""Registry lookup, availability reporting and the built-in domain readers (on tiny fake sources)."""

import pytest

from readme_jax.data import (DEFAULT_DOMAINS, Document, Domain, DomainSet, available_domains, default_domains,
                             get_domain)
from readme_jax.data.builtin import code_domain, legal_domain
from readme_jax.errors import ReadmeJaxError


def test_default_order_is_the_expert_order(tmp_path):
    domains = default_domains(tmp_path)
    assert domains.names == DEFAULT_DOMAINS == ("code", "legal", "manuals", "literature", "encyclopedic", "quotes")
    assert [domains.index(n) for n in DEFAULT_DOMAINS] == list(range(6))
    assert get_domain("quotes", domains).name == "quotes"


def test_unknown_domain_names_the_known_ones(tmp_path):
    with pytest.raises(ReadmeJaxError, match=r"unknown domain 'legl'.*did you mean 'legal'.*code, legal, manuals"):
        get_domain("legl", default_domains(tmp_path))
    with pytest.raises(ReadmeJaxError, match="unknown domain 'nope'"):
        default_domains(tmp_path).select(["code", "nope"])


def test_unfetched_domains_report_why(tmp_path):
    domains = default_domains(tmp_path)  # empty cache: nothing fetched
    for name in ("manuals", "literature", "encyclopedic", "quotes"):
        domain = domains.get(name)
        assert not domain.available()
        assert "readme_jax.data.fetch" in domain.reason and str(tmp_path) in domain.reason
        with pytest.raises(ReadmeJaxError, match=f"domain '{name}' is not available: not fetched"):
            domain.documents()
    with pytest.raises(ReadmeJaxError, match=r"at least 7 needed.*manuals: not fetched"):
        available_domains(domains, minimum=7)


def test_fetched_domains_read_from_the_cache(fake_cache):
    domains = default_domains(fake_cache)
    for name in ("manuals", "literature", "encyclopedic", "quotes"):
        assert domains.get(name).available(), domains.get(name).reason
    assert available_domains(domains, minimum=4).names[-4:] == ("manuals", "literature", "encyclopedic", "quotes")

    manuals = list(domains.get("manuals").documents())
    assert [d.id for d in manuals] == ["manuals/man7/pipe.7.txt", "manuals/man7/tcp.7.txt"]
    literature = list(domains.get("literature").documents())
    assert literature[0] == Document("literature/a_gut.txt", "To be, or not to be.\n")

    (foldoc,) = domains.get("encyclopedic").documents()  # two short entries packed into one document
    assert foldoc.id == "encyclopedic/foldoc/00000"
    assert "metadata" not in foldoc.text  # the 00-database pseudo-entry is skipped
    assert foldoc.text.count("first-in first-out") == 1  # the alias FIFO points at the same entry
    assert "stack\n\nA last-in first-out store." in foldoc.text  # de-indented, braces removed
    assert "queue, FIFO" in foldoc.text

    (quotes,) = domains.get("quotes").documents()
    assert quotes.id == "quotes/science/00000"
    assert quotes.text == "E = mc^2\n\nAtoms are mostly empty.\n\t\t-- someone\n"


def test_domain_without_text_is_a_clear_error(fake_cache):
    lit = fake_cache / "corpora" / "literature"
    for p in lit.glob("*.txt"):
        p.write_text("  \n")
    domain = default_domains(fake_cache).get("literature")
    assert domain.available()  # the source is there ...
    with pytest.raises(ReadmeJaxError, match=r"domain 'literature' has no text.*corpora/literature"):
        list(domain.documents())  # ... but holds nothing


def test_code_domain_skips_tests_and_site_packages(tmp_path):
    (tmp_path / "os.py").write_text("import sys\n")
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "decoder.py").write_text("def decode(s):\n    return s\n")
    for skipped in ("test", "site-packages", "__pycache__"):
        (tmp_path / skipped).mkdir()
        (tmp_path / skipped / "x.py").write_text("x = 1\n")
    domain = code_domain(tmp_path)
    assert domain.available()
    assert [d.id for d in domain.documents()] == ["code/json/decoder.py", "code/os.py"]
    assert "no Python standard library" in code_domain(tmp_path / "missing").reason


def test_legal_domain_reads_duplicates_once(tmp_path):
    licenses, docs = tmp_path / "common-licenses", tmp_path / "doc"
    licenses.mkdir()
    (licenses / "MIT").write_text("Permission is hereby granted.\n")
    for pkg in ("liba", "libb"):
        (docs / pkg).mkdir(parents=True)
        (docs / pkg / "copyright").write_text("Copyright 2024 Someone.\n")
    ids = [d.id for d in legal_domain(licenses, docs).documents()]
    assert ids == ["legal/common-licenses/MIT", "legal/doc/liba/copyright"]
    assert "no licence texts" in legal_domain(tmp_path / "x", tmp_path / "y").reason


def test_domain_set_rules():
    def make(name):
        return Domain(name, "d", "l", lambda: None, lambda: [Document(f"{name}/1", "text")])

    with pytest.raises(ReadmeJaxError, match="duplicate domain names"):
        DomainSet((make("a"), make("a")))
    with pytest.raises(ReadmeJaxError, match="bad domain name"):
        make(" a")
    pair = DomainSet((make("a"), make("b")), "test set")
    assert pair.select(["b", "a"]).names == ("b", "a")
    assert "a" in pair and len(pair) == 2
    missing = Domain("c", "d", "l", lambda: "gone", lambda: [])
    assert DomainSet((make("a"), missing)).status() == [("a", None), ("c", "gone")]
    assert DomainSet((make("a"), missing)).available().names == ("a",)
