"""Downstream eval: task formats (hand-checked), metrics, bad input, and per-choice log-likelihoods against
transformers' LlamaForCausalLM on the same ids."""

import gzip
import json

import numpy as np
import pytest

from readme_jax.errors import ReadmeJaxError
from readme_jax.tasks import registry, score
from readme_jax.tasks.run import task_metrics

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()


def _save(root, folder, rows):
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "hf_datasets" / folder))


ARC = [{"id": "a", "question": "Which is wet?", "choices": {"text": ["water", "sand dune"], "label": ["A", "B"]},
        "answerKey": "A"},
       {"id": "b", "question": "Pick two.", "choices": {"text": ["one", "two", "three"], "label": ["1", "2", "3"]},
        "answerKey": "2"}]


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "evalsets"
    _save(root, registry.FOLDERS["arc_easy"], ARC)
    _save(root, registry.FOLDERS["hellaswag"], [
        {"ind": 1, "activity_label": "Roof", "ctx_a": "A man is on a roof.", "ctx_b": "he", "ctx": "",
         "endings": ["falls [title] off.", "sits  down."], "source_id": "s", "split": "val", "split_type": "x",
         "label": "1"}])
    _save(root, registry.FOLDERS["piqa"], [{"goal": "Open a jar", "sol1": "twist", "sol2": "stare", "label": 0}])
    _save(root, registry.FOLDERS["winogrande"], [
        {"sentence": "Ann beat Bo because _ was fast.", "option1": "Ann", "option2": "Bo", "answer": "1"}])
    for subject in registry.MMLU_SUBJECTS:
        row = {"question": f"Q about {subject}? ", "subject": subject, "choices": ["w", "x", "y", "z"], "answer": 2}
        _save(root, f"{registry.FOLDERS['mmlu']}/{subject}/dev", [row] * 5)
        _save(root, f"{registry.FOLDERS['mmlu']}/{subject}/test", [row, {**row, "answer": 0}])
    lam = root / registry.LAMBADA_FILE
    lam.parent.mkdir(parents=True)
    with gzip.open(lam, "wt") as fh:
        for ctx, word in [("The cat sat on the", " mat"), ("She said hello to", " Bob")]:
            fh.write(json.dumps({"request": {"context": ctx, "continuation": word}}) + "\n")
    return root


def test_formats_follow_the_harness(data_root):
    arc = registry.load_docs("arc_easy", data_root)
    assert arc[0].requests == (("Question: Which is wet?\nAnswer:", " water"), ("Question: Which is wet?\nAnswer:",
                                                                                 " sand dune"))
    assert (arc[0].gold, arc[1].gold) == (0, 1)  # answerKey "2" among labels "1".."3"
    hs = registry.load_docs("hellaswag", data_root)[0]
    assert hs.requests[0][0] == "Roof: A man is on a roof. He" and hs.choices == ("falls. off.", "sits down.")
    assert hs.gold == 1
    assert registry.load_docs("piqa", data_root)[0].requests[1] == ("Question: Open a jar\nAnswer:", " stare")
    wg = registry.load_docs("winogrande", data_root)[0]
    assert wg.requests == (("Ann beat Bo because Ann", " was fast."), ("Ann beat Bo because Bo", " was fast."))
    assert wg.gold == 0
    mmlu = registry.load_docs("mmlu", data_root)
    assert len(mmlu) == 2 * 57 and mmlu[0].group == "abstract_algebra"
    ctx, cont = mmlu[0].requests[2]
    shot = "Q about abstract_algebra?\nA. w\nB. x\nC. y\nD. z\nAnswer:"
    assert ctx == ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                   + (shot + " C\n\n") * 5 + shot) and cont == " C"
    assert len(registry.load_docs("mmlu", data_root, limit=10)) == 10
    lam = registry.load_docs("lambada", data_root)
    assert lam[1].requests == (("She said hello to", " Bob"),) and len(registry.load_docs("lambada", data_root, limit=1)) == 1


def test_bad_input_is_one_clear_error(data_root, tmp_path):
    with pytest.raises(ReadmeJaxError, match="unknown task 'arc'"):
        registry.parse_tasks("arc_easy,arc")
    with pytest.raises(ReadmeJaxError, match="task arc_challenge: no data folder"):
        registry.load_docs("arc_challenge", data_root)
    _save(tmp_path / "bad", "arc", [{**ARC[0], "answerKey": "E"}])
    with pytest.raises(ReadmeJaxError, match="row 0's answerKey 'E' is not among its labels"):
        registry.load_docs("arc_easy", data_root, override=str(tmp_path / "bad/hf_datasets/arc"))
    _save(tmp_path / "bad", "wg", [{"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}])
    with pytest.raises(ReadmeJaxError, match="winogrande: row 0 needs a sentence with '_'"):
        registry.load_docs("winogrande", data_root, override=str(tmp_path / "bad/hf_datasets/wg"))
    _save(tmp_path / "bad", "piqa", [{"goal": "g", "sol1": "a", "label": 0}])
    with pytest.raises(ReadmeJaxError, match="piqa: row 0 has no valid 'sol2'"):
        registry.load_docs("piqa", data_root, override=str(tmp_path / "bad/hf_datasets/piqa"))
    (tmp_path / "junk.gz").write_bytes(b"not gzip")
    with pytest.raises(ReadmeJaxError, match="not a gzipped JSON-lines request file"):
        registry.load_docs("lambada", data_root, override=str(tmp_path / "junk.gz"))


def test_metrics_by_hand():
    docs = [registry.Doc((("q", " a"), ("q", " bbbbbb")), 1, ("a", "bbbbbb")),
            registry.Doc((("q", " a"), ("q", " bb")), 0, ("a", "bb"))]
    # doc 0: raw argmax picks "a" (-1 > -3), normed picks "bbbbbb" (-0.5 > -1); doc 1: both pick "a"
    m = task_metrics("arc_easy", docs, [-1.0, -3.0, -0.5, -4.0], [False] * 4)
    assert m["acc"]["value"] == 0.5 and m["acc_norm"]["value"] == 1.0
    assert m["acc"]["stderr"] == pytest.approx(np.sqrt(0.25 / 1))
    lam = task_metrics("lambada", [registry.Doc((("c", " w"),), 0, (" w",))] * 2, [-1.0, -3.0], [True, False])
    assert lam["acc"]["value"] == 0.5 and lam["perplexity"] == pytest.approx(np.exp(2.0))


class _Tok:
    """Byte ids + 4 (ids 0..3 special), no BOS, like tests.helpers.ByteTokenizer but the real interface."""
    bos_id, add_bos, eos_id, pad_id = None, False, 3, 0

    def encode(self, text):
        return [b % 60 + 4 for b in text.encode()]


def test_encoding_moves_spaces_and_truncates_left():
    tok = _Tok()
    enc = score.encode_request(tok, "ab ", "c", max_len=64)
    assert enc.target_ids == tuple(tok.encode(" c")) and enc.input_ids == tuple(tok.encode("ab ")[:2] + tok.encode(" c")[:1])
    enc = score.encode_request(tok, "x" * 100, " yz", max_len=16)
    assert len(enc.input_ids) == 16 and enc.input_ids[-2:] == tuple(tok.encode(" yz")[:2])


def test_loglikelihoods_match_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import readme_jax
    from tests.model.test_loaders import VOCAB, tiny_tokenizer

    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=False, initializer_range=0.2, eos_token_id=258,
                                   pad_token_id=256)
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    ref.save_pretrained(tmp_path)
    tiny_tokenizer().save(tmp_path)
    lm = readme_jax.load(str(tmp_path))
    tok = lm.tokenizer
    pairs = [("Question: what is up?\nAnswer:", " the sky"), ("Question: what is up?\nAnswer:", " A"),
             ("Question: what is up?\nAnswer:", " B"), ("Ann beat Bo because Ann", " was fast."),
             ("a much longer context " * 6, " that spills into a bigger bucket"), ("short", " x")]
    encoded = [score.encode_request(tok, c, k, max_len=256) for c, k in pairs]
    got = score.score(score.Kind("dense", lm.graphdef, lm.state), encoded, tok.pad_id, progress=False)
    assert got["rows"] == 1 and got["tokens"] < got["input_tokens"]  # one packed row; shared prefixes once
    for (context, continuation), lp, greedy in zip(pairs, got["logprob"], got["greedy"]):
        ctx = tok.encode(context.rstrip(" "))  # the harness moves a context's trailing spaces to the continuation
        cont = tok.encode(context + continuation)[len(ctx):]
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(ref(ids).logits[0, :-1].double(), -1)
        targets = ids[0, 1:]
        per = logp[torch.arange(len(targets)), targets][-len(cont):]
        assert lp == pytest.approx(float(per.sum()), abs=2e-3), (context, continuation)
        assert greedy == bool((logp[-len(cont):].argmax(-1) == targets[-len(cont):]).all())


def test_the_downstream_plot_is_a_png(tmp_path):
    from readme_jax.tasks.plot import plot_downstream

    m = {"value": 0.5, "stderr": 0.1, "ci95": 0.196}
    report = {"kinds": ["dense", "moe_router"],
              "tasks": {"arc_easy": {"documents": 10, "dense": {"acc": m, "acc_norm": m}, "moe_router": {"acc": m, "acc_norm": m}},
                        "winogrande": {"documents": 10, "dense": {"acc": m}, "moe_router": {"acc": m}}}}
    png = plot_downstream(report, tmp_path / "eval" / "downstream.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list((tmp_path / "eval").glob("*.part"))
