"""Bring-your-own sources: folders, JSONL, datasets (offline), and the committed fixtures."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from readme_jax.data import DEFAULT_DOMAINS, fixture_source, folder_source, hf_dataset_source, jsonl_source
from readme_jax.data.fixtures import FIXTURES_DIR
from readme_jax.errors import ReadmeJaxError


def test_folder_source(tmp_path):
    (tmp_path / "poems").mkdir()
    (tmp_path / "poems" / "a.txt").write_text("roses are red\n")
    (tmp_path / "poems" / "skip.md").write_text("not text\n")
    (tmp_path / "code" / "sub").mkdir(parents=True)
    (tmp_path / "code" / "sub" / "b.txt").write_text("print(1)\n")
    (tmp_path / "empty").mkdir()
    domains = folder_source(tmp_path)
    assert domains.names == ("code", "empty", "poems")
    assert [d.id for d in domains.get("code").documents()] == ["code/sub/b.txt"]
    assert [d.id for d in domains.get("poems").documents()] == ["poems/a.txt"]
    empty = domains.get("empty")
    assert not empty.available() and "no .txt files in" in empty.reason
    with pytest.raises(ReadmeJaxError, match="domain 'empty' is not available: no .txt files"):
        empty.documents()

    mapped = folder_source({"verse": tmp_path / "poems", "gone": tmp_path / "missing"})
    assert mapped.names == ("verse", "gone")
    assert "does not exist" in mapped.get("gone").reason


def test_folder_source_errors(tmp_path):
    with pytest.raises(ReadmeJaxError, match="does not exist"):
        folder_source(tmp_path / "nope")
    with pytest.raises(ReadmeJaxError, match="has no subfolders"):
        folder_source(tmp_path)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_source(tmp_path):
    rows = [{"text": "def f(): pass", "domain": "code", "id": "f"},
            {"text": "Hereby granted.", "domain": "legal"},
            {"text": "def g(): pass", "domain": "code"}]
    path = _write_jsonl(tmp_path / "mix.jsonl", rows)
    domains = jsonl_source(path)
    assert domains.names == ("code", "legal")
    assert [d.id for d in domains.get("code").documents()] == ["code/f", "code/line3"]
    assert jsonl_source(path, domains=["legal", "code"]).names == ("legal", "code")
    with pytest.raises(ReadmeJaxError, match="unknown domain 'news'.*known domains: code, legal"):
        jsonl_source(path, domains=["news"])

    gz = tmp_path / "mix.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert [d.text for d in jsonl_source(gz).get("legal").documents()] == ["Hereby granted."]


def test_jsonl_bad_input_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "domain": "a"}\n\n{"text": "oops", "domain": \n')
    with pytest.raises(ReadmeJaxError, match=r"bad.jsonl:3: not valid JSON"):
        jsonl_source(path)
    path.write_text('{"text": "ok", "domain": "a"}\n{"body": "no text field", "domain": "a"}\n')
    with pytest.raises(ReadmeJaxError, match=r"bad.jsonl:2: field 'text' must be a string, it is missing"):
        jsonl_source(path)
    path.write_text('[1, 2]\n')
    with pytest.raises(ReadmeJaxError, match=r"bad.jsonl:1: expected a JSON object"):
        jsonl_source(path)
    path.write_text("\n")
    with pytest.raises(ReadmeJaxError, match="no records"):
        jsonl_source(path)
    with pytest.raises(ReadmeJaxError, match="does not exist"):
        jsonl_source(tmp_path / "missing.jsonl")
    path.write_text('{"text": "  ", "domain": "blank"}\n')
    with pytest.raises(ReadmeJaxError, match="domain 'blank' has no text"):
        list(jsonl_source(path).get("blank").documents())


def test_hf_dataset_offline_error_names_the_dataset():
    with pytest.raises(ReadmeJaxError, match=r"cannot load dataset 'no-such-org/no-such-corpus'.*Offline mode is on"):
        hf_dataset_source("no-such-org/no-such-corpus", domain_column="meta.redpajama_set_name")


def test_hf_dataset_source_from_local_json(tmp_path):
    rows = [{"text": "a wiki page", "meta": {"set": "wiki"}},
            {"text": "some code", "meta": {"set": "github"}},
            {"text": "another page", "meta": {"set": "wiki"}}]
    path = _write_jsonl(tmp_path / "rp.jsonl", rows)
    domains = hf_dataset_source("json", "meta.set", data_files=str(path), cache_dir=str(tmp_path / "hf"))
    assert domains.names == ("github", "wiki")
    assert [(d.id, d.text) for d in domains.get("wiki").documents()] == [("wiki/0", "a wiki page"),
                                                                         ("wiki/2", "another page")]
    with pytest.raises(ReadmeJaxError, match=r"has no column 'content'; its columns are"):
        hf_dataset_source("json", "meta.set", text_column="content", data_files=str(path),
                          cache_dir=str(tmp_path / "hf"))


def test_fixtures_are_present_small_and_documented():
    domains = fixture_source()
    assert domains.names == DEFAULT_DOMAINS
    readme = (FIXTURES_DIR / "README.md").read_text()
    for domain in domains:
        path = FIXTURES_DIR / f"{domain.name}.txt"
        assert 1_000 < path.stat().st_size < 8_000, path
        assert f"`{domain.name}.txt`" in readme
        docs = list(domain.documents())
        assert len(docs) >= 3 and all(d.id.startswith(f"fixture/{domain.name}/") for d in docs)
        assert len({d.id for d in docs}) == len(docs)


def test_importing_the_package_does_not_import_datasets():
    code = "import sys, readme_jax.data; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "False"
