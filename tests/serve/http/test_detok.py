"""Incremental detokenisation: the deltas add up to the whole decode (UTF-8 split across tokens included), and
stop strings cut the text before their first occurrence, never later."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.http.detok import IncrementalText
from tests.serve.http.fake_engine import ByteTok

TOK = ByteTok()  # one token per UTF-8 byte: every multi-byte character spans tokens


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_deltas_concatenate_to_the_full_decode(text):
    ids = TOK.encode(text)
    inc = IncrementalText(TOK)
    deltas = [inc.add(i) for i in ids]
    assert "".join(deltas) + inc.flush() == text == inc.text
    assert all("\ufffd" not in d for d in deltas) or "\ufffd" in text  # never half a character


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcé✓ ", max_size=30), st.lists(st.text(alphabet="abcé✓ ", min_size=1, max_size=3),
                                                          min_size=1, max_size=3))
def test_stop_strings_cut_before_the_first_occurrence(text, stops):
    inc = IncrementalText(TOK, tuple(stops))
    pieces = []
    for i in TOK.encode(text):
        pieces.append(inc.add(i))
        if inc.stopped:
            break
    pieces.append(inc.flush())
    # generation stops at the first point where some stop string has appeared; the text ends where it begins
    end = next((n for n in range(len(text) + 1) if any(s in text[:n] for s in stops)), None)
    expected = text if end is None else text[:min(text[:end].find(s) for s in stops if s in text[:end])]
    assert "".join(pieces) == expected and inc.stopped == (end is not None)


def test_an_unfinished_character_is_held_then_released():
    inc = IncrementalText(TOK)
    first, second = TOK.encode("é")
    assert inc.add(first) == "" and inc.add(second) == "é"
    assert inc.add(TOK.encode("✓")[0]) == "" and inc.flush() == "\ufffd"  # cut mid-character at the end


def test_skipped_ids_emit_nothing():
    inc = IncrementalText(TOK, skip_ids=(0,))
    assert inc.add(TOK.encode("a")[0]) == "a" and inc.add(0) == "" and inc.flush() == ""


@pytest.mark.realmodel
def test_the_default_models_tokenizer_streams_the_same_text():
    from readme_jax import gguf_import
    from readme_jax import tokenizer as tok
    from readme_jax.assets import default_gguf_path

    if not default_gguf_path().is_file():
        pytest.skip("the default model is not in the cache (make setup)")
    real = tok.from_gguf(gguf_import.GGUFFile(default_gguf_path()))
    text = "Grüße, 世界! 🙂🚀 naïve café — ∑x² <|im_end|> done\n\tcode();"
    ids = real.encode(text)
    inc = IncrementalText(real, skip_ids=real.eos_ids)
    deltas = [inc.add(i) for i in ids]
    assert "".join(deltas) + inc.flush() == real.decode([i for i in ids if i not in real.eos_ids])
    assert all("\ufffd" not in d for d in deltas)
