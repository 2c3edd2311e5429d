"""A judgment cache on disk, so the same (judge, prompt, ordered pair) is never paid for twice.

One JSONL file, appended as judgments arrive (a crash loses at most the line being written, which
is skipped on the next read). Keyed by a hash of everything that determines the judge's answer:
judge model, prompt template and criteria, conversation, both answers in their shown order, and
the generation settings.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path


def judgment_key(judge: str, prompt_fingerprint: str, messages: list[dict], answer_a: str, answer_b: str,
                 settings: dict) -> str:
    blob = json.dumps([judge, prompt_fingerprint, messages, answer_a, answer_b, settings], ensure_ascii=False,
                      sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgmentCache:
    """The cache file at `path`. With the judge's chat `client`, each new judgment is stored with the request
    fields its endpoint refused (`client.adaptations`, e.g. {"temperature": "left out"}: refused fields are
    refused in every request), and those of every cached judgment read back are collected in `used`, so a
    rerun from the cache still reports how its judgments were asked (`adaptations()`)."""

    def __init__(self, path: str | Path, client=None):
        self.path = Path(path)
        self.client = client
        self.used: dict[str, str] = {}  # endpoint adaptations of the cached judgments this run read back
        self.entries: dict[str, dict] = {}
        self.unreadable_lines = 0
        self._lock = threading.Lock()
        text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        self._needs_newline = bool(text) and not text.endswith("\n")  # a line cut short by a crash
        if text:
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                    self.entries[record["key"]] = record["value"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.unreadable_lines += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        """The cached value for `key`, or None."""
        hit = self.entries.get(key)
        if hit is not None and isinstance(hit.get("endpoint_adaptations"), dict):
            self.used.update(hit["endpoint_adaptations"])
        return hit

    def put(self, key: str, value: dict) -> None:
        """Store `value` under `key` (appended to the file at once), with the client's endpoint adaptations."""
        adaptations = dict(getattr(self.client, "adaptations", None) or {})
        if adaptations:
            value = {**value, "endpoint_adaptations": adaptations}
        with self._lock:
            self.entries[key] = value
            with self.path.open("a", encoding="utf-8") as f:
                if self._needs_newline:
                    f.write("\n")
                    self._needs_newline = False
                f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")

    def adaptations(self) -> dict[str, str]:
        """The request fields the endpoint refused, over the cached judgments read back and this run's
        requests; {} when none was refused."""
        return {**self.used, **dict(getattr(self.client, "adaptations", None) or {})}

    def __len__(self) -> int:
        return len(self.entries)
