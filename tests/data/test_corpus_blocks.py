"""Fixed-length token blocks through datasets: shapes, EOS between documents, limits, errors."""

import numpy as np
import pytest

from readme_jax.data import Document, fixture_source, labelled_blocks, tokenize_blocks
from readme_jax.errors import ReadmeJaxError

EOS = 256


class ByteTokenizer:
    """One id per UTF-8 byte; EOS is 256, outside the byte range. Counts its calls."""

    eos_id = EOS

    def __init__(self):
        self.calls = 0

    def encode(self, text):
        self.calls += 1
        return list(text.encode("utf-8"))


def test_blocks_are_the_eos_joined_stream_cut_to_length():
    docs = [Document("a", "hello"), Document("b", "wörld!"), Document("c", "x" * 20)]
    ds = tokenize_blocks(docs, ByteTokenizer(), block_len=4)
    stream = []
    for d in docs:
        stream += list(d.text.encode()) + [EOS]
    n = len(stream) // 4
    blocks = ds[:]["input_ids"]
    assert ds.column_names == ["input_ids"] and len(ds) == n
    assert blocks.shape == (n, 4) and blocks.dtype == np.int32
    np.testing.assert_array_equal(blocks.reshape(-1), stream[: n * 4])
    # The EOS sits right after each document's last byte.
    flat = blocks.reshape(-1).tolist()
    assert flat[5] == EOS and flat[5 + 1 + len("wörld!".encode())] == EOS


def test_strings_work_and_remainder_is_dropped():
    ds = tokenize_blocks(["abc", "de"], ByteTokenizer(), block_len=3)  # a b c EOS d e EOS -> 2 blocks
    assert ds[:]["input_ids"].tolist() == [[97, 98, 99], [EOS, 100, 101]]


def test_max_blocks_stops_tokenizing_early():
    docs = [Document(str(i), "y" * 100) for i in range(1000)]
    tok = ByteTokenizer()
    ds = tokenize_blocks(docs, tok, block_len=16, max_blocks=5)
    assert len(ds) == 5 and ds[:]["input_ids"].shape == (5, 16)
    assert tok.calls < 50  # not all 1000 documents


def test_fixture_domains_give_blocks():
    docs = list(fixture_source().get("legal").documents())
    ds = tokenize_blocks(docs, ByteTokenizer(), block_len=128)
    assert len(ds) == sum(len(d.text.encode()) + 1 for d in docs) // 128


def test_labelled_blocks_carry_the_domain_index():
    ds = labelled_blocks({"a": ["a" * 40], "b": ["b" * 80]}, ByteTokenizer(), block_len=8, max_blocks_per_domain=3)
    assert ds.column_names == ["input_ids", "domain"]
    assert ds[:]["domain"].tolist() == [0, 0, 0, 1, 1, 1]
    assert ds[:]["input_ids"].shape == (6, 8)


def test_block_errors():
    tok = ByteTokenizer()
    with pytest.raises(ReadmeJaxError, match="only 4 tokens, fewer than one block of 8"):
        tokenize_blocks(["abc"], tok, block_len=8, desc="tiny")
    with pytest.raises(ReadmeJaxError, match="block_len must be a positive int"):
        tokenize_blocks(["abc"], tok, block_len=0)
    with pytest.raises(ReadmeJaxError, match="max_blocks"):
        tokenize_blocks(["abc"], tok, block_len=2, max_blocks=0)
    with pytest.raises(ReadmeJaxError, match="no documents"):
        tokenize_blocks([], tok, block_len=2)

    class NoEos:
        def encode(self, text):
            return [1]

    with pytest.raises(ReadmeJaxError, match="no int eos_id"):
        tokenize_blocks(["abc"], NoEos(), block_len=2)
