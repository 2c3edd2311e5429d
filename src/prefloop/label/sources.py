"""Where label items come from: a file of prompts with two or more candidate responses, or prompts for live mode.

Accepted item files (.jsonl, or .json holding a list):
- candidates: one record per prompt, ``{"prompt" | "conversations" | "messages": ..., "candidates" | "responses": [...]}``
  where each candidate is a string or ``{"text" | "content" | "response": ..., "model" | "source": ...}``;
  every unordered pair of a prompt's candidates becomes one item (N candidates -> N*(N-1)/2 items);
- preference data in any format the data layer reads (read with `prefloop.data.loader.load_pairs`):
  each pair becomes one item with its chosen/rejected answers (the earlier preference is not shown).

Prompts are a string (one user turn) or a list of turns with role/content or from/value keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from prefloop.data.formats import DEFAULT_ROLE_ALIASES
from prefloop.errors import DataError

PROMPT_KEYS = ("prompt", "conversations", "messages", "instruction")
CANDIDATE_KEYS = ("candidates", "responses")
TEXT_KEYS = ("text", "content", "response", "value")
SOURCE_KEYS = ("model", "source")


@dataclass
class Item:
    """One comparison to store: a prompt (role/content turns ending with a user turn) and two responses."""

    prompt: list[dict]
    response_a: str
    response_b: str
    source_a: str | None
    source_b: str | None
    origin: str


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) for every record of a .jsonl or .json file; bad JSON names its line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a .jsonl or .json file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: bad JSON ({err.msg}); fix the file") from err
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json file must hold a list of records, got {type(data).__name__}")
        records = list(enumerate(data, start=1))
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: bad JSON line ({err.msg} at column {err.colno}); fix or remove "
                                "the line") from err
    for lineno, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: each record must be a JSON object, got {type(record).__name__}")
    if not records:
        raise DataError(f"{path}: no records; the file is empty")
    return records


def parse_prompt(raw: Any, where: str) -> list[dict]:
    """A prompt as role/content turns; it must end with a user (or tool) turn."""
    if isinstance(raw, str):
        if not raw.strip():
            raise DataError(f"{where}: the prompt is empty")
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: the prompt must be a string or a non-empty list of turns, got {raw!r:.60}")
    turns = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: turn {i} must be an object with role/content (or from/value)")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        mapped = DEFAULT_ROLE_ALIASES.get(str(role).lower()) if role is not None else None
        if mapped is None:
            raise DataError(f"{where}: turn {i} has unknown role {role!r}; use user/assistant/system "
                            "(or human/gpt)")
        if not isinstance(content, str):
            raise DataError(f"{where}: turn {i} content must be a string, got {type(content).__name__}")
        turns.append({"role": mapped, "content": content})
    if turns[-1]["role"] not in ("user", "tool"):
        raise DataError(f"{where}: the prompt must end with a user turn (it ends with {turns[-1]['role']!r})")
    return turns


def record_prompt(record: dict, where: str) -> list[dict]:
    for key in PROMPT_KEYS:
        if key in record:
            prompt = parse_prompt(record[key], f"{where}: field {key!r}")
            system = record.get("system")
            if isinstance(system, str) and system and prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": system}] + prompt
            return prompt
    raise DataError(f"{where}: no prompt; expected one of the fields {', '.join(PROMPT_KEYS)}")


def _candidate(raw: Any, where: str) -> tuple[str, str | None]:
    if isinstance(raw, str):
        return raw, None
    if isinstance(raw, dict):
        text = next((raw[k] for k in TEXT_KEYS if isinstance(raw.get(k), str)), None)
        if text is None:
            raise DataError(f"{where}: a candidate object needs a text field ({', '.join(TEXT_KEYS)})")
        source = next((str(raw[k]) for k in SOURCE_KEYS if raw.get(k) is not None), None)
        return text, source
    raise DataError(f"{where}: a candidate must be a string or an object, got {type(raw).__name__}")


def is_candidates_file(records: list[tuple[int, dict]]) -> bool:
    return any(key in records[0][1] for key in CANDIDATE_KEYS)


def items_from_candidates(path: str | Path, records: list[tuple[int, dict]]) -> tuple[list[Item], int]:
    """Every unordered pair of each prompt's candidates; returns (items, prompts skipped for < 2 distinct)."""
    items, skipped = [], 0
    for lineno, record in records:
        where = f"{path}:{lineno}"
        key = next((k for k in CANDIDATE_KEYS if k in record), None)
        if key is None:
            raise DataError(f"{where}: no candidates; expected a list field 'candidates' or 'responses'")
        raw = record[key]
        if not isinstance(raw, list):
            raise DataError(f"{where}: field {key!r} must be a list of responses")
        prompt = record_prompt(record, where)
        candidates = [_candidate(c, f"{where}: {key}[{i}]") for i, c in enumerate(raw)]
        base = str(record.get("id", f"{Path(path).name}:{lineno}"))
        # identical texts make no comparison; keep the first of each
        seen, unique = set(), []
        for index, (text, source) in enumerate(candidates):
            if text not in seen:
                seen.add(text)
                unique.append((index, text, source or f"candidate {index}"))
        if len(unique) < 2:
            skipped += 1
            continue
        for (i, text_i, src_i), (j, text_j, src_j) in combinations(unique, 2):
            items.append(Item(prompt, text_i, text_j, src_i, src_j, f"{base}#{i}-{j}"))
    return items, skipped


def items_from_pairs(path: str | Path) -> list[Item]:
    """Preference data in any accepted format: chosen vs rejected of each pair."""
    from prefloop.data.loader import load_pairs

    items = []
    for index, pair in enumerate(load_pairs(str(path)).pairs):
        origin = pair.id or pair.source or f"{Path(path).name}#{index}"
        items.append(Item(pair.prompt_messages(), pair.chosen, pair.rejected, "chosen", "rejected", origin))
    return items


def load_items(path: str | Path) -> tuple[list[Item], int]:
    """Items of a candidates file or of preference data; returns (items, prompts skipped)."""
    if Path(path).suffix == ".parquet":
        items, skipped = items_from_pairs(path), 0
    elif is_candidates_file(records := read_records(path)):
        items, skipped = items_from_candidates(path, records)
    else:
        items, skipped = items_from_pairs(path), 0
    if not items:
        raise DataError(f"{path}: no prompt has two different responses to compare")
    return items, skipped


def load_prompts(path: str | Path) -> list[list[dict]]:
    """Prompts for live mode: JSONL/JSON records with a prompt field, or a plain text file, one prompt a line."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".json"):
        if not path.exists():
            raise DataError(f"{path}: file not found; check the path")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise DataError(f"{path}: no prompts; the file is empty")
        return [[{"role": "user", "content": line}] for line in lines]
    return [record_prompt(record, f"{path}:{lineno}") for lineno, record in read_records(path)]
