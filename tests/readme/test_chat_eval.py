"""Agreement on chat answers: evaluate() with position weights, and the chat sequences built from the dense answers."""

import numpy as np
import pytest

from readme_jax import refactor
from readme_jax.chat_eval import chat_agreement, chat_blocks
from readme_jax.data import Document, Domain, split_domain
from readme_jax.errors import ReadmeJaxError
from readme_jax.evaluate import _agreed_prefix, evaluate
from readme_jax.lm import LM
from tests.helpers import ByteTokenizer, tiny_config, tiny_model


class ChatBytes(ByteTokenizer):
    """The byte tokenizer with a chat format of its own (enough to exercise the chat path)."""

    def __init__(self):
        super().__init__()
        self.chat_template = "user/assistant"

    def apply_chat(self, prompt):
        return f"<u>{prompt}<a>"


@pytest.fixture(scope="module")
def parts():
    cfg = tiny_config()
    model = tiny_model(cfg, seed=5)
    stats = np.random.default_rng(4).random((2, cfg.n_layers, cfg.d_ff))
    tokens = np.random.default_rng(6).integers(4, cfg.vocab_size, (4, 20)).astype(np.int32)
    lm = LM(model, tokenizer=ChatBytes(), source="tiny")
    return lm, refactor.domain_masks(stats, 0.5), refactor.pruned_mask(stats, 0.5), tokens


def test_all_ones_weights_change_nothing(parts):
    lm, masks, pruned, tokens = parts
    blocks = {"a": tokens[:2], "b": tokens[2:]}
    plain, _ = evaluate(lm, masks, pruned, blocks, batch_size=2, progress=False)
    ones = {k: np.ones((len(v), v.shape[1] - 1)) for k, v in blocks.items()}
    weighted, _ = evaluate(lm, masks, pruned, blocks, batch_size=2, progress=False, weights=ones)
    for key in ("perplexity", "agreement_with_dense", "kl_to_dense"):
        for kind, per in plain[key].items():
            for dom, v in per.items():
                assert weighted[key][kind][dom] == pytest.approx(v, rel=1e-9)
    assert "agreed_prefix" not in plain and set(weighted["agreed_prefix"]) == set(weighted["agreement_with_dense"])


def test_weighted_positions_are_the_only_ones_scored(parts):
    """Scoring positions 5..9 of a row equals scoring the row cut after its 11th token at those positions;
    what follows the weighted span (causal padding) cannot change the result."""
    lm, masks, pruned, tokens = parts
    w = np.zeros((2, tokens.shape[1] - 1))
    w[:, 5:10] = 1

    def run(toks):
        report, _ = evaluate(lm, masks, pruned, {"a": toks[:2], "b": toks[2:]}, batch_size=2, progress=False,
                             weights={"a": w, "b": w})
        return report

    base = run(tokens)
    other = tokens.copy()
    other[:, 12:] = 7  # after the last scored target (index 10)
    moved = run(other)
    for key in ("perplexity", "agreement_with_dense", "kl_to_dense", "agreed_prefix"):
        for kind, per in base[key].items():
            for dom, v in per.items():
                assert moved[key][kind][dom] == pytest.approx(v, rel=1e-6)
    # by hand for the dense perplexity of domain a: the mean NLL of targets 6..10 of its two rows
    logits = lm.logits(tokens[:2]).astype(np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp[:, 5:10], tokens[:2, 6:11, None], axis=-1)[..., 0]
    assert base["perplexity"]["dense"]["a"] == pytest.approx(float(np.exp(nll.mean())), rel=1e-4)
    assert base["perplexity"]["dense"]["a"] != pytest.approx(plain_ppl(lm, tokens[:2]), rel=1e-3)


def plain_ppl(lm, toks):
    logits = lm.logits(toks).astype(np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    return float(np.exp(-np.take_along_axis(logp[:, :-1], toks[:, 1:, None], axis=-1).mean()))


def test_agreed_prefix_counts_until_the_first_disagreement():
    w = np.array([0, 1, 1, 1, 1, 0])
    assert _agreed_prefix(np.array([0, 1, 1, 0, 1, 1]), w) == 2
    assert _agreed_prefix(np.array([0, 1, 1, 1, 1, 0]), w) == 4
    assert _agreed_prefix(np.array([1, 0, 1, 1, 1, 1]), w) == 0


def test_all_zero_weights_are_refused(parts):
    lm, masks, pruned, tokens = parts
    zero = np.zeros((2, tokens.shape[1] - 1))
    with pytest.raises(ReadmeJaxError, match="no position to score"):
        evaluate(lm, masks, pruned, {"a": tokens[:2], "b": tokens[2:]}, batch_size=2, progress=False,
                 weights={"a": zero, "b": zero})


def _domain(name, n):
    texts = [f"{name} line {i}\nsecond line of {name} {i}\n" for i in range(n)]
    return Domain(name, "d", "l", lambda: None, lambda: [Document(f"{name}/{i}", t) for i, t in enumerate(texts)])


def test_chat_sequences_are_prompt_plus_the_dense_greedy_answer(parts):
    lm, masks, pruned, _ = parts
    texts = {"a": ["first text", "second, longer text"], "b": ["third"]}
    blocks, weights, answers = chat_blocks(lm, texts, max_new_tokens=6)
    L = blocks["a"].shape[1]
    assert blocks["b"].shape[1] == L and weights["a"].shape == (2, L - 1)
    for name, rows in texts.items():
        for row, text in enumerate(rows):
            prompt = lm.encode_prompt(f"Here is an excerpt from a {name} text:\n\n{text}\n\nExplain briefly what it "
                                      "says.", chat=True)
            seq = blocks[name][row]
            assert seq[:len(prompt)].tolist() == prompt
            w = weights[name][row]
            first, n = int(np.argmax(w)), int(w.sum())
            assert first == len(prompt) - 1 and 1 <= n <= 6 and w[first:first + n].all()
            # the answer is the dense model's greedy continuation: each answer token is the argmax after its prefix
            logits = lm.logits(seq[None, :len(prompt) + n - 1])[0]
            np.testing.assert_array_equal(logits[len(prompt) - 1:].argmax(-1), seq[len(prompt):len(prompt) + n])
            assert lm.eos_ids[0] not in seq[len(prompt):len(prompt) + n - 1].tolist()


def test_chat_agreement_reports_every_kind(parts):
    lm, masks, pruned, _ = parts
    domains = [_domain("a", 30), _domain("b", 30)]
    assert all(len(split_domain(d).heldout) >= 2 for d in domains)
    chat = chat_agreement(lm, masks, pruned, domains, per_domain=2, max_new_tokens=4, chars=40, progress=False)
    assert chat["prompts_per_domain"] == {"a": 2, "b": 2}
    assert set(chat["agreement_with_dense"]) == {"pruned_dense", "moe_oracle", "moe_domain"}
    for kind, per in chat["agreed_prefix"].items():
        assert all(0 <= v <= 4 for v in per.values())
        assert all(0 <= v <= 1 for v in chat["agreement_with_dense"][kind].values())
    with pytest.raises(ReadmeJaxError, match="positive counts"):
        chat_agreement(lm, masks, pruned, domains, per_domain=0)


def test_a_tokenizer_without_chat_format_is_refused(parts):
    _, masks, pruned, _ = parts
    plain = LM(tiny_model(tiny_config(), seed=5), tokenizer=ByteTokenizer(), source="plain")
    with pytest.raises(ReadmeJaxError, match="no chat template"):
        chat_blocks(plain, {"a": ["x"]}, max_new_tokens=2)
