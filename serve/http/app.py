"""The FastAPI app: OpenAI's completions and chat endpoints over one ``EngineLoop``.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream``), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text) and ``GET /v1/readme/stats`` (the engine's live counters and
slot table). Every error, FastAPI's own 404/405 included, is answered in the OpenAI envelope
``{"error": {"message", "type", "param", "code"}}``; an unexpected exception becomes a 500 with its type and
message, never a traceback.
"""

import asyncio
import dataclasses
import logging
import random
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from readme_jax.errors import ReadmeJaxError
from readme_jax.generate import SamplingParams
from serve.http import streaming
from serve.http.loop import EngineLoop, QueueFull, Ticket
from serve.http.metrics import ServerMetrics
from serve.http.protocol import APIError, error_body, parse_job, parse_json

log = logging.getLogger("readme_jax.serve.http")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    max_waiting: int = 64  # requests admitted but not yet running; beyond it 429
    max_body_bytes: int = 1 << 20
    retry_after_s: int = 1
    model_name: str | None = None  # default: the engine's

    def __post_init__(self):
        for key in ("max_waiting", "max_body_bytes", "retry_after_s"):
            if getattr(self, key) < 1:
                raise ReadmeJaxError(f"{key}={getattr(self, key)} must be >= 1")


class ServerState:
    def __init__(self, engine, config: ServerConfig, source: str = ""):
        self.engine, self.config = engine, config
        self.model_name = config.model_name or engine.model_name
        self.source = source or self.model_name
        self.created = int(time.time())
        self.loop = EngineLoop(engine, config.max_waiting)
        self.metrics = ServerMetrics(self.model_name, self.loop.snapshot)
        self.loop.metrics = self.metrics
        self.draining = False


def create_app(engine, config: ServerConfig | None = None, source: str = "") -> FastAPI:
    """The app over ``engine`` (a ``serve.engine.Engine``); its engine thread starts and stops with the app."""
    state = ServerState(engine, config or ServerConfig(), source)

    async def lifespan(app):
        if not state.loop._thread.is_alive():
            state.loop.start()
        yield
        state.loop.stop()

    app = FastAPI(title="readme-jax", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        if exc.status != 429:
            state.metrics.errors.inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        state.metrics.errors.inc()
        return JSONResponse(error_body(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, exc):
        log.exception("unexpected error")
        return JSONResponse(error_body(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error"),
                            status_code=500)

    @app.get("/health")
    async def health():
        ok = state.loop.alive and not state.draining
        why = "ok" if ok else ("draining" if state.draining else f"engine loop down: {state.loop.failure}")
        return JSONResponse({"status": why}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                            "owned_by": "readme-jax", "root": state.source,
                                            "max_model_len": engine.context}]}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/readme/stats")
    async def stats():
        return streaming.jsonable(state.loop.snapshot())

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _generate(state, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _generate(state, request, chat=True)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind and not (kind == "application/json" or kind.endswith("+json")):
        raise APIError(415, f"the request body must be JSON (Content-Type: application/json), not {kind!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body has {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _prompt_ids(state: ServerState, job) -> list[int]:
    tok = state.engine.tokenizer
    if job.chat:
        try:
            text = tok.apply_chat(job.prompt)
        except ReadmeJaxError as exc:
            raise APIError(400, str(exc), "messages") from None
        except Exception as exc:  # the template itself refused the conversation (jinja raise_exception)
            raise APIError(400, f"the chat template refused these messages: {exc}", "messages") from None
        return tok.encode(text, add_special_tokens=True)
    if isinstance(job.prompt, str):
        return tok.encode(job.prompt, add_special_tokens=True)
    vocab = tok.vocab_size
    if min(job.prompt) < 0 or max(job.prompt) >= vocab:
        raise APIError(400, f"'prompt' holds token ids outside [0, {vocab})", "prompt")
    return job.prompt


def _sampling(state: ServerState, job, prompt_ids) -> SamplingParams:
    context = state.engine.context
    room = context - len(prompt_ids)
    param = job.max_tokens_key
    if room < 1:
        raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; the model's context is {context}, which "
                            "leaves no room to generate", "messages" if job.chat else "prompt")
    max_tokens = room if job.max_tokens is None else job.max_tokens
    if max_tokens > room:
        raise APIError(400, f"the prompt has {len(prompt_ids)} tokens and {param}={max_tokens}: together they "
                            f"exceed the model's context of {context} tokens", param)
    seed = random.getrandbits(31) if job.seed is None else job.seed % (1 << 31)
    try:
        return SamplingParams(max_tokens, job.temperature, job.top_k, job.top_p, seed)
    except ReadmeJaxError as exc:
        raise APIError(400, str(exc)) from None


async def _generate(state: ServerState, request: Request, chat: bool):
    arrival = time.monotonic()
    if state.draining or not state.loop.alive:
        raise APIError(503, "the server is shutting down" if state.draining else "the engine loop is down",
                       kind="service_unavailable")
    body = parse_json(await _read_body(request, state.config.max_body_bytes))
    job = parse_job(body, chat, state.model_name)
    if job.ignored:
        log.info("fields were present in the request but ignored: %s", ", ".join(job.ignored))
    prompt_ids = _prompt_ids(state, job)
    params = _sampling(state, job, prompt_ids)
    request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    ticket = Ticket(request_id, prompt_ids, params, asyncio.get_running_loop(), asyncio.Queue(), arrival)
    try:
        state.loop.submit(ticket)
    except QueueFull as exc:
        state.metrics.rejected.inc()
        raise APIError(429, f"{exc}; retry later", kind="rate_limit_exceeded",
                       headers={"Retry-After": str(state.config.retry_after_s)}) from None
    reply = streaming.Reply(state, job, ticket, request)
    kind, payload = await reply.next_message()
    if kind is None:  # the client left before the engine took the request
        return Response(status_code=499)
    if kind == "error":
        raise APIError(400, payload)
    if kind == "fatal":
        raise APIError(503, payload, kind="service_unavailable")
    if job.stream:
        return StreamingResponse(reply.sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Request-Id": request_id})
    try:
        return JSONResponse(await reply.whole())
    except streaming.EngineFailure as exc:
        return JSONResponse(error_body(500, f"generation failed: {exc}", kind="server_error"), status_code=500)
