"""Candidate files: one prompt with two or more candidate answers per record.

`prefloop generate` writes them; `prefloop judge` and `prefloop label` read them through this one
reader. A record holds a prompt in any form the prompt reader takes (``prompt`` / ``messages`` /
``conversations`` / ``instruction``, optional ``system``) and ``candidates`` or ``responses``: a list of
strings or of ``{"text" | "content" | "response" | "value": ..., "model" | "source": ...}``; a
record-level ``model`` names the writer of string candidates. Files: .jsonl, .json (a list), .parquet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefloop.data.formats import RecordError
from prefloop.data.loader import Problem, iter_records
from prefloop.data.words import count
from prefloop.errors import DataError
from prefloop.prompts import plain_prompt

CANDIDATE_KEYS = ("candidates", "responses")
TEXT_KEYS = ("text", "content", "response", "value")
SOURCE_KEYS = ("model", "source")


@dataclass
class CandidateSet:
    """A prompt and its distinct candidate answers (identical texts are read once, in file order)."""

    id: str
    messages: list[dict]
    candidates: list[str]
    sources: list[str]  # who wrote each candidate (a model name, or "candidate i")
    indices: list[int]  # each candidate's position in the record, before duplicates were dropped
    model: str | None = None
    source: str | None = None  # file:line of the record


@dataclass
class CandidateFile:
    sets: list[CandidateSet] = field(default_factory=list)
    duplicate_answers: int = 0  # identical answers to the same prompt, read once
    too_few: int = 0  # prompts left with fewer than two distinct answers (nothing to compare)
    lines: int = 0

    def summary(self) -> str:
        text = f"{len(self.sets)} prompts with 2+ distinct candidates (of {self.lines} records)"
        if self.duplicate_answers:
            text += f"; {count(self.duplicate_answers, 'duplicate answer')} read once"
        if self.too_few:
            text += f"; {count(self.too_few, 'prompt')} skipped: fewer than two distinct answers"
        return text


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """(where, record) for every record; the first problem (bad JSON line, empty file) is a DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path (prefloop generate writes candidate files)")
    records = []
    for entry in iter_records(path):
        if isinstance(entry, Problem):
            raise DataError(str(entry))
        kind, number, record = entry
        where = f"{path}:{number}" if kind == "line" else f"{path} (record {number})"
        if not isinstance(record, dict):
            raise DataError(f"{where}: each record must be a JSON object, got {type(record).__name__}")
        records.append((where, record))
    return records


def is_candidate_record(record: dict) -> bool:
    return any(key in record for key in CANDIDATE_KEYS)


def _candidate(raw: Any, where: str, default_source: str) -> tuple[str, str]:
    if isinstance(raw, str):
        return raw, default_source
    if isinstance(raw, dict):
        text = next((raw[k] for k in TEXT_KEYS if isinstance(raw.get(k), str)), None)
        if text is None:
            raise DataError(f"{where}: a candidate object needs a text field ({', '.join(TEXT_KEYS)})")
        source = next((str(raw[k]) for k in SOURCE_KEYS if raw.get(k) is not None), default_source)
        return text, source
    raise DataError(f"{where}: a candidate must be a string or an object, got {type(raw).__name__}")


def candidate_set(where: str, record: dict) -> CandidateSet:
    """One record as a CandidateSet (all its distinct candidates, possibly fewer than two)."""
    key = next((k for k in CANDIDATE_KEYS if k in record), None)
    if key is None:
        raise DataError(f"{where}: no candidates; expected a list field 'candidates' or 'responses'")
    raw = record[key]
    if not isinstance(raw, list):
        raise DataError(f"{where}: field {key!r} must be a list of responses")
    try:
        prompt, _ = plain_prompt(record)
    except RecordError as err:
        raise DataError(f"{where}: {err}") from err
    writer = record.get("model")
    result = CandidateSet(str(record.get("id") or where), prompt, [], [], [],
                          str(writer) if writer is not None else None, where)
    for i, item in enumerate(raw):
        text, source = _candidate(item, f"{where}: {key}[{i}]", f"{writer} #{i}" if writer else f"candidate {i}")
        if text not in result.candidates:
            result.candidates.append(text)
            result.sources.append(source)
            result.indices.append(i)
    return result


def read_candidates(path: str | Path, records: list[tuple[str, dict]] | None = None) -> CandidateFile:
    """Every prompt with at least two distinct candidates; the rest are counted, never silently dropped."""
    result = CandidateFile()
    for where, record in records if records is not None else read_records(path):
        result.lines += 1
        found = candidate_set(where, record)
        raw = record[next(k for k in CANDIDATE_KEYS if k in record)]
        result.duplicate_answers += len(raw) - len(found.candidates)
        if len(found.candidates) < 2:
            result.too_few += 1
            continue
        result.sets.append(found)
    return result
