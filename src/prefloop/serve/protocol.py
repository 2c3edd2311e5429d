"""The OpenAI chat-completions wire format: request validation, response and error bodies.

Pure functions on dicts, so every rule about what a client may send is in one place and
testable without a server. Errors carry the status code and the OpenAI error shape
(`{"error": {"message", "type", "param", "code"}}`) that OpenAI clients know how to raise.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from prefloop.data.formats import RecordError
from prefloop.data.formats import template_fields as validated_message_fields
from prefloop.data.schema import TEMPLATE_FIELDS
from prefloop.data.template import kind_text
from prefloop.sampling import Sample, SamplingParams

MAX_N = 16
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
ROLES = ("system", "user", "assistant", "tool", "developer")
# Optional message fields a chat template may render (tool calls, tool-result id, name, reasoning);
# validated by prefloop.data.formats.template_fields and passed on only to a template that renders them.
MESSAGE_FIELDS = TEMPLATE_FIELDS
# A tool result's links to its call: templates may leave them out (Qwen2.5 does), so they are passed on
# with the tool turn without being required (the result's text itself must be rendered: see encode_chat).
TOOL_LINK_FIELDS = ("tool_call_id", "name")


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
    """A validated request. `max_tokens` is what the client asked for (None: up to what the
    context leaves); `budget` turns it into `params.max_new_tokens` once the prompt is encoded."""

    model: str
    messages: list[dict]
    params: SamplingParams
    max_tokens: int | None = None
    max_tokens_field: str = "max_tokens"
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    include_obfuscation: bool = False
    conversation_id: str | None = None
    store: bool | None = None  # None: the server's default (log when it has a store)
    tags: dict = field(default_factory=dict)  # user, safety_identifier, metadata: logged with the interaction

    def logged_params(self) -> dict:
        p = self.params
        logged = {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_new_tokens, "n": self.n,
                  "stop": list(p.stop), "seed": p.seed}
        if p.frequency_penalty or p.presence_penalty:
            logged |= {"frequency_penalty": p.frequency_penalty, "presence_penalty": p.presence_penalty}
        if p.logit_bias:
            logged["logit_bias"] = {str(t): b for t, b in p.logit_bias}
        return logged | self.tags


def _number(body: dict, name: str, default, low: float, high: float, kind=float):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise APIError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {value!r}", name)
    if not low <= value <= high:
        raise APIError(400, f"'{name}' is {value}; it must be between {low} and {high}", name)
    return kind(value)


def _flag(body: dict, name: str, default: bool | None = False) -> bool | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be true or false, got {value!r}", name)
    return value


def _text(body: dict, name: str, longest: int = 512) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > longest):
        raise APIError(400, f"'{name}' must be a string of at most {longest} characters", name)
    return value


def _content_text(content, index: int) -> str:
    """Message content as text: a string, or a list of text parts (other part types are refused)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            where = f"messages[{index}].content[{j}]"
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else None
                raise APIError(400, f"{where}: this server reads text parts only ({{'type': 'text', 'text': ...}})"
                                    + (f"; a {kind!r} part cannot be given to this model" if kind else ""), where)
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"messages[{index}].content must be a string or a list of text parts", f"messages[{index}].content")


def parse_messages(messages, template_fields: frozenset = frozenset()) -> list[dict]:
    """`{role, content, ...}` dicts for the chat template. Fields of MESSAGE_FIELDS are validated (a
    malformed tool call is a 400 naming it, e.g. `messages[1].tool_calls[0]`); `template_fields` are
    those this model's template renders: they are passed on, the others refused (400 naming the
    field), as is any field the server does not know, so nothing a client sends is silently left out
    of the prompt. A tool result's `tool_call_id`/`name` (TOOL_LINK_FIELDS) are passed on as they are."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        where = f"messages[{i}]"
        try:  # tool calls, tool-result ids, names, reasoning: well-formed and on the right turn
            fields = validated_message_fields(m, role, where)
        except RecordError as err:
            raise APIError(400, f"{err.field}: {err.message}; {err.suggestion}", err.field) from err
        message = {"role": role, "content": _content_text(m.get("content") or "", i)}
        for key, value in m.items():
            if key in ("role", "content") or (value is None and key in ("refusal", "audio")):
                continue
            if key in MESSAGE_FIELDS:
                if key not in fields:  # null or empty: nothing to render
                    continue
                if key in template_fields or (role == "tool" and key in TOOL_LINK_FIELDS):
                    message[key] = value
                    continue
                why = (f"this model's chat template does not render {kind_text(key)}, so the model would never "
                       "see it")
            else:
                why = "this server does not know this message field"
            raise APIError(400, f"{where}.{key}: {why}; send the message without it", f"{where}.{key}")
        out.append(message)
    return out


def _refuse_unless(body: dict, name: str, allowed: tuple, why: str) -> None:
    """400 unless `body[name]` is absent, null or one of `allowed`."""
    value = body.get(name)
    if value is not None and value not in allowed:
        raise APIError(400, f"'{name}' = {value!r} is not supported: {why}", name)


# Request fields this server does not honour: non-null values are refused with the reason.
_UNSUPPORTED = {
    "audio": "this server generates text only",
    "functions": "this server does not call functions or tools",
    "function_call": "this server does not call functions or tools",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "this model has no reasoning-effort setting",
    "verbosity": "this model has no verbosity setting",
    "web_search_options": "this server does not search the web",
    "moderation": "this server runs no moderation model",
    "prompt_cache_key": "this server keeps no prompt cache",
    "prompt_cache_retention": "this server keeps no prompt cache",
    "prompt_cache_options": "this server keeps no prompt cache",
}
KNOWN_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "n", "temperature", "top_p", "seed", "stop",
          "logprobs", "top_logprobs", "stream", "stream_options", "frequency_penalty", "presence_penalty",
          "logit_bias", "response_format", "tools", "tool_choice", "parallel_tool_calls", "user",
          "safety_identifier", "metadata", "store", "modalities", "service_tier", "conversation_id", *_UNSUPPORTED}


def _max_tokens(body: dict, limit: int | None) -> tuple[int | None, str]:
    given = [name for name in ("max_completion_tokens", "max_tokens") if body.get(name) is not None]
    if len(given) == 2 and body["max_tokens"] != body["max_completion_tokens"]:
        raise APIError(400, f"'max_tokens' ({body['max_tokens']}) and 'max_completion_tokens' "
                            f"({body['max_completion_tokens']}) differ; send one of them", "max_completion_tokens")
    name = given[0] if given else "max_tokens"
    value = _number(body, name, None, 1, float("inf"), int)
    if value is not None and limit is not None and value > limit:
        raise APIError(400, f"'{name}' is {value}, above this server's limit of {limit} "
                            f"(prefloop serve --max-tokens-limit)", name)
    return value, name


def _logit_bias(body: dict, vocab_size: int | None) -> tuple[tuple[int, float], ...]:
    bias = body.get("logit_bias")
    if bias is None:
        return ()
    if not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS:
        raise APIError(400, f"'logit_bias' must map token ids to numbers (at most {MAX_LOGIT_BIAS} entries)",
                       "logit_bias")
    out = []
    for key, value in bias.items():
        token = int(key) if isinstance(key, str) and key.strip().isdigit() else None
        if token is None or (vocab_size is not None and token >= vocab_size):
            raise APIError(400, f"'logit_bias' key {key!r} is not a token id of this model"
                                + (f" (0 to {vocab_size - 1})" if vocab_size else ""), "logit_bias")
        out.append((token, _number({"logit_bias": value}, "logit_bias", 0.0, -100.0, 100.0)))
    return tuple(sorted(out))


def _tags(body: dict) -> dict:
    """user, safety_identifier and metadata: kept with the logged interaction."""
    tags = {name: _text(body, name) for name in ("user", "safety_identifier") if body.get(name) is not None}
    metadata = body.get("metadata")
    if metadata is not None:
        if (not isinstance(metadata, dict) or len(metadata) > 16
                or not all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                           for k, v in metadata.items())):
            raise APIError(400, "'metadata' must be an object of at most 16 string values (keys up to 64 "
                                "characters, values up to 512)", "metadata")
        tags["metadata"] = dict(metadata)
    return tags


def _check_unsupported(body: dict) -> None:
    for name in body:
        if name not in KNOWN_FIELDS:
            raise APIError(400, f"Unrecognized request argument supplied: {name}. This server takes the OpenAI "
                                "chat-completions fields (see the README, 'prefloop serve').", name)
    for name, why in _UNSUPPORTED.items():
        _refuse_unless(body, name, (), why)
    tools = body.get("tools")
    if tools is not None and tools != []:
        raise APIError(400, "'tools' is not supported: this server does not call functions or tools", "tools")
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("none", "auto"):
        raise APIError(400, f"'tool_choice' = {choice!r} is not supported: this server does not call tools "
                            "(only 'none' or 'auto', which mean the same here)", "tool_choice")
    _flag(body, "parallel_tool_calls")  # with no tools there are no tool calls: either value holds
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise APIError(400, f"'response_format' of type {kind!r} is not supported: this server does not constrain "
                            "output to JSON; only {'type': 'text'}", "response_format")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise APIError(400, f"'modalities' = {modalities!r} is not supported: this server generates text only "
                            "(['text'])", "modalities")
    _refuse_unless(body, "service_tier", ("auto", "default"), "this server has one processing tier ('default')")


def parse_chat_request(body, served_model: str, max_tokens_limit: int | None = None, *, vocab_size: int | None = None,
                       template_fields: frozenset = frozenset()) -> ChatRequest:
    """Validate a decoded JSON body; raises APIError (4xx) naming the offending field.

    Every field the `openai` client can send is either honoured or refused with a 400 that names
    it; unknown fields are refused as the OpenAI API does. `max_tokens_limit` (None: none) caps
    an explicit `max_tokens`; `vocab_size` bounds `logit_bias` keys.
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required", "model")
    if model != served_model:
        raise APIError(404, f"The model `{model}` does not exist; this server serves `{served_model}`", "model",
                       "model_not_found")
    _check_unsupported(body)
    messages = parse_messages(body.get("messages"), template_fields)
    max_tokens, max_tokens_field = _max_tokens(body, max_tokens_limit)
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP:
        raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOP} strings", "stop")
    logprobs = _flag(body, "logprobs")
    top_logprobs = _number(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, int)
    if top_logprobs and not logprobs:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, f"'seed' must be an integer, got {seed!r}", "seed")
    if seed is not None and not SEED_MIN <= seed <= SEED_MAX:  # a 64-bit integer, as in the OpenAI API and vLLM
        raise APIError(400, f"'seed' is {seed}; it must be between {SEED_MIN} and {SEED_MAX}", "seed")
    stream = _flag(body, "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise APIError(400, "'stream_options' is only allowed with 'stream': true", "stream_options")
        unknown = sorted(set(stream_options) - {"include_usage", "include_obfuscation"}) \
            if isinstance(stream_options, dict) else ["(not an object)"]
        if unknown:
            raise APIError(400, f"'stream_options' takes include_usage and include_obfuscation; got {unknown[0]}",
                           "stream_options")
    stream_options = stream_options or {}
    conversation_id = body.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise APIError(400, "'conversation_id' must be a string", "conversation_id")
    params = SamplingParams(
        max_new_tokens=max_tokens or 0,  # set by `budget` once the prompt length is known
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1e-9,  # 0: only the most likely token
        stop=tuple(s for s in stop if s),
        seed=seed,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        logit_bias=_logit_bias(body, vocab_size),
    )
    return ChatRequest(
        model=model,
        messages=messages,
        params=params,
        max_tokens=max_tokens,
        max_tokens_field=max_tokens_field,
        n=_number(body, "n", 1, 1, MAX_N, int),
        stream=stream,
        include_usage=_flag(stream_options, "include_usage"),
        include_obfuscation=_flag(stream_options, "include_obfuscation"),
        conversation_id=conversation_id,
        store=_flag(body, "store", None),
        tags=_tags(body),
    )


def budget(req: ChatRequest, prompt_tokens: int, context_length: int | None, limit: int | None) -> int:
    """Tokens the completion may take: the request's `max_tokens`, or when it gave none, what the
    context leaves after the prompt (capped by the server's --max-tokens-limit, if any).
    Raises APIError 400 (context_length_exceeded) when the prompt and the asked tokens do not fit."""
    if context_length is None:
        if req.max_tokens is None and limit is None:
            raise APIError(400, "this model does not state its context length, so give 'max_tokens' "
                                "(or start the server with --max-tokens-limit)", "max_tokens")
        return req.max_tokens or limit
    left = context_length - prompt_tokens
    if left < 1:
        raise APIError(400, f"This model's context is {context_length} tokens and the messages take {prompt_tokens}, "
                            "leaving no room for an answer. Shorten the messages.", "messages",
                       "context_length_exceeded")
    if req.max_tokens is None:
        return left if limit is None else min(left, limit)
    if req.max_tokens > left:
        raise APIError(400, f"This model's context is {context_length} tokens; the messages take {prompt_tokens} "
                            f"and '{req.max_tokens_field}' asks for {req.max_tokens} more. Shorten the messages, "
                            f"lower '{req.max_tokens_field}', or leave it out (then the answer may use the "
                            f"{left} tokens left).", "messages", "context_length_exceeded")
    return req.max_tokens


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
