"""Builders for tiny on-disk corpora shared by the data tests."""

import gzip
import json

import pytest


def _dict_b64(n: int) -> str:
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = digits[n % 64] + out
        n //= 64
        if n == 0:
            return out


@pytest.fixture
def fake_cache(tmp_path):
    """A cache folder whose four fetched domains hold a few hand-written documents each."""
    corpora = tmp_path / "corpora"
    (corpora / "manuals" / "man7").mkdir(parents=True)
    (corpora / "manuals" / "man7" / "pipe.7.txt").write_text("NAME\n  pipe - overview of pipes\n")
    (corpora / "manuals" / "man7" / "tcp.7.txt").write_text("NAME\n  tcp - TCP protocol\n")
    (corpora / "literature").mkdir()
    (corpora / "literature" / "a_gut.txt").write_text("To be, or not to be.\n")
    (corpora / "literature" / "b_gut.txt").write_text("Now is the winter of our discontent.\n")
    # A dictd database: data (gzip) + index of base64 offsets; one metadata pseudo-entry to skip.
    entries = ["00-database-info\n   metadata, not a definition\n",
               "stack\n\n   A last-in {first-out} store.\n\n",
               "queue\nFIFO\n\n   A first-in first-out store.\n\n"]
    data = "".join(entries).encode()
    index, offset = [], 0
    for text, head in zip(entries, ["00-database-info", "stack", "queue"]):
        index.append(f"{head}\t{_dict_b64(offset)}\t{_dict_b64(len(text.encode()))}")
        offset += len(text.encode())
    index.append(f"FIFO\t{_dict_b64(offset - len(entries[2].encode()))}\t{_dict_b64(len(entries[2].encode()))}")
    (corpora / "encyclopedic").mkdir()
    (corpora / "encyclopedic" / "foldoc.dict.dz").write_bytes(gzip.compress(data))
    (corpora / "encyclopedic" / "foldoc.index").write_text("\n".join(index) + "\n")
    (corpora / "quotes").mkdir()
    (corpora / "quotes" / "science").write_text("E = mc^2\n%\nAtoms are mostly empty.\n\t\t-- someone\n%\n")
    for name in ("manuals", "literature", "encyclopedic", "quotes"):
        (corpora / name / "MANIFEST.json").write_text(json.dumps({"source": "test"}))
    return tmp_path
