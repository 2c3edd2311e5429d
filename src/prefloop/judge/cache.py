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
    def __init__(self, path: str | Path):
        self.path = Path(path)
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
        return self.entries.get(key)

    def put(self, key: str, value: dict) -> None:
        with self._lock:
            self.entries[key] = value
            with self.path.open("a", encoding="utf-8") as f:
                if self._needs_newline:
                    f.write("\n")
                    self._needs_newline = False
                f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")

    def __len__(self) -> int:
        return len(self.entries)
