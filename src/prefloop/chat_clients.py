"""Chat completion clients with one protocol: a local model (batched) or an OpenAI-compatible endpoint
(concurrent requests). `generate` samples candidates and `judge` asks for verdicts through it.

Protocol (what a scripted test judge implements too):
    client.name: str                      the model name recorded in outputs
    client.usage: UsageTotals             tokens spent so far
    client.adaptations: dict[str, str]    request fields the endpoint refused -> what is sent instead
                                          ("max_completion_tokens", "left out"); {} for a local model
    client.complete_many(calls) -> iterator of (index, Completion | Exception), in completion order
where each call is a `ChatCall(messages, n, params)`. Failures come back as exceptions for that
call only (after the endpoint client's retries), so one bad request never loses a whole run.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from prefloop.endpoint import UsageTotals, is_endpoint, make_client, resolve_model_name
from prefloop.errors import DataError
from prefloop.sampling import LocalGenerator, SamplingParams, TokenLogprob


@dataclass
class ChatCall:
    messages: list[dict]
    n: int = 1
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Completion:
    texts: list[str]
    finish_reasons: list[str]
    logprobs: list[list[TokenLogprob] | None]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None  # the model the endpoint says answered (its response's `model` field); None: local
    adaptations: dict[str, str] = field(default_factory=dict)  # refused fields this completion was sent without


class LocalChatClient:
    """A local model; calls are flattened into rows, sorted by prompt length and decoded `batch_size` at a time."""

    def __init__(self, generator: LocalGenerator, name: str, batch_size: int = 8):
        self.generator, self.name, self.batch_size = generator, name, max(1, batch_size)
        self.usage = UsageTotals()
        self.adaptations: dict[str, str] = {}  # a local model is sent every setting as asked

    def complete_many(self, calls: list[ChatCall]) -> Iterator[tuple[int, Completion | Exception]]:
        prompts: dict[int, list[int]] = {}
        for i, call in enumerate(calls):
            try:
                prompts[i] = self.generator.encode_chat(call.messages)
            except DataError as err:  # e.g. tool calls the chat template would drop: this call fails alone
                yield i, err
        calls_left = [i for i in range(len(calls)) if i in prompts]
        rows = sorted(((i, j) for i in calls_left for j in range(calls[i].n)), key=lambda r: len(prompts[r[0]]))
        results: dict[int, dict[int, object]] = {i: {} for i in calls_left}
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            samples = self.generator.generate([(prompts[i], calls[i].params.for_sample(j)) for i, j in chunk])
            for (i, j), sample in zip(chunk, samples):
                results[i][j] = sample
                if len(results[i]) == calls[i].n:
                    done = results.pop(i)
                    ordered = [done[k] for k in range(calls[i].n)]
                    completion = Completion([s.text for s in ordered], [s.finish_reason for s in ordered],
                                            [s.logprobs for s in ordered], len(prompts[i]),
                                            sum(len(s.token_ids) for s in ordered))
                    self.usage.add_counts(completion.prompt_tokens, completion.completion_tokens)
                    yield i, completion
        for i in [i for i in calls_left if calls[i].n == 0]:
            yield i, Completion([], [], [], len(prompts[i]), 0)


def _logprobs(choice) -> list[TokenLogprob] | None:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return [TokenLogprob(e.token, e.logprob, [(t.token, t.logprob) for t in (e.top_logprobs or [])],
                         bytes(e.bytes) if e.bytes is not None else None,
                         [bytes(t.bytes) if t.bytes is not None else t.token.encode("utf-8")
                          for t in (e.top_logprobs or [])]) for e in content]


# A 400 naming one of these request fields as unsupported is answered by asking again without it (the
# OpenAI API's reasoning models take no temperature or top_p other than their default).
_DROPPABLE = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")


def unsupported_field(error) -> str | None:
    """The request field an HTTP 400 says this model does not support, as the OpenAI API words it
    (`param` "max_tokens", code "unsupported_parameter": "Use 'max_completion_tokens' instead"; `param`
    "temperature", code "unsupported_value"), else None."""
    if getattr(error, "status_code", None) != 400:
        return None
    body = getattr(error, "body", None)
    body = body.get("error", body) if isinstance(body, dict) else {}
    param, code = body.get("param"), str(body.get("code") or "")
    message = str(body.get("message") or error).lower()
    if param == "max_tokens" and ("max_completion_tokens" in message or code == "unsupported_parameter"):
        return "max_tokens"
    if param in _DROPPABLE and (code.startswith("unsupported") or "unsupported" in message):
        return param
    return None


def adaptations_of(client) -> dict[str, str]:
    """What `client` changed in its requests (see EndpointChatClient): {} when nothing was refused."""
    return dict(getattr(client, "adaptations", None) or {})


def sent_temperature(temperature: float | None, adaptations: dict) -> float | None:
    """The temperature the requests carried: None when the endpoint refused the field and it was left
    out, so the model sampled at the endpoint's default (1 for OpenAI's reasoning models), not at
    `temperature`. Results files record this, never a temperature that was not sent."""
    return None if adaptations.get("temperature") == "left out" else temperature


def describe_adaptations(adaptations: dict) -> str:
    """One phrase for a report: "max_tokens sent as max_completion_tokens, temperature left out"."""
    return ", ".join(f"{field} {instead}" if instead == "left out" else f"{field} sent as {instead}"
                     for field, instead in sorted(adaptations.items()))


class EndpointChatClient:
    """An OpenAI-compatible endpoint; up to `concurrency` requests in flight, retries inside the `openai` client.

    A model that refuses a request field (OpenAI's reasoning models: `max_tokens`, a temperature of 0)
    is asked again as it asks (`max_completion_tokens`; the field left out), and every later request
    is sent that way; `adaptations` lists what was changed, for the run's report."""

    def __init__(self, client, name: str, concurrency: int = 8, log_requests: bool = True):
        self.client, self.name, self.concurrency = client, name, max(1, concurrency)
        self.log_requests = log_requests  # False: send `store: false`, so a logging server keeps no record
        self.usage = UsageTotals()
        self.adaptations: dict[str, str] = {}  # field -> what is sent instead ("max_completion_tokens", "left out")

    def _create(self, kwargs: dict):
        """(response, the adaptations applied to it): one request, adapted to the fields this endpoint
        refused before (and learning new refusals)."""
        for _ in range(len(_DROPPABLE) + 2):
            sent, applied = dict(kwargs), {}
            for name, instead in list(self.adaptations.items()):
                if name in sent:
                    value = sent.pop(name)
                    applied[name] = instead
                    if instead != "left out":
                        sent[instead] = value
            try:
                return self.client.chat.completions.create(**sent), applied
            except Exception as err:  # noqa: BLE001 - only a refused field is handled here
                field = unsupported_field(err)
                if field is None or field not in sent:
                    raise
                self.adaptations[field] = "max_completion_tokens" if field == "max_tokens" else "left out"
        raise RuntimeError(f"the endpoint keeps refusing request fields ({self.adaptations})")

    def _request(self, call: ChatCall) -> Completion:
        p = call.params
        out = Completion([], [], [])
        while len(out.texts) < call.n:  # some servers (e.g. Ollama) return one choice whatever n asks
            kwargs = dict(model=self.name, messages=call.messages, n=call.n - len(out.texts), temperature=p.temperature,
                          top_p=p.top_p, max_tokens=p.max_new_tokens)
            if p.seed is not None:
                kwargs["seed"] = p.seed + len(out.texts)
            if p.stop:
                kwargs["stop"] = list(p.stop)
            if p.logprobs:
                kwargs.update(logprobs=True, top_logprobs=p.top_logprobs or None)
            if p.frequency_penalty or p.presence_penalty:
                kwargs.update(frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty)
            if p.logit_bias:
                kwargs["logit_bias"] = {str(token): bias for token, bias in p.logit_bias}
            if kwargs["n"] == 1:
                del kwargs["n"]  # the default; some servers reject the field
            if not self.log_requests:
                kwargs["store"] = False
            resp, applied = self._create(kwargs)
            out.adaptations.update(applied)
            self.usage.add(resp.usage)
            out.model = resp.model or out.model
            if not resp.choices:
                raise RuntimeError(f"the endpoint returned no choices for model {self.name}")
            for choice in resp.choices:
                out.texts.append(choice.message.content or "")
                out.finish_reasons.append(choice.finish_reason or "stop")
                out.logprobs.append(_logprobs(choice))
            if resp.usage is not None:
                out.prompt_tokens = resp.usage.prompt_tokens or 0
                out.completion_tokens += resp.usage.completion_tokens or 0
        del out.texts[call.n :], out.finish_reasons[call.n :], out.logprobs[call.n :]
        return out

    def complete_many(self, calls: list[ChatCall]) -> Iterator[tuple[int, Completion | Exception]]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._request, call): i for i, call in enumerate(calls)}
            try:
                for future in as_completed(futures):
                    error = future.exception()
                    yield futures[future], (error if error is not None else future.result())
            finally:
                for future in futures:
                    future.cancel()


def open_chat_client(target: str, model_name: str | None = None, api_key: str | None = None, batch_size: int = 8,
                     concurrency: int = 8, option: str = "--model-name", api_key_env: str | None = None,
                     api_key_file: str | None = None, log_requests: bool = True):
    """An endpoint client for a URL, else a local model loaded from `target` (GPU when there is one).

    `log_requests=False` asks an endpoint not to store the requests (`store: false`, which `prefloop serve`
    honours: nothing is logged as a user interaction).

    The endpoint's key: `api_key` as given (Python callers), else `endpoint.endpoint_api_key`
    (`api_key_env` / `api_key_file`; $OPENAI_API_KEY only for the OpenAI API itself).
    """
    if is_endpoint(target):
        client = make_client(target, api_key, api_key_env=api_key_env, api_key_file=api_key_file)
        return EndpointChatClient(client, resolve_model_name(client, model_name, option), concurrency, log_requests)
    return LocalChatClient(LocalGenerator.load(target), model_name or local_model_name(target), batch_size)


def local_model_name(path: str) -> str:
    """The name a local model goes by in outputs and at /v1/models: its directory (or .gguf file) name."""
    p = Path(path)
    return p.stem if p.suffix == ".gguf" else (p.name or str(path))
