"""Incremental detokenisation with stop strings: token ids in, text deltas out, UTF-8 safe.

Decoding one token at a time is wrong for byte-level BPE: a multi-byte character can span tokens, and decoding its
first byte alone gives U+FFFD. So each step decodes a short window twice, ``ids[prefix:read]`` and
``ids[prefix:]``, and emits only what the second adds; while the new text ends in U+FFFD (an unfinished character)
the delta is held back. The window restarts at the last emitted token, so the cost per token stays constant.

Stop strings: emitted text never contains one, and a tail that could still grow into one is held back, so a stop
always begins inside the held text; the text before it is emitted and generation ends ("stop").
"""

REPLACEMENT = "\ufffd"


class IncrementalText:
    def __init__(self, tokenizer, stop: tuple[str, ...] = (), skip_ids=()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.skip_ids = frozenset(int(i) for i in skip_ids)
        self.ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # tokens whose text has been released (into _held or out)
        self._held = ""  # released by the tokenizer, kept back because a stop string may start in it
        self.text = ""  # everything emitted so far
        self.stopped = False

    def add(self, token_id: int) -> str:
        """The text this token adds ("" while it is held back). After a stop string, always ""."""
        if self.stopped or int(token_id) in self.skip_ids:
            return ""
        self.ids.append(int(token_id))
        before = self.tokenizer.decode(self.ids[self._prefix:self._read])
        after = self.tokenizer.decode(self.ids[self._prefix:])
        if after.endswith(REPLACEMENT) or len(after) < len(before):
            return ""  # an unfinished character: wait for the next token
        self._prefix, self._read = self._read, len(self.ids)
        return self._release(after[len(before):])

    def _release(self, delta: str, final: bool = False) -> str:
        pending = self._held + delta
        if not self.stop:
            self._held = ""
            return self._emit(pending)
        cut = min((i for i in (pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return self._emit(pending[:cut])
        keep = 0 if final else max((k for s in self.stop for k in range(min(len(s) - 1, len(pending)), 0, -1)
                    if s.startswith(pending[len(pending) - k:])), default=0)
        self._held = pending[len(pending) - keep:] if keep else ""
        return self._emit(pending[:len(pending) - keep])

    def flush(self) -> str:
        """At the end of generation: the held-back text (an unfinished character decodes as U+FFFD)."""
        if self.stopped:
            return ""
        window = self.ids[self._prefix:]
        tail = self.tokenizer.decode(window)[len(self.tokenizer.decode(self.ids[self._prefix:self._read])):]
        self._prefix = self._read = len(self.ids)
        return self._release(tail, final=True)

    def _emit(self, text: str) -> str:
        self.text += text
        return text
