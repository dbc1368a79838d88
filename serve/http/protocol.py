"""OpenAI request bodies -> a validated ``Job`` request, and the OpenAI error envelope.

Validation is written out by hand rather than through pydantic so that every refusal names the field and the
value in the message, ``true`` never passes for an integer, and a field the API defines but the engine does not
implement is refused (400) exactly when it would change the answer, and ignored when it would not (``user``,
``logprobs: null``, ``repetition_penalty: 1.0`` that the vLLM bench client sends). Unknown fields are ignored and
returned to the caller for logging, as vLLM does.
"""

import dataclasses
import json
import math

MAX_STOP = 4  # OpenAI: up to 4 stop sequences
MAX_STOP_CHARS = 256


class APIError(Exception):
    """An HTTP error answered with ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.kind)


def error_body(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


@dataclasses.dataclass(frozen=True)
class Job:
    """One validated generation request, before tokenisation of its prompt."""

    chat: bool
    prompt: object  # str, list[int] (completions) or list of {"role", "content"} (chat)
    max_tokens: int | None  # None: what the context leaves after the prompt
    max_tokens_key: str  # the field it came from, for error messages
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    ignored: tuple[str, ...]  # unknown fields, for the log


def parse_json(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column "
                            f"{exc.colno}") from None
    except RecursionError:
        raise APIError(400, "the request body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, not {_kind(body)}")
    return body


def _no_constant(name):
    raise APIError(400, f"the request body is not valid JSON: {name} is not a JSON number")


def _kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _int(body, key, default, low=None, high=None):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{key}' must be an integer, got {_kind(value)}", key)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise APIError(400, f"'{key}'={value} must be {bounds}", key)
    return value


def _number(body, key, default, low, high, low_open=False):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(400, f"'{key}' must be a number, got {_kind(value)}", key)
    if value > high or value < low or (low_open and value == low):
        raise APIError(400, f"'{key}'={value} must be in {'(' if low_open else '['}{low}, {high}]", key)
    return float(value)


def _bool(body, key, default=False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"'{key}' must be a boolean, got {_kind(value)}", key)
    return value


def _refuse_unless(body, key, allowed, why="is not supported by this server"):
    """400 when ``key`` is present with a value outside ``allowed`` (values that would change the answer)."""
    if key in body and body[key] not in allowed:
        raise APIError(400, f"'{key}'={_short(body[key])} {why} (accepted: {', '.join(map(_short, allowed))})", key)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _stop(body) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise APIError(400, f"'stop' must be a string or an array of strings, got {_kind(value)}", "stop")
    if len(stops) > MAX_STOP:
        raise APIError(400, f"'stop' has {len(stops)} sequences; at most {MAX_STOP} are allowed", "stop")
    for s in stops:
        if not s:
            raise APIError(400, "'stop' sequences must not be empty", "stop")
        if len(s) > MAX_STOP_CHARS:
            raise APIError(400, f"a 'stop' sequence has {len(s)} characters; at most {MAX_STOP_CHARS}", "stop")
    return tuple(dict.fromkeys(stops))


def _prompt(body):
    if "prompt" not in body:
        raise APIError(400, "'prompt' is required", "prompt")
    value = body["prompt"]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # a batch of one prompt
    if isinstance(value, str):
        if not value:
            raise APIError(400, "'prompt' is empty: at least one token is needed", "prompt")
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return list(value)
    if isinstance(value, list) and len(value) > 1 and all(isinstance(p, (str, list)) for p in value):
        raise APIError(400, f"'prompt' holds {len(value)} prompts; this server takes one prompt per request", "prompt")
    raise APIError(400, "'prompt' must be a non-empty string or a non-empty array of token ids", "prompt")


ROLES = ("system", "user", "assistant")


def _messages(body) -> list[dict]:
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise APIError(400, "'messages' must be a non-empty array", "messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"'{where}' must be an object, got {_kind(message)}", where)
        role = message.get("role")
        if role not in ROLES:
            raise APIError(400, f"'{where}.role'={_short(role)} must be one of {', '.join(ROLES)}", where)
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text
            texts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise APIError(400, f"'{where}.content' parts must be {{\"type\": \"text\", \"text\": ...}}; "
                                        "other kinds are not supported", where)
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise APIError(400, f"'{where}.content' must be a string, got {_kind(content)}", where)
        for key in ("tool_calls", "function_call"):
            if message.get(key):
                raise APIError(400, f"'{where}.{key}' is not supported (no tool use)", where)
        out.append({"role": role, "content": content})
    return out


COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n",
          "user", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "ignore_eos",
          "min_tokens", "best_of"}
COMPLETION_ONLY = {"prompt", "logprobs", "echo", "suffix"}
CHAT_ONLY = {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice",
             "response_format", "parallel_tool_calls", "functions", "function_call"}


def parse_job(body: dict, chat: bool, model_name: str) -> Job:
    """Validate one request body (already a dict) of /v1/completions or /v1/chat/completions."""
    model = body.get("model")
    if not isinstance(model, str):
        raise APIError(400, f"'model' must be a string naming the model (this server has {model_name!r}), got "
                            f"{_kind(model)}", "model")
    if model != model_name:
        raise APIError(404, f"The model `{_short(model)[1:-1]}` does not exist (this server has {model_name!r})",
                       "model", "NotFoundError")
    _refuse_unless(body, "n", (1, None), "is not supported: one choice per request")
    _refuse_unless(body, "best_of", (1, None))
    for key in ("presence_penalty", "frequency_penalty"):
        _refuse_unless(body, key, (0, 0.0, None))
    _refuse_unless(body, "repetition_penalty", (1, 1.0, None))
    _refuse_unless(body, "logit_bias", ({}, None))
    _refuse_unless(body, "ignore_eos", (False, None), "is not supported: generation ends at the model's EOS")
    _refuse_unless(body, "min_tokens", (0, None))
    if chat:
        prompt = _messages(body)
        for key in ("max_tokens", "max_completion_tokens"):
            _int(body, key, None, 1)
        mt_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _int(body, mt_key, None, 1)
        _refuse_unless(body, "logprobs", (False, None))
        _refuse_unless(body, "top_logprobs", (0, None))
        for key in ("tools", "functions"):
            _refuse_unless(body, key, ([], None), "is not supported (no tool use)")
        _refuse_unless(body, "tool_choice", ("none", None), "is not supported (no tool use)")
        _refuse_unless(body, "function_call", ("none", None), "is not supported (no tool use)")
        _refuse_unless(body, "response_format", ({"type": "text"}, None))
    else:
        prompt = _prompt(body)
        mt_key, max_tokens = "max_tokens", _int(body, "max_tokens", 16, 1)
        _refuse_unless(body, "logprobs", (0, None), "is not supported (no log-probabilities)")
        _refuse_unless(body, "echo", (False, None))
        _refuse_unless(body, "suffix", (None, ""))
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise APIError(400, "'stream_options' is only allowed when 'stream' is true", "stream_options")
        if not isinstance(options, dict):
            raise APIError(400, f"'stream_options' must be an object, got {_kind(options)}", "stream_options")
        include_usage = _bool(options, "include_usage")
    top_k = _int(body, "top_k", None, -1)
    seed = _int(body, "seed", None, -(2 ** 63), 2 ** 64 - 1)
    known = COMMON | (CHAT_ONLY if chat else COMPLETION_ONLY)
    return Job(chat=chat, prompt=prompt, max_tokens=max_tokens, max_tokens_key=mt_key,
               temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
               top_k=None if top_k in (None, -1, 0) else top_k,
               top_p=_number(body, "top_p", None, 0.0, 1.0, low_open=True), seed=seed, stop=_stop(body),
               stream=stream, include_usage=include_usage,
               ignored=tuple(sorted(str(k) for k in body if k not in known)))
