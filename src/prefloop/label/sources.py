"""Where label items come from: a file of prompts with two or more candidate responses each.

Accepted item files (.jsonl, .json list, .parquet), detected from the first record:
- candidates (e.g. `prefloop generate` output): one record per prompt, a prompt in any form the prompt
  reader takes (``prompt`` / ``messages`` / ``conversations`` / ``instruction``, optional ``system``)
  and ``candidates`` or ``responses``: a list of strings or of ``{"text" | "content" | "response": ...,
  "model" | "source": ...}``; a record-level ``model`` names the writer of string candidates. Every
  unordered pair of a prompt's distinct candidates becomes one item (N candidates -> N*(N-1)/2 items);
- preference data in any format the data layer reads (`prefloop.data.loader.load_pairs`): each pair
  becomes one item of its two answers, sources "chosen"/"rejected" (hidden until after the vote).
Records are read by the data layer's `iter_records`, so a bad JSON line is reported with its number.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from prefloop.data.formats import RecordError
from prefloop.data.loader import Problem, iter_records, load_pairs
from prefloop.errors import DataError
from prefloop.prompts import plain_prompt, read_prompts

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


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """(where, record) for every record; the first problem (bad JSON line, empty file) is a DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path")
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


def items_from_candidates(records: list[tuple[str, dict]]) -> tuple[list[Item], int]:
    """Every unordered pair of each prompt's distinct candidates; returns (items, prompts with < 2 distinct)."""
    items, skipped = [], 0
    for where, record in records:
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
        candidates = [_candidate(c, f"{where}: {key}[{i}]", f"{writer} #{i}" if writer else f"candidate {i}")
                      for i, c in enumerate(raw)]
        base = str(record.get("id", where))
        seen, unique = set(), []  # identical texts make no comparison; keep the first of each
        for index, (text, source) in enumerate(candidates):
            if text not in seen:
                seen.add(text)
                unique.append((index, text, source))
        if len(unique) < 2:
            skipped += 1
            continue
        for (i, text_i, src_i), (j, text_j, src_j) in combinations(unique, 2):
            items.append(Item(prompt, text_i, text_j, src_i, src_j, f"{base}#{i}-{j}"))
    return items, skipped


def items_from_pairs(path: str | Path) -> list[Item]:
    """Preference data in any accepted format: chosen vs rejected of each pair."""
    items = []
    for index, pair in enumerate(load_pairs(str(path)).pairs):
        origin = pair.id or pair.source or f"{Path(path).name}#{index}"
        items.append(Item(pair.prompt_messages(), pair.chosen, pair.rejected, "chosen", "rejected", origin))
    return items


def load_items(path: str | Path) -> tuple[list[Item], int]:
    """Items of a candidates file or of preference data; returns (items, prompts skipped)."""
    records = read_records(path)
    first = records[0][1]
    if any(key in first for key in CANDIDATE_KEYS):
        items, skipped = items_from_candidates(records)
    elif "chosen" in first and "rejected" in first:
        items, skipped = items_from_pairs(path), 0
    else:
        raise DataError(f"{records[0][0]}: neither candidates nor preference data (keys: {sorted(first)[:10]}); "
                        "expected {'prompt'|'messages'|'conversations': ..., 'candidates': [...]} or a preference "
                        "pair with 'chosen' and 'rejected'")
    if not items:
        raise DataError(f"{path}: no prompt has two different responses to compare")
    return items, skipped


def load_prompts(path: str | Path) -> list[list[dict]]:
    """Prompts for live mode, through the project's one prompt reader (`prefloop.prompts.read_prompts`)."""
    if not Path(path).exists():
        raise DataError(f"{path}: file not found; check the path")
    return [prompt.messages for prompt in read_prompts(str(path)).prompts]
