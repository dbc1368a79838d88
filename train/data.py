"""The training stream: fixed-length blocks of every domain, mixed, deterministic and resumable.

Blocks come from the domain registry's train split through ``datasets`` (``corpus_blocks.domain_blocks``).
All domains' blocks form one pool; epoch e visits the pool in the order of a permutation seeded by
(seed, e), so consecutive batches mix domains. The whole stream is a function of (seed, position), which
is the single integer a checkpoint stores to resume the data exactly.

With chat rows (``chat_every = k``, ``train.chat_data``) every k-th row of the stream is a chat row, taken from
the chat pool in its own seeded order; the other rows are the text blocks in the order above. Row p is then
chat row p // k when p % k == k - 1, else text row (p // k) * (k - 1) + p % k: still a function of the
position. Chat rows are right-padded, so the stream also gives each row's valid tokens.
"""

import numpy as np

from readme_jax.errors import ReadmeJaxError


class BlockStream:
    """Batches of token blocks [n, L] from a pool; ``position`` counts blocks handed out so far."""

    def __init__(self, blocks: dict[str, np.ndarray], seed: int = 0, chat=None, chat_every: int = 0):
        """``chat``: None, or (tokens [C, L], valid [C, L]) of the chat pool, one row in ``chat_every``."""
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
        self._chat_order_cache: tuple[int, np.ndarray] | None = None
        self.chat_every = chat_every if chat is not None else 0
        n_text, L = self.tokens_TL.shape
        self.valid_TL = np.ones((n_text, L), bool)
        self.n_chat = 0
        if self.chat_every:
            chat_tokens, chat_valid = (np.asarray(a) for a in chat)
            if chat_tokens.shape[1:] != (L,) or chat_valid.shape != chat_tokens.shape or not len(chat_tokens):
                raise ReadmeJaxError(f"chat rows of shape {chat_tokens.shape} do not fit blocks of {L} tokens")
            self.n_chat = len(chat_tokens)
            # one pool: text blocks first, chat rows after them (indices also key the teacher's per-row cache)
            self.tokens_TL = np.concatenate([self.tokens_TL, chat_tokens.astype(np.int32)])
            self.valid_TL = np.concatenate([self.valid_TL, chat_valid.astype(bool)])

    def __len__(self) -> int:
        return len(self.tokens_TL) - self.n_chat

    def order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order_cache = (epoch, rng.permutation(len(self)))
        return self._order_cache[1]

    def _chat_order(self, epoch: int) -> np.ndarray:
        if self._chat_order_cache is None or self._chat_order_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 1])
            self._chat_order_cache = (epoch, rng.permutation(self.n_chat))
        return self._chat_order_cache[1]

    def _row(self, p: int) -> int:
        k = self.chat_every
        if k:
            q, r = divmod(p, k)
            if r == k - 1:
                epoch, i = divmod(q, self.n_chat)
                return len(self) + int(self._chat_order(epoch)[i])
            p = q * (k - 1) + r
        epoch, i = divmod(p, len(self))
        return int(self.order(epoch)[i])

    def take(self, position: int, n: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(tokens [n, L], block indices into the pool [n], new position): the next n blocks from ``position``.

        ``domain_T[indices]`` gives their domains; the indices also key per-block caches (teacher targets).
        """
        if position < 0:
            raise ReadmeJaxError(f"data position {position} must be >= 0")
        idx = np.asarray([self._row(p) for p in range(position, position + n)], np.int64)
        return self.tokens_TL[idx], idx, position + n

    def valid(self, idx) -> np.ndarray:
        """[n, L] bool: the real tokens of the rows ``idx`` (a chat row's padding is not)."""
        return self.valid_TL[np.asarray(idx)]


def load_stream(tokenizer, domains, seq_len: int, blocks_per_domain: int, doc_chars: int, seed: int,
                progress: bool = True, chat=None, chat_every: int = 0) -> BlockStream:
    """The train-split blocks of ``domains`` (a DomainSet) as a stream (with ``chat``, one row in
    ``chat_every`` from the chat pool)."""
    from readme_jax.corpus_blocks import domain_blocks

    blocks = domain_blocks(tokenizer, domains, "train", seq_len, blocks_per_domain, doc_chars or None)
    if progress:
        sizes = ", ".join(f"{d} {len(b)}" for d, b in blocks.items())
        extra = f"; every {chat_every}th row a chat row ({len(chat[0])} in the pool)" if chat is not None else ""
        print(f"training blocks of {seq_len} tokens per domain: {sizes}{extra}")
    return BlockStream(blocks, seed, chat, chat_every)
