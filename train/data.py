"""The training stream: fixed-length blocks of every domain, mixed, deterministic and resumable.

Blocks come from the domain registry's train split through ``datasets`` (``corpus_blocks.domain_blocks``).
All domains' blocks form one pool; epoch e visits the pool in the order of a permutation seeded by
(seed, e), so consecutive batches mix domains. The whole stream is a function of (seed, position), which
is the single integer a checkpoint stores to resume the data exactly.
"""

import numpy as np

from readme_jax.errors import ReadmeJaxError


class BlockStream:
    """Batches of token blocks [n, L] from a pool; ``position`` counts blocks handed out so far."""

    def __init__(self, blocks: dict[str, np.ndarray], seed: int = 0):
        if not blocks:
            raise ReadmeJaxError("no training blocks: every domain came back empty")
        lengths = {b.shape[1] for b in blocks.values()}
        if len(lengths) != 1:
            raise ReadmeJaxError(f"training blocks have different lengths {sorted(lengths)}")
        self.domains = list(blocks)
        self.tokens_TL = np.concatenate([np.asarray(b, np.int32) for b in blocks.values()])
        self.domain_T = np.concatenate([np.full(len(b), d, np.int32) for d, b in enumerate(blocks.values())])
        self.seed = seed
        self._order_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.tokens_TL)

    def order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order_cache = (epoch, rng.permutation(len(self)))
        return self._order_cache[1]

    def take(self, position: int, n: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(tokens [n, L], block indices into the pool [n], new position): the next n blocks from ``position``.

        ``domain_T[indices]`` gives their domains; the indices also key per-block caches (teacher targets).
        """
        if position < 0:
            raise ReadmeJaxError(f"data position {position} must be >= 0")
        idx = []
        for p in range(position, position + n):
            epoch, i = divmod(p, len(self))
            idx.append(self.order(epoch)[i])
        idx = np.asarray(idx)
        return self.tokens_TL[idx], idx, position + n


def load_stream(tokenizer, domains, seq_len: int, blocks_per_domain: int, doc_chars: int, seed: int,
                progress: bool = True) -> BlockStream:
    """The train-split blocks of ``domains`` (a DomainSet) as a stream."""
    from readme_jax.corpus_blocks import domain_blocks

    blocks = domain_blocks(tokenizer, domains, "train", seq_len, blocks_per_domain, doc_chars or None)
    if progress:
        sizes = ", ".join(f"{d} {len(b)}" for d, b in blocks.items())
        print(f"training blocks of {seq_len} tokens per domain: {sizes}")
    return BlockStream(blocks, seed)
