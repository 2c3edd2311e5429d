"""The OpenAI chat-completions wire format: request validation, response and error bodies.

Pure functions on dicts, so every rule about what a client may send is in one place and
testable without a server. Errors carry the status code and the OpenAI error shape
(`{"error": {"message", "type", "param", "code"}}`) that OpenAI clients know how to raise.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from prefloop.data.formats import RecordError, template_fields
from prefloop.sampling import Sample, SamplingParams

MAX_N = 16
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
ROLES = ("system", "user", "assistant", "tool", "developer")


class APIError(Exception):
    """An error returned to the client as an OpenAI-style body with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    params: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    conversation_id: str | None = None
    extra: dict = field(default_factory=dict)

    def logged_params(self) -> dict:
        p = self.params
        return {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_new_tokens, "n": self.n,
                "stop": list(p.stop), "seed": p.seed}


def _number(body: dict, name: str, default, low: float, high: float, kind=float):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise APIError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {value!r}", name)
    if not low <= value <= high:
        raise APIError(400, f"'{name}' is {value}; it must be between {low} and {high}", name)
    return kind(value)


def _content_text(content, index: int) -> str:
    """Message content as text: a string, or a list of text parts (other part types are refused)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{index}].content: only text parts are supported by this server",
                               f"messages[{index}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"messages[{index}].content must be a string or a list of text parts", f"messages[{index}].content")


def parse_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        try:  # tool calls, tool-result ids, names, reasoning: kept for the chat template
            fields = template_fields(m, role, f"messages[{i}]")
        except RecordError as err:
            raise APIError(400, f"{err.field}: {err.message}; {err.suggestion}", err.field) from err
        out.append({"role": role, "content": _content_text(m.get("content") or "", i), **fields})
    return out


def parse_chat_request(body, served_model: str, max_tokens_limit: int) -> ChatRequest:
    """Validate a decoded JSON body; raises APIError (4xx) naming the offending field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required", "model")
    if model != served_model:
        raise APIError(404, f"The model `{model}` does not exist; this server serves `{served_model}`", "model",
                       "model_not_found")
    messages = parse_messages(body.get("messages"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _number({name: max_tokens}, name, max_tokens_limit, 1, float("inf"), int)
    if max_tokens > max_tokens_limit:
        raise APIError(400, f"'{name}' is {max_tokens}, above this server's limit of {max_tokens_limit} "
                            f"(prefloop serve --max-tokens-limit)", name)
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP:
        raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOP} strings", "stop")
    logprobs = bool(body.get("logprobs") or False)
    top_logprobs = _number(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, int)
    if top_logprobs and not logprobs:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, f"'seed' must be an integer, got {seed!r}", "seed")
    stream_options = body.get("stream_options") or {}
    conversation_id = body.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise APIError(400, "'conversation_id' must be a string", "conversation_id")
    params = SamplingParams(
        max_new_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1e-9,
        stop=tuple(s for s in stop if s),
        seed=seed,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )
    return ChatRequest(
        model=model,
        messages=messages,
        params=params,
        n=_number(body, "n", 1, 1, MAX_N, int),
        stream=bool(body.get("stream") or False),
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
        conversation_id=conversation_id,
    )


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, samples: list[Sample]) -> dict:
    completion = sum(len(s.token_ids) for s in samples)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _logprobs_body(entries) -> dict | None:
    return None if entries is None else {"content": [e.to_openai() for e in entries], "refusal": None}


def completion_body(cid: str, model: str, prompt_tokens: int, samples: list[Sample], extras: list[dict]) -> dict:
    """A `chat.completion` object; `extras[i]` adds prefloop fields (e.g. interaction_id) to choice i."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": s.text}, "finish_reason": s.finish_reason,
             "logprobs": _logprobs_body(s.logprobs), **extras[i]}
            for i, s in enumerate(samples)
        ],
        "usage": usage(prompt_tokens, samples),
    }


def chunk_body(cid: str, model: str, created: int, index: int, delta: dict, finish_reason=None, logprobs=None,
               extra: dict | None = None) -> dict:
    """One `chat.completion.chunk` for a stream."""
    choice = {"index": index, "delta": delta, "logprobs": _logprobs_body(logprobs), "finish_reason": finish_reason}
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{**choice, **(extra or {})}]}
