"""One request's answer: engine token events -> OpenAI JSON, whole or as server-sent events.

Streaming sends one chunk per generated token (its text may be "" while a character or a possible stop string is
held back; the EOS token's chunk carries only ``finish_reason``), so a client's chunk gaps are the engine's
inter-token latencies, as vLLM's ``bench serve`` assumes. ``stream_options.include_usage`` adds a last chunk with
``"choices": []`` and the token counts, then ``data: [DONE]``.

A client that goes away (its socket closes while we wait or send) aborts the request in the engine.
"""

import asyncio
import json
import math
import time

from serve.http.detok import IncrementalText
from serve.http.protocol import error_body

POLL_S = 0.25  # how often a waiting handler checks whether its client is still there


class Reply:
    def __init__(self, state, job, ticket, request):
        self.state, self.job, self.ticket, self.request = state, job, ticket, request
        eng = state.engine
        self.text = IncrementalText(eng.tokenizer, job.stop, skip_ids=eng.tokenizer.eos_ids)
        self.created = int(time.time())
        self.completion_tokens = 0
        self.finish_reason = None
        self.done = False

    async def next_message(self):
        """The next message from the engine thread, or (None, None) once the client has disconnected."""
        while True:
            try:
                return await asyncio.wait_for(self.ticket.queue.get(), POLL_S)
            except TimeoutError:
                if await self.request.is_disconnected():
                    self.abort()
                    return None, None

    def abort(self, reason: str = "abort"):
        if not self.done:
            self.done = True
            self.state.loop.abort(self.ticket.request_id, reason)

    def _step(self, event) -> str:
        """Text for one token event; sets ``finish_reason`` when it ends the request."""
        if event.error:
            raise EngineFailure(event.error)
        self.completion_tokens += 1
        delta = self.text.add(event.token_id) if event.token_id is not None else ""
        if self.text.stopped:
            self.finish_reason = "stop"
            self.abort("stop")
        elif event.finished:
            self.finish_reason = event.finish_reason
            self.done = True
            delta += self.text.flush()
        return delta

    async def events(self):
        """Yields (text delta, finish_reason or None) once per token until the request ends."""
        while self.finish_reason is None:
            kind, payload = await self.next_message()
            if kind is None:
                return
            if kind == "fatal":
                raise EngineFailure(payload)
            for event in payload or ():
                if event.finish_reason == "abort" and event.token_id is None:
                    raise EngineFailure("the request was aborted")
                delta = self._step(event)
                yield delta, self.finish_reason
                if self.finish_reason is not None:
                    return

    def usage(self) -> dict:
        prompt = len(self.ticket.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens}

    def _head(self, obj: str) -> dict:
        return {"id": self.ticket.request_id, "object": obj, "created": self.created, "model": self.state.model_name}

    async def whole(self) -> dict:
        try:  # an EngineFailure goes up to the app: a 500 in the error envelope
            async for _ in self.events():
                pass
        finally:
            self.abort()
        if self.job.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": self.text.text},
                      "finish_reason": self.finish_reason, "logprobs": None}
            return {**self._head("chat.completion"), "choices": [choice], "usage": self.usage()}
        choice = {"index": 0, "text": self.text.text, "finish_reason": self.finish_reason, "logprobs": None}
        return {**self._head("text_completion"), "choices": [choice], "usage": self.usage()}

    def _chunk(self, delta: str, finish, first: bool) -> dict:
        if self.job.chat:
            content = {"role": "assistant", "content": delta} if first else {"content": delta}
            choice = {"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}
        return {**self._head("text_completion"), "choices": [choice]}

    async def sse(self):
        first = True
        try:
            try:
                async for delta, finish in self.events():
                    yield _sse(self._chunk(delta, finish, first))
                    first = False
                if self.finish_reason is not None and self.job.include_usage:
                    obj = "chat.completion.chunk" if self.job.chat else "text_completion"
                    yield _sse({**self._head(obj), "choices": [], "usage": self.usage()})
            except EngineFailure as exc:
                yield _sse(error_body(500, str(exc), kind="server_error"))
            yield "data: [DONE]\n\n"
        finally:
            self.abort()  # a no-op after a normal end; frees the request when the client went away


class EngineFailure(Exception):
    pass


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def jsonable(value):
    """Engine stats -> strict JSON (NaN/inf -> null, numpy scalars -> Python numbers, tuples -> lists)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
