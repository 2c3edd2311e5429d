"""Live mode: two models answer the annotator's prompt. A model is a local directory or an endpoint URL.

A local model is loaded once at start (`prefloop.models`) and answers through its chat template;
an OpenAI-compatible endpoint (`http(s)://host:port/v1`, optionally `#model-name`) is called with the
`openai` client. Only the URLs the user gave are contacted.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from prefloop.errors import ConfigError

DEFAULT_MAX_NEW_TOKENS = 256


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


class LocalResponder:
    """A local causal LM answering with sampling (temperature 0.7) through its own chat template."""

    def __init__(self, path: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
        from prefloop.models import load_causal_lm, load_tokenizer

        if not Path(path).exists():
            raise ConfigError(f"model {path!r}: no such directory or file; give a local model path or an "
                              "http(s):// endpoint URL")
        self.name = Path(path).name or str(path)
        self.tokenizer = load_tokenizer(path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"model {path!r}: its tokenizer has no chat template; live mode needs a chat model")
        self.model = load_causal_lm(path)
        self.model.eval()
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()  # one generate at a time per model

    def __call__(self, messages: list[dict]) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        with self._lock, torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=True, temperature=0.7,
                                      top_p=0.95, pad_token_id=self.tokenizer.pad_token_id
                                      or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


class EndpointResponder:
    """An OpenAI-compatible chat endpoint (`URL` or `URL#model`; the first served model if none is named)."""

    def __init__(self, spec: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
        from openai import OpenAI

        url, _, model = spec.partition("#")
        self.client = OpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY") or "none", max_retries=2,
                             timeout=120)
        if not model:
            try:
                models = [m.id for m in self.client.models.list()]
            except Exception as err:  # the endpoint is down or not OpenAI-compatible
                raise ConfigError(f"endpoint {url}: cannot list models ({err}); is the server running? "
                                  "Name the model explicitly as URL#model-name") from err
            if not models:
                raise ConfigError(f"endpoint {url} serves no models; name one as URL#model-name")
            model = models[0]
        self.model = model
        self.name = model
        self.max_new_tokens = max_new_tokens

    def __call__(self, messages: list[dict]) -> str:
        reply = self.client.chat.completions.create(model=self.model, messages=messages,
                                                    max_tokens=self.max_new_tokens, temperature=0.7)
        return reply.choices[0].message.content or ""


def make_responder(spec: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
    """A callable messages -> response text for a local model path or an endpoint URL."""
    if is_url(spec):
        return EndpointResponder(spec, max_new_tokens)
    return LocalResponder(spec, max_new_tokens)
