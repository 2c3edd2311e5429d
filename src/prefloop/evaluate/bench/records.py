"""Reading a benchmark file: records with their location, and located errors for missing or bad fields.

Every runner reads its public format through `read_records` (JSON Lines, a JSON list, or parquet, via
the data layer's `iter_records`), so a broken line or a missing field is always reported as
`FILE:LINE: field 'NAME': what is wrong -> what to do`, and the run stops with exit code 2 before any
model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prefloop.data.loader import MAX_LISTED_PROBLEMS, Problem, iter_records
from prefloop.errors import DataError


@dataclass
class Record:
    """One benchmark item and where it came from (`location`: "line N" or "record N")."""

    file: str
    location: str
    data: dict

    def error(self, field: str, message: str, fix: str) -> Problem:
        return Problem(self.file, self.location, field, message, fix)

    @property
    def where(self) -> str:
        """"FILE:LINE" or "FILE (record N)" for messages."""
        kind, _, number = self.location.partition(" ")
        return f"{self.file}:{number}" if kind == "line" else f"{self.file} (record {number})"


# A check takes (record, value) and returns None when fine or (message, fix).
Check = Callable[[Any], "tuple[str, str] | None"]


def is_text(value) -> tuple[str, str] | None:
    if isinstance(value, str) and value.strip():
        return None
    return (f"expected non-empty text, got {value!r}"[:200], "write the text as a JSON string")


def read_records(path: str, fields: dict[str, Check], benchmark: str, fmt_help: str,
                 limit: int | None = None) -> list[Record]:
    """Records of `path`, each checked: every field of `fields` present and passing its check.

    Raises DataError listing up to MAX_LISTED_PROBLEMS located problems (all counted) with `fmt_help`,
    the benchmark's format in one line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{benchmark}: data file {path} does not exist; {fmt_help}")
    records: list[Record] = []
    problems: list[Problem] = []
    for item in iter_records(p):
        if isinstance(item, Problem):
            problems.append(item)
            continue
        kind, number, data = item
        record = Record(str(p), f"{kind} {number}", data)
        if not isinstance(data, dict):
            problems.append(record.error("", f"expected a JSON object, got {type(data).__name__}", fmt_help))
            continue
        bad = False
        for name, check in fields.items():
            if name not in data:
                problems.append(record.error(name, "missing", f"add the field ({fmt_help})"))
                bad = True
                continue
            found = check(data[name])
            if found is not None:
                problems.append(record.error(name, *found))
                bad = True
        if not bad:
            records.append(record)
        if limit is not None and len(records) >= limit and not problems:
            break
    if problems:
        lines = [f"{len(problems)} problem(s) in {benchmark} file {path}:"]
        lines += [f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS]]
        if len(problems) > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
        raise DataError("\n".join(lines))
    if not records:
        raise DataError(f"{benchmark}: {path} holds no items; {fmt_help}")
    return records

