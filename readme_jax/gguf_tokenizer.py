"""The tokenizer a GGUF file describes, rebuilt with the ``tokenizers`` library.

A GGUF carries no ``tokenizer.json``: only the vocabulary (and merges or scores) plus two names,
``tokenizer.ggml.model`` (the algorithm) and ``tokenizer.ggml.pre`` (llama.cpp's name for the way text is cut
into words before the merges run). Both decide the ids, so both are followed here, and a pair we have no
faithful rule for is refused: a wrong split gives ids the model never saw, silently.

Supported:

* ``model = "gpt2"`` (byte-level BPE) with ``pre`` one of ``PRE_SPLITS``: ``gpt-2`` (GPT-2's own regex),
  ``smollm`` (every digit apart, then GPT-2's regex), ``llama-bpe`` (Llama-3's regex: digits in groups of up to
  three, letters may carry one leading non-letter), ``qwen2`` (Llama-3's regex with single digits, after NFC).
* ``model = "llama"`` (SentencePiece BPE, Llama-2 and friends): merges recovered from the scores, a "▁" prefix
  and "▁" for spaces, unknown characters as ``<0xNN>`` byte tokens.
"""

from readme_jax.errors import ReadmeJaxError

# The part of every split regex that keeps English contractions whole, case-insensitively (Llama-3, Qwen2).
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
# Llama-3's words: a letter run may start with one non-letter, non-digit, non-newline character (" x", "(x").
_LLAMA3_WORDS = r"[^\r\n\p{L}\p{N}]?\p{L}+"
# Punctuation runs keep trailing newlines; newline runs and the remaining whitespace come last.
_LLAMA3_TAIL = r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# pre name -> (digits apart first, split regex or None for GPT-2's built-in one, NFC first)
PRE_SPLITS = {
    "gpt-2": (False, None, False),
    "smollm": (True, None, False),
    "llama-bpe": (False, "|".join([_CONTRACTIONS, _LLAMA3_WORDS, r"\p{N}{1,3}", _LLAMA3_TAIL]), False),
    "qwen2": (False, "|".join([_CONTRACTIONS, _LLAMA3_WORDS, r"\p{N}", _LLAMA3_TAIL]), True),
}
MODELS = ("gpt2", "llama")

# GGUF token_type values (llama.cpp's llama_token_type)
_CONTROL, _USER_DEFINED, _BYTE = 3, 4, 6


def build(gf):
    """``(tokenizers.Tokenizer, add_bos default)`` for an opened ``GGUFFile`` (anything with ``field``/``path``)."""
    kind = gf.field("tokenizer.ggml.model")
    tokens = gf.field("tokenizer.ggml.tokens")
    if not tokens:
        raise ReadmeJaxError(f"{gf.path}: GGUF file has no tokenizer.ggml.tokens")
    types = gf.field("tokenizer.ggml.token_type") or [1] * len(tokens)
    if kind == "gpt2":
        tk = _byte_level(gf, tokens)
        add_bos = False
    elif kind == "llama":
        tk = _sentencepiece(gf, tokens, types)
        add_bos = True  # llama.cpp's default for a SentencePiece vocabulary that does not say
    else:
        raise ReadmeJaxError(f"{gf.path}: GGUF tokenizer model {kind!r} is not supported (supported: "
                             f"{', '.join(MODELS)}); load the HF checkpoint folder instead")
    from tokenizers import AddedToken

    # control tokens (<|im_start|>, <s>) are matched whole and never split; user-defined ones (<think>) too,
    # but they are ordinary text when decoding
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                           for i, t in enumerate(types) if t == _CONTROL])
    tk.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                   for i, t in enumerate(types) if t == _USER_DEFINED])
    return tk, add_bos


def _byte_level(gf, tokens):
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    pre = gf.field("tokenizer.ggml.pre")
    if pre not in PRE_SPLITS:
        shown = "missing" if pre is None else repr(pre)
        raise ReadmeJaxError(f"{gf.path}: GGUF pre-tokenizer {shown} is not supported for a byte-level BPE "
                             f"vocabulary (supported: {', '.join(PRE_SPLITS)}); its words would be split wrongly, "
                             "so load the HF checkpoint folder instead")
    digits_apart, regex, nfc = PRE_SPLITS[pre]
    merges = gf.field("tokenizer.ggml.merges") or []
    tk = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                merges=[tuple(m.split(" ", 1)) for m in merges]))
    if regex is None:
        steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    else:  # our own regex cuts the words; ByteLevel then only maps bytes to its printable alphabet
        steps = [pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    if digits_apart:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence(steps)
    if nfc:
        tk.normalizer = normalizers.NFC()
    tk.decoder = decoders.ByteLevel()
    return tk


def _sentencepiece(gf, tokens, types):
    from tokenizers import decoders, models, normalizers
    from tokenizers import Tokenizer as HFTokenizer

    scores = gf.field("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise ReadmeJaxError(f"{gf.path}: SentencePiece GGUF vocabulary needs tokenizer.ggml.scores, one per token")
    unk = gf.field("tokenizer.ggml.unknown_token_id")
    unk_token = tokens[int(unk)] if unk is not None else None
    tk = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=spm_merges(tokens, scores, types),
                                unk_token=unk_token, byte_fallback=True, fuse_unk=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    if gf.field("tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, normalizers.Prepend("\u2581"))  # SentencePiece's "dummy prefix", before every text
    tk.normalizer = normalizers.Sequence(steps)
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    return tk


def spm_merges(tokens, scores, types) -> list[tuple[str, str]]:
    """Merges that reproduce SentencePiece BPE: it joins, at each step, the adjacent pair whose joined piece has
    the highest score. So every split of a normal piece into two pieces of the vocabulary is a merge, ranked by
    the joined piece's score (best first; ties by id, the order SentencePiece stored them in)."""
    index = {t: i for i, t in enumerate(tokens) if types[i] == 1}  # normal pieces only: control, byte and
    found = []                                                       # user-defined pieces never merge
    for piece, i in index.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                found.append((-float(scores[i]), i, index[left], (left, right)))
    found.sort()
    return [pair for *_, pair in found]
