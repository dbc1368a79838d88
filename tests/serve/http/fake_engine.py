"""A mock engine for the HTTP layer's own tests (the scheduler loop, back-pressure, protocol): the real engine's interface, a byte tokenizer and a scripted output; tests/serve/http/test_real_engine.py runs the server over the real one."""

import dataclasses
import time

from readme_jax.errors import ReadmeJaxError


@dataclasses.dataclass
class TokenEvent:
    request_id: str
    token_id: int | None
    finished: bool
    finish_reason: str | None = None
    error: str | None = None


class ByteTok:
    """id = byte + 1; id 0 = EOS."""
    eos_ids = (0,)
    vocab_size = 257
    chat_template = "x"

    def encode(self, text, add_special_tokens=False):
        return [b + 1 for b in text.encode()]

    def decode(self, ids, skip_special_tokens=False):
        return bytes(i - 1 for i in ids if i > 0).decode("utf-8", errors="replace")

    def apply_chat(self, messages, **kw):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


class FakeEngine:
    model_name = "fake"
    context = 256
    num_experts = 4
    slots = 4

    def __init__(self, max_seqs=4, step_s=0.002, text="héllo wörld ✓ "):
        self.tokenizer = ByteTok()
        self.max_seqs, self.step_s = max_seqs, step_s
        self.script = self.tokenizer.encode(text)
        self.waiting, self.running, self.aborted = [], {}, set()
        self.iterations = 0

    def submit(self, prompt_ids, params, request_id=None):
        if not prompt_ids:
            raise ReadmeJaxError("empty prompt")
        if len(prompt_ids) + params.max_new_tokens > self.context:
            raise ReadmeJaxError("too long")
        self.waiting.append([request_id, params, 0])
        return request_id

    def abort(self, rid):
        self.aborted.add(rid)
        return True

    def has_work(self):
        return bool(self.waiting or self.running or self.aborted)

    def num_waiting(self):
        return len(self.waiting)

    def num_running(self):
        return len(self.running)

    def step(self):
        time.sleep(self.step_s)
        self.iterations += 1
        events = []
        for rid in list(self.aborted):
            self.aborted.discard(rid)
            self.waiting = [w for w in self.waiting if w[0] != rid]
            if self.running.pop(rid, None) is not None or True:
                events.append(TokenEvent(rid, None, True, "abort"))
        while self.waiting and len(self.running) < self.max_seqs:
            w = self.waiting.pop(0)
            self.running[w[0]] = w
        for rid, w in list(self.running.items()):
            params, i = w[1], w[2]
            tok = self.script[i % len(self.script)]
            w[2] += 1
            done = w[2] >= params.max_new_tokens
            events.append(TokenEvent(rid, tok, done, "length" if done else None))
            if done:
                del self.running[rid]
        return events

    def stats(self):
        return {"hits": self.iterations, "misses": 0, "hit_ratio": 1.0, "bytes_moved": 0, "stall_s": 0.0,
                "iterations": self.iterations}

    def slot_table(self):
        return {"slots": [0, 1, 2, 3], "resident": [0, 1, 2, 3], "num_experts": 4}

    def generate(self, prompts, max_new_tokens=32, temperature=0.0, top_k=None, top_p=None, seed=0):
        ids = [self.script[i % len(self.script)] for i in range(max_new_tokens)]
        return [self.tokenizer.decode(ids) for _ in prompts]
