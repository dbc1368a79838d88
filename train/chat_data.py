"""Chat rows for the training stream (``--set chat_every=k``, beyond the paper).

Tuning on raw domain text never shows the model its chat template. The demo's tuned MoE and tuned pruned model
then stop answering the way the instruct model does: their greedy answers to chat prompts start differently,
or are empty (``docs/pipeline.md``, agreement on chat prompts). A chat row gives the expert stage what the dense
model does in a chat. It is a train-split excerpt inside the instruction ``readme_jax.chat_eval`` uses (that
measure reads the held-out split, so the two never share text), wrapped in the chat template, followed by the
dense model's greedy answer. With ``expert_loss=lm`` the stage learns that answer (sequence-level
distillation); with ``kd`` or ``mix`` it learns the dense distribution at every position of the row.

The pool is built once per work folder and saved atomically (``<workdir>/chat_pool/``), so a resumed run and
the pruned baseline train on the same rows. It is rebuilt only when what it was built from changes.
"""

import json
from pathlib import Path

import numpy as np

from readme_jax import atomic
from readme_jax.errors import ReadmeJaxError

POOL_DIR = "chat_pool"
EXCERPT_CHARS = 600  # as the held-out measure; shortened until prompt + answer fit the sequence length
MIN_EXCERPT_CHARS = 40
GENERATE_CHUNK = 16  # prompts per generation call (the prefill packs a chunk into one row)


def chat_prompts(tokenizer, domains, per_domain: int, room: int) -> list[list[int]]:
    """Token ids of the chat prompts, domain after domain, each at most ``room`` tokens (a long excerpt is cut
    to 80% of its characters until it fits; one that cannot fit is left out)."""
    from readme_jax.chat_eval import INSTRUCTION, excerpts

    if not tokenizer.chat_template:
        raise ReadmeJaxError("chat_every needs a model with a chat template (an instruct model)")
    out = []
    for name, texts in excerpts(domains, per_domain, EXCERPT_CHARS, split="train").items():
        for passage in texts:
            while len(passage) >= MIN_EXCERPT_CHARS:
                text = tokenizer.apply_chat(INSTRUCTION.format(domain=name, passage=passage))
                ids = tokenizer.encode(text, add_special_tokens=True)
                if len(ids) <= room:
                    out.append(ids)
                    break
                passage = passage[:int(len(passage) * 0.8)]
    if not out:
        raise ReadmeJaxError(f"no chat prompt fits {room} tokens; raise seq_len or lower chat_answer_tokens")
    return out


def build_pool(lm, prompts: list[list[int]], seq_len: int, answer_tokens: int, progress: bool = True):
    """(tokens [C, L], valid [C, L]): each prompt followed by ``lm``'s greedy answer (EOS included when it
    comes), right-padded to L = ``seq_len``; ``valid`` marks the real tokens."""
    from tqdm import tqdm

    from readme_jax.generate import SamplingParams

    eos = set(lm.eos_ids)
    tokens = np.full((len(prompts), seq_len), lm.tokenizer.pad_id, np.int32)
    valid = np.zeros((len(prompts), seq_len), bool)
    bar = tqdm(total=len(prompts), desc="chat rows (dense answers)", unit="prompt", disable=not progress)
    for start in range(0, len(prompts), GENERATE_CHUNK):
        chunk = prompts[start:start + GENERATE_CHUNK]
        for row, (prompt, answer) in enumerate(zip(chunk, lm.generate_ids(chunk, SamplingParams(answer_tokens))),
                                               start):
            stop = next((i for i, t in enumerate(answer) if t in eos), None)
            seq = list(prompt) + list(answer[:stop + 1] if stop is not None else answer)
            tokens[row, :len(seq)] = seq
            valid[row, :len(seq)] = True
        bar.update(len(chunk))
    bar.close()
    return tokens, valid


def load_or_build(workdir: Path, folder: Path, parts: dict, domains, seq_len: int, per_domain: int,
                  answer_tokens: int, progress: bool = True):
    """The work folder's chat pool (tokens, valid), built with the dense model of ``folder`` when missing or
    built from other settings. Call on every process; only the primary builds and writes it."""
    from train import sharding

    if not 1 <= answer_tokens < seq_len:
        raise ReadmeJaxError(f"chat_answer_tokens={answer_tokens} must be in [1, seq_len={seq_len})")
    manifest = {"source": str(Path(folder).resolve()), "domains": [d.name for d in domains], "seq_len": seq_len,
                "per_domain": per_domain, "answer_tokens": answer_tokens, "excerpt_chars": EXCERPT_CHARS}
    out = Path(workdir) / POOL_DIR
    if sharding.is_primary() and _manifest(out) != manifest:
        from readme_jax.lm import LM
        from readme_jax.moe_io import read_moe_folder
        from readme_jax.weights import build_model

        prompts = chat_prompts(parts["tokenizer"], domains, per_domain, seq_len - answer_tokens)
        dense = read_moe_folder(folder)
        lm = LM(build_model(dense["cfg"], dense["dense_pure"]), parts["tokenizer"], source=str(folder))
        tokens, valid = build_pool(lm, prompts, seq_len, answer_tokens, progress)
        with atomic.atomic_folder(out) as tmp:
            np.savez(tmp / "pool.npz", tokens=tokens, valid=valid)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if progress:
            print(f"chat rows: {len(tokens)} prompts answered by the dense model, {int(valid.sum()):,} tokens "
                  f"-> {out}")
    sharding.barrier("readme-jax: chat pool")
    if _manifest(out) != manifest:
        raise ReadmeJaxError(f"{out}: the chat pool does not match this run's settings")
    with np.load(out / "pool.npz") as data:
        return data["tokens"], data["valid"]


def _manifest(folder: Path):
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
