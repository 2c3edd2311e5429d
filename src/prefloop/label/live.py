"""Live mode: two models answer the annotator's prompt. A model is a local path or an endpoint URL.

Both go through the project's chat clients (`prefloop.chat_clients.open_chat_client`): a local
model is loaded once at start and answers through its chat template; an OpenAI-compatible endpoint
(`http(s)://host:port[/v1]`, the model named as `URL#model` or the endpoint's only model) is called
with the `openai` client. Only the URLs the user gave are contacted.
"""

from __future__ import annotations

import threading
from pathlib import Path

from prefloop.chat_clients import ChatCall, open_chat_client
from prefloop.endpoint import is_endpoint
from prefloop.errors import ConfigError
from prefloop.sampling import SamplingParams

LIVE_SAMPLING = SamplingParams(max_new_tokens=256, temperature=0.7, top_p=0.95)


class Responder:
    """messages -> one sampled response; `name` is what the page reveals after the vote."""

    def __init__(self, spec: str, params: SamplingParams = LIVE_SAMPLING):
        target, _, model_name = spec.partition("#")
        self.client = open_chat_client(target, model_name or None, option="URL#model-name")
        self.name = self.client.name
        self.params = params
        self._lock = threading.Lock()  # a local model decodes one request at a time

    def __call__(self, messages: list[dict]) -> str:
        with self._lock:
            for _, result in self.client.complete_many([ChatCall(messages, 1, self.params)]):
                if isinstance(result, Exception):
                    raise result
                return result.texts[0]
        raise RuntimeError(f"model {self.name} returned no completion")


def make_responder(spec: str, params: SamplingParams = LIVE_SAMPLING) -> Responder:
    """A responder for a local model path or an endpoint URL (checked before anything loads)."""
    if not is_endpoint(spec) and not Path(spec.partition("#")[0]).exists():
        raise ConfigError(f"model {spec!r}: no such local path; give a model directory, a .gguf file or an "
                          "http(s):// OpenAI-compatible endpoint URL")
    return Responder(spec, params)
