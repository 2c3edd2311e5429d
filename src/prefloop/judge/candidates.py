"""Reading `prefloop generate` output: one prompt with its candidate answers per JSONL line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from prefloop.errors import DataError


@dataclass
class CandidateSet:
    id: str
    messages: list[dict]
    candidates: list[str]  # distinct answers, in file order
    model: str | None = None
    source: str | None = None


@dataclass
class CandidateFile:
    sets: list[CandidateSet]
    duplicate_answers: int = 0  # identical answers to the same prompt, read once
    too_few: int = 0  # prompts left with fewer than two distinct answers (nothing to compare)
    lines: int = 0

    def summary(self) -> str:
        text = f"{len(self.sets)} prompts with 2+ distinct candidates (of {self.lines} records)"
        if self.duplicate_answers:
            text += f"; {self.duplicate_answers} duplicate answer(s) read once"
        if self.too_few:
            text += f"; {self.too_few} prompt(s) skipped: fewer than two distinct answers"
        return text


def read_candidates(path: str | Path) -> CandidateFile:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"candidates file {path} does not exist; write it with prefloop generate")
    result = CandidateFile([])
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        result.lines += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from err
        messages, candidates = record.get("messages"), record.get("candidates")
        if not (isinstance(messages, list) and messages and all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                                for m in messages)):
            raise DataError(f"{path}:{lineno}: field 'messages' must be a non-empty list of {{role, content}} turns "
                            "(the format prefloop generate writes)")
        if not (isinstance(candidates, list) and all(isinstance(c, str) for c in candidates)):
            raise DataError(f"{path}:{lineno}: field 'candidates' must be a list of answer strings")
        distinct = list(dict.fromkeys(candidates))
        result.duplicate_answers += len(candidates) - len(distinct)
        if len(distinct) < 2:
            result.too_few += 1
            continue
        result.sets.append(CandidateSet(str(record.get("id") or f"{path.stem}:{lineno}"),
                                        [{"role": m["role"], "content": m["content"]} for m in messages],
                                        distinct, record.get("model"), f"{path}:{lineno}"))
    return result
