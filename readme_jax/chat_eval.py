"""Agreement with the dense model on chat-formatted prompts: does tuning keep the instruct model's behaviour?

Held-out perplexity says how well a kind predicts the domains' raw text. A user meets an instruct model through
its chat template instead. Here each prompt is a held-out excerpt of a domain inside a short instruction, wrapped
in the model's chat template. The dense model answers it greedily, and every other kind is teacher-forced on
prompt + that answer and scored on the answer's positions only (``readme_jax.evaluate`` with weights):

- top-1 agreement with the dense model's next token, and the mean KL(dense || kind);
- the perplexity of the dense answer under each kind;
- the agreed prefix: how many answer tokens the kind's own greedy choice follows before it first differs.
"""

import numpy as np

from readme_jax.errors import ReadmeJaxError

INSTRUCTION = "Here is an excerpt from a {domain} text:\n\n{passage}\n\nExplain briefly what it says."


def excerpts(domains, per_domain: int, chars: int, split: str = "heldout") -> dict[str, list[str]]:
    """{domain: up to ``per_domain`` excerpts}: the first whole-line piece of at most ``chars`` characters of
    each document of ``split`` (held-out here; train for the training stream's chat rows, ``train.chat_data``),
    in the salted order the other held-out readers use."""
    from readme_jax.data import heldout_score, split_domain
    from readme_jax.data.heldout_text import SPLIT_SALT, text_pieces

    out = {}
    for domain in domains:
        docs = sorted(getattr(split_domain(domain), split), key=lambda doc: heldout_score(doc.id, salt=SPLIT_SALT))
        found = []
        for doc in docs:
            pieces = text_pieces(doc.text, chars)
            if pieces:
                found.append(pieces[0][1].strip())
            if len(found) == per_domain:
                break
        if not found:
            raise ReadmeJaxError(f"domain {domain.name!r} has no {split} text for a chat prompt")
        out[domain.name] = found
    return out


def chat_blocks(lm, texts: dict[str, list[str]], max_new_tokens: int):
    """(blocks {domain: int32 [n, L]}, weights {domain: [n, L-1]}, answers {domain: [str]}) for ``evaluate``.

    Every sequence is its chat prompt followed by the dense model's greedy answer (up to and including its EOS),
    right-padded to one length L, so each kind compiles once; the weights mark the positions that predict an
    answer token.
    """
    from readme_jax.generate import SamplingParams

    if not lm.tokenizer.chat_template:
        raise ReadmeJaxError(f"{lm.source}: the tokenizer has no chat template, so there is no chat format to "
                             "measure agreement on")
    names = list(texts)
    prompts = [lm.encode_prompt(INSTRUCTION.format(domain=name, passage=t), chat=True)
               for name in names for t in texts[name]]
    answers = lm.generate_ids(prompts, SamplingParams(max_new_tokens))
    eos = set(lm.eos_ids)
    seqs, spans = [], []
    for prompt, answer in zip(prompts, answers):
        answer = list(answer)
        stop = next((i for i, t in enumerate(answer) if t in eos), None)
        answer = answer[:stop + 1] if stop is not None else answer
        seqs.append(list(prompt) + answer)
        spans.append((len(prompt), len(answer)))
    L = max(len(s) for s in seqs)
    if L > lm.cfg.max_seq_len:
        raise ReadmeJaxError(f"a chat prompt and its answer need {L} tokens; the model's context is "
                             f"{lm.cfg.max_seq_len} (use fewer --chat-chars)")
    blocks, weights, decoded, i = {}, {}, {}, 0
    for name in names:
        n = len(texts[name])
        tok = np.full((n, L), lm.tokenizer.pad_id, np.int32)
        w = np.zeros((n, L - 1), np.float32)
        decoded[name] = []
        for row in range(n):
            (p, a), seq = spans[i], seqs[i]
            tok[row, :len(seq)] = seq
            w[row, p - 1:p - 1 + a] = 1.0  # position t predicts token t + 1: the answer's a tokens
            decoded[name].append(lm.tokenizer.decode([t for t in seq[p:] if t not in eos]))
            i += 1
        blocks[name], weights[name] = tok, w
    return blocks, weights, decoded


def chat_agreement(lm, masks_NEF, pruned_N1F, domains, per_domain: int = 4, max_new_tokens: int = 48,
                   chars: int = 600, batch_size: int = 4, progress: bool = True, trained=None, pruned_tuned=None):
    """The ``chat`` section of eval.json: every kind against the dense model on its own chat answers."""
    from readme_jax.evaluate import evaluate

    if per_domain < 1 or max_new_tokens < 1 or chars < 1:
        raise ReadmeJaxError(f"chat agreement needs positive counts (prompts per domain {per_domain}, answer "
                             f"tokens {max_new_tokens}, excerpt characters {chars})")
    texts = excerpts(domains, per_domain, chars)
    blocks, weights, answers = chat_blocks(lm, texts, max_new_tokens)
    report, _ = evaluate(lm, masks_NEF, pruned_N1F, blocks, batch_size=batch_size, progress=progress,
                         trained=trained, pruned_tuned=pruned_tuned, weights=weights)
    return {
        "prompts_per_domain": {name: len(t) for name, t in texts.items()},
        "answer_tokens": {name: int(w.sum()) for name, w in weights.items()},
        "max_new_tokens": max_new_tokens,
        "excerpt_chars": chars,
        "instruction": INSTRUCTION,
        "perplexity_of_dense_answers": report["perplexity"],
        "agreement_with_dense": report["agreement_with_dense"],
        "kl_to_dense": report["kl_to_dense"],
        "agreed_prefix": report["agreed_prefix"],
        "dense_answers": answers,
    }


CHAT_COLUMNS = ("kind", "top-1 agreement %", "KL(dense ‖ kind) nats", "agreed prefix, tokens",
                "perplexity of the answers")


def chat_rows(chat: dict) -> list[list[str]]:
    """Rows for ``CHAT_COLUMNS``: each measure averaged over the domains (the CLI and the report show these)."""
    agree, kl, prefix = chat["agreement_with_dense"], chat["kl_to_dense"], chat["agreed_prefix"]
    ppl = chat["perplexity_of_dense_answers"]

    def mean(per):
        return sum(per.values()) / len(per)

    rows = [["dense", "", "", "", f"{mean(ppl['dense']):.2f}"]]
    for kind in agree:
        rows.append([kind, f"{100 * mean(agree[kind]):.1f}", f"{mean(kl[kind]):.3f}", f"{mean(prefix[kind]):.1f}",
                     f"{mean(ppl[kind]):.2f}"])
    return rows


def chat_summary(chat: dict) -> str:
    n, tokens = sum(chat["prompts_per_domain"].values()), sum(chat["answer_tokens"].values())
    return (f"Agreement with the dense model on its own greedy answers to {n} chat-formatted prompts (held-out "
            f"excerpts, up to {chat['max_new_tokens']} answer tokens, {tokens} in all), scored on the answer tokens; "
            "means over the domains.")
