"""GGUF tokenizers of each supported kind, on small vocabularies the tests train themselves, against the
``tokenizers`` library configured as each model family's own tokenizer.json is (and against transformers' GGUF
reader where it agrees with that), plus hand-checked splits that neither reference decides."""

import json

import gguf
import pytest
from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from readme_jax.errors import ReadmeJaxError
from readme_jax.gguf_import import GGUFFile
from readme_jax.tokenizer import from_gguf

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["The year 2026 had 365 days; 1234567 is a number, and so is 42.",
          "I'LL say it's done, they'd've known. We're here!\n\n  def f(x):\n\treturn x + 10 ** 3\n",
          "Prices: $19.99, 3.14159, 1000000 and 007 agents (ok) don't care.",
          "caf\u00e9 na\u00efve \u00fcber \u4e2d\u6587 emoji \U0001f600 done"] * 20
TEXTS = ["The year 2026 had 365 days", "1234567 and 0.5, 12 345", "I'LL say it's done, they'd've known.",
         "  def f(x):\n\treturn x + 10 ** 3\n\n\n", "caf\u00e9 \u4e2d\u6587 \U0001f600 <|im_start|>user\nhi<|im_end|>",
         "(ok) don't   care!!\r\n"]


def _train_byte_level():
    """A small byte-level BPE vocabulary (256 bytes + merges learned on CORPUS), as a GGUF stores it."""
    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    model = json.loads(tk.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def write_vocab_gguf(path, tokens, types, *, model, pre=None, merges=None, scores=None, eos=None, bos=None):
    """A GGUF holding only tokenizer metadata (GGUFFile opens it; no tensors are needed)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    if scores is not None:
        writer.add_token_scores(scores)
    if eos is not None:
        writer.add_eos_token_id(eos)
    if bos is not None:
        writer.add_bos_token_id(bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFFile(path)


@pytest.fixture(scope="module")
def byte_vocab():
    return _train_byte_level()


def _reference(tokens, merges, pre_tokenizer, normalizer=None):
    ref = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                 merges=[tuple(m.split(" ", 1)) for m in merges]))
    ref.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        ref.normalizer = normalizer
    ref.decoder = decoders.ByteLevel()
    ref.add_special_tokens(SPECIALS)
    return ref


# each family's pre-tokenizer as its published tokenizer.json spells it
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
FAMILIES = {
    "gpt-2": lambda: (pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), None),
    "smollm": lambda: (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
                       None),
    "llama-bpe": lambda: (pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]), None),
    "qwen2": lambda: (pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]), normalizers.NFC()),
}


@pytest.mark.parametrize("pre", sorted(FAMILIES))
def test_byte_level_families_match_their_tokenizer_json(tmp_path, byte_vocab, pre):
    tokens, merges = byte_vocab
    types = [3 if t in SPECIALS else 1 for t in tokens]
    gf = write_vocab_gguf(tmp_path / "v.gguf", tokens, types, model="gpt2", pre=pre, merges=merges,
                          eos=tokens.index("<|im_end|>"))
    ours = from_gguf(gf)
    ref = _reference(tokens, merges, *FAMILIES[pre]())
    texts = TEXTS + ["cafe\u0301 (e + combining accent: NFC matters for qwen2)"]
    for text in texts:
        want = ref.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == want, (pre, text)
        assert ours.decode(want) == ref.decode(want, skip_special_tokens=False)
    assert ours.eos_id == tokens.index("<|im_end|>") and not ours.add_bos


def test_digit_rules_differ_as_each_family_says(tmp_path, byte_vocab):
    """Hand-checked: the pieces the digits end up in, per family (independent of both references)."""
    tokens, merges = byte_vocab
    types = [3 if t in SPECIALS else 1 for t in tokens]
    pieces = {}
    for pre in FAMILIES:
        gf = write_vocab_gguf(tmp_path / f"{pre}.gguf", tokens, types, model="gpt2", pre=pre, merges=merges)
        tk = from_gguf(gf)
        pieces[pre] = [tk.decode([i]) for i in tk.encode("1234567")]
    assert all("".join(p) == "1234567" for p in pieces.values())
    assert pieces["smollm"] == pieces["qwen2"] == list("1234567")
    assert max(map(len, pieces["llama-bpe"])) <= 3 and pieces["llama-bpe"][0] in ("123", "12", "1")
    assert any(len(p) > 3 for p in pieces["gpt-2"])  # the corpus teaches "1234567" (or a 4+ digit part) whole


def test_byte_level_matches_transformers_gguf_reader(tmp_path, byte_vocab):
    """transformers builds its own tokenizer from the same file; where it follows `pre` (Llama-3, Qwen2, GPT-2) the
    ids agree. (It has no rule for `smollm`'s digit split, so that one is checked against tokenizer.json only.)"""
    pytest.importorskip("transformers")
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    tokens, merges = byte_vocab
    types = [3 if t in SPECIALS else 1 for t in tokens]
    for pre in ("gpt-2", "llama-bpe", "qwen2"):
        path = tmp_path / f"{pre}.gguf"
        ours = from_gguf(write_vocab_gguf(path, tokens, types, model="gpt2", pre=pre, merges=merges))
        arch, tok_dict, _ = get_gguf_tokenizer(str(path))
        theirs, _ = convert_gguf_tokenizer(arch, tok_dict)
        for text in TEXTS:
            assert ours.encode(text) == theirs.encode(text, add_special_tokens=False).ids, (pre, text)


def _spm_vocab():
    """A SentencePiece-style BPE vocabulary: <unk> <s> </s>, 256 byte pieces, then pieces by falling score (the
    order a tokenizers BPE trainer learned them in, over "▁"-joined words)."""
    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False)
    tk.train_from_iterator(CORPUS, trainer)
    learned = sorted(tk.get_vocab().items(), key=lambda kv: kv[1])
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    for rank, (piece, _) in enumerate(learned):
        tokens.append(piece)
        types.append(1)
        scores.append(-float(rank))
    return tokens, types, scores


def test_sentencepiece_llama2_matches_transformers(tmp_path):
    pytest.importorskip("transformers")
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    tokens, types, scores = _spm_vocab()
    gf = write_vocab_gguf(tmp_path / "spm.gguf", tokens, types, model="llama", scores=scores, eos=2, bos=1)
    ours = from_gguf(gf)
    vocab = {t: i for i, t in enumerate(tokens)}
    ref = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab, dict(zip(tokens, scores))))
    # texts that do not start with a space: there transformers' Metaspace adds no dummy prefix where
    # SentencePiece (and llama.cpp, and ours) always does
    for text in [t for t in TEXTS if not t[0].isspace()] + ["x\u00e9\u4e2d\U0001f600 unknown chars fall back"]:
        want = ref.encode(text, add_special_tokens=False)
        assert ours.encode(text) == want, text
        assert ours.decode(want) == ref.decode(want)
    byte_ids = ours.encode("\u0436")  # no piece for it: two byte pieces after the "▁" prefix
    assert [tokens[i] for i in byte_ids] == ["\u2581", "<0xD0>", "<0xB6>"]
    assert ours.decode(ours.encode("I'LL say 2026 things")) == "I'LL say 2026 things"
    assert ours.add_bos and ours.encode("hi", add_special_tokens=True)[0] == 1  # llama.cpp's SPM default


def test_unsupported_kinds_are_refused_by_name(tmp_path, byte_vocab):
    tokens, merges = byte_vocab
    types = [1] * len(tokens)
    with pytest.raises(ReadmeJaxError, match="pre-tokenizer 'deepseek-llm' is not supported"):
        from_gguf(write_vocab_gguf(tmp_path / "a.gguf", tokens, types, model="gpt2", pre="deepseek-llm",
                                   merges=merges))
    with pytest.raises(ReadmeJaxError, match="pre-tokenizer missing is not supported"):
        from_gguf(write_vocab_gguf(tmp_path / "b.gguf", tokens, types, model="gpt2", merges=merges))
    with pytest.raises(ReadmeJaxError, match="tokenizer model 'bert' is not supported"):
        from_gguf(write_vocab_gguf(tmp_path / "c.gguf", tokens, types, model="bert"))
    with pytest.raises(ReadmeJaxError, match="needs tokenizer.ggml.scores"):
        from_gguf(write_vocab_gguf(tmp_path / "d.gguf", tokens, types, model="llama"))
