"""OpenAI-compatible chat endpoints (OpenAI, vLLM, Ollama, `prefloop serve`): one way to reach them.

`generate` and `judge` accept either a local model path or an endpoint URL; this module decides
which it is, builds the `openai` client (whose retries back off exponentially on 408/409/429/5xx
and connection errors, honouring Retry-After), and picks the model name.

API keys (`endpoint_api_key`, the one place every endpoint client gets its key from):
- a key named for the endpoint is sent to it: `api_key_env` (the name of an environment variable,
  `--api-key-env VAR`) or `api_key_file` (a file holding the key, `--api-key-file PATH`); a key is
  never taken from a command-line argument, which every user of the machine sees in `ps`;
- otherwise $OPENAI_API_KEY is sent only to the OpenAI API's own host (https://api.openai.com);
  any other endpoint (a local vLLM, Ollama, `prefloop serve`, someone else's proxy) gets no key;
- the organization and project identifiers the `openai` client reads from $OPENAI_ORG_ID and
  $OPENAI_PROJECT_ID go to the OpenAI API only as well.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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


OPENAI_API_HOSTS = frozenset({"api.openai.com"})


def is_openai_api(url: str) -> bool:
    """True only for the OpenAI API's own host over https (not a proxy, not a look-alike name)."""
    parts = urlsplit(str(url))
    return parts.scheme == "https" and (parts.hostname or "").lower() in OPENAI_API_HOSTS


def endpoint_api_key(url: str, api_key_env: str | None = None, api_key_file: str | None = None) -> str | None:
    """The API key to send to `url`, or None (send none). See the module docstring for the rules.

    Raises ConfigError when both sources are given, when the named variable is unset or empty,
    or when the key file is missing, unreadable or empty.
    """
    if api_key_env and api_key_file:
        raise ConfigError("give the endpoint's key one way: --api-key-env VAR or --api-key-file PATH, not both")
    if api_key_env:
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise ConfigError(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set "
                              f"(or empty); export {api_key_env}=<key> before running, or use --api-key-file PATH")
        return key
    if api_key_file:
        path = Path(api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--api-key-file {api_key_file}: cannot read the key file ({err}); write the key "
                              "alone into a file readable only by you (chmod 600)") from err
        if not key:
            raise ConfigError(f"--api-key-file {api_key_file}: the file is empty; write the endpoint's key into it")
        return key
    if is_openai_api(url):
        return os.environ.get("OPENAI_API_KEY") or None
    return None


def make_client(url: str, api_key: str | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
                timeout: float = DEFAULT_TIMEOUT_S, api_key_env: str | None = None, api_key_file: str | None = None):
    """A thread-safe `openai.OpenAI` client for `url`.

    `api_key` (from Python code) is sent as given; otherwise the key comes from `endpoint_api_key`
    (`api_key_env` / `api_key_file`, or $OPENAI_API_KEY for the OpenAI API only). An endpoint
    without a key gets the placeholder "none" (the `openai` client requires some key).
    """
    import openai

    key = api_key if api_key is not None else endpoint_api_key(url, api_key_env, api_key_file)
    extra = {}
    if not is_openai_api(url):  # the client would read these from the environment and send them anywhere
        extra["default_headers"] = {"OpenAI-Organization": openai.Omit(), "OpenAI-Project": openai.Omit()}
    return openai.OpenAI(base_url=base_url(url), api_key=key or "none", max_retries=max_retries, timeout=timeout,
                         **extra)


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
