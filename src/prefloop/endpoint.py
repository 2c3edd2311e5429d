"""OpenAI-compatible chat endpoints (OpenAI, vLLM, Ollama, `prefloop serve`): one way to reach them.

`generate` and `judge` accept either a local model path or an endpoint URL; this module decides
which it is, builds the `openai` client (whose retries back off exponentially on 408/409/429/5xx
and connection errors, honouring Retry-After), and picks the model name.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from prefloop.errors import ConfigError

DEFAULT_MAX_RETRIES = 6
DEFAULT_TIMEOUT_S = 600.0


def is_endpoint(target: str) -> bool:
    return str(target).startswith(("http://", "https://"))


def base_url(url: str) -> str:
    """`http://host:8000`, `.../v1` or `.../v1/chat/completions` -> `http://host:8000/v1`."""
    url = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions", "/models"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url if url.endswith("/v1") or "/v1/" in url + "/" else url + "/v1"


def make_client(url: str, api_key: str | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
                timeout: float = DEFAULT_TIMEOUT_S):
    """A thread-safe `openai.OpenAI` client for `url`; the key defaults to $OPENAI_API_KEY."""
    import openai

    key = api_key or os.environ.get("OPENAI_API_KEY") or "none"  # local servers usually need no key
    return openai.OpenAI(base_url=base_url(url), api_key=key, max_retries=max_retries, timeout=timeout)


def resolve_model_name(client, name: str | None, option: str = "--model-name") -> str:
    """`name`, or the endpoint's only model; a clear error when the endpoint serves several or is down."""
    import openai

    if name:
        return name
    try:
        models = [m.id for m in client.models.list().data]
    except openai.APIError as err:
        raise ConfigError(f"could not list the models at {client.base_url} ({err}); give the model with {option}") from err
    if len(models) == 1:
        return models[0]
    shown = ", ".join(models[:20]) or "none"
    raise ConfigError(f"the endpoint {client.base_url} serves {len(models)} models ({shown}); choose one with {option}")


@dataclass
class UsageTotals:
    """Token usage summed over many requests (thread-safe), for the cost line of a report."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()

    def add(self, usage) -> None:
        with self._lock:
            self.requests += 1
            if usage is not None:
                self.prompt_tokens += int(getattr(usage, "prompt_tokens", None) or 0)
                self.completion_tokens += int(getattr(usage, "completion_tokens", None) or 0)

    def add_counts(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def to_dict(self) -> dict:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "total_tokens": self.prompt_tokens + self.completion_tokens}

    def __str__(self) -> str:
        return (f"{self.requests} requests, {self.prompt_tokens} prompt + {self.completion_tokens} completion tokens")
