"""Personal data scrubbed from text before it leaves the store for a judge endpoint or a model.

The defaults catch what leaks most often in chat logs: e-mail addresses, phone numbers, and API keys
or access tokens (OpenAI/Anthropic/HF/GitHub/Slack/AWS-style keys, JWTs, `Bearer ...`). Each match is
replaced by a placeholder naming its kind (`[EMAIL]`, `[PHONE]`, `[SECRET]`) and counted. They are
regular expressions, so they miss names, addresses and anything unusual: for real PII detection
plug in a library such as Microsoft Presidio through `pii_hook: "module:function"` (a function
str -> str run after the defaults).
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from typing import Callable

from prefloop.errors import ConfigError

PATTERNS: list[tuple[str, re.Pattern]] = [
    ("SECRET", re.compile(r"\b(?:sk|pk|rk)-(?:[A-Za-z0-9_-]+-)?[A-Za-z0-9_-]{16,}\b"           # OpenAI/Anthropic/Stripe
                          r"|\bhf_[A-Za-z0-9]{20,}\b|\bgh[pousr]_[A-Za-z0-9]{20,}\b"          # HF, GitHub
                          r"|\bxox[abpr]-[A-Za-z0-9-]{10,}\b|\bAKIA[0-9A-Z]{16}\b"            # Slack, AWS
                          r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b"  # JWT
                          r"|(?<=Bearer )[A-Za-z0-9._~+/=-]{16,}")),
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
    ("PHONE", re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){2,4}(?!\w)"
                         r"|(?<![\w+])\+\d{8,14}(?!\w)")),
]


class Scrubber:
    """Replace personal data in texts; `counts` says how many of each kind were replaced.

    `hook` ("module:function") names an extra function str -> str run after the built-in patterns."""

    def __init__(self, enabled: bool = True, hook: str | None = None):
        self.enabled = enabled
        self.counts: Counter = Counter()
        self.hook: Callable[[str], str] | None = load_hook(hook) if hook else None

    def text(self, text: str) -> str:
        if not self.enabled:
            return text
        for kind, pattern in PATTERNS:
            text, n = pattern.subn(f"[{kind}]", text)
            self.counts[kind] += n
        if self.hook is not None:
            changed = self.hook(text)
            if not isinstance(changed, str):
                raise ConfigError(f"pii_hook returned {type(changed).__name__}, not the scrubbed text (str)")
            self.counts["HOOK"] += changed != text
            text = changed
        return text

    def messages(self, messages: list[dict]) -> list[dict]:
        return [{**m, "content": self.text(m["content"])} if isinstance(m.get("content"), str) else m
                for m in messages]


def load_hook(spec: str) -> Callable[[str], str]:
    """Import "module:function"; ConfigError says what is wrong."""
    module_name, _, func_name = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"sample.pii_hook {spec!r} cannot be loaded ({err}); give 'module:function' importable "
                          "from this Python") from err
    if not callable(func):
        raise ConfigError(f"sample.pii_hook {spec!r} is not a function")
    return func
