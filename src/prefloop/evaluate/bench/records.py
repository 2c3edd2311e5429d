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
    group: tuple[str, int] | None = None  # (key, 0-based index) in a file of lists grouped by key (category)

    def error(self, field: str, message: str, fix: str) -> Problem:
        return Problem(self.file, self.location, self.path(field), message, fix)

    def path(self, field: str) -> str:
        """`field` as a path from the top of the file: 'KEY[i].field' in a grouped file, else `field`."""
        if self.group is None:
            return field
        key, index = self.group
        return f"{key}[{index}]" + (f".{field}" if field else "")

    @property
    def where(self) -> str:
        """"FILE:LINE", "FILE (record N)" or, in a grouped file, "FILE (KEY[i])" for messages."""
        kind, _, number = self.location.partition(" ")
        if self.group is not None:
            return f"{self.file} ({self.path('')})"
        return f"{self.file}:{number}" if kind == "line" else f"{self.file} (record {number})"


# A check takes (record, value) and returns None when fine or (message, fix).
Check = Callable[[Any], "tuple[str, str] | None"]


def is_text(value) -> tuple[str, str] | None:
    if isinstance(value, str) and value.strip():
        return None
    return (f"expected non-empty text, got {value!r}"[:200], "write the text as a JSON string")


def _grouped(items: list, p: Path, fields: dict, group_field: str) -> list | None:
    """The records of a JSON file that is one object of lists keyed by `group_field` (SafetyBench's dev_en.json:
    {"Offensiveness": [{...}, ...], ...}) as (Record or Problem) items, or None when the file is not one."""
    if len(items) != 1 or isinstance(items[0], Problem):
        return None
    kind, _, data = items[0]
    if (kind != "record" or not isinstance(data, dict) or not data or any(name in data for name in fields)
            or not all(isinstance(v, list) for v in data.values())):
        return None
    out, n = [], 0
    for key, listed in data.items():
        for index, value in enumerate(listed):
            n += 1
            record = Record(str(p), "", value, group=(key, index))  # its place is the field path KEY[i]
            if isinstance(value, dict) and group_field in value and value[group_field] != key:
                out.append(record.error(group_field, f"{value[group_field]!r} differs from the key {key!r} it is "
                                                     f"listed under", "list the item under its own category"))
                continue
            if isinstance(value, dict):
                value.setdefault(group_field, key)
            out.append(record)
    return out


def read_records(path: str, fields: dict[str, Check], benchmark: str, fmt_help: str,
                 limit: int | None = None, group_field: str | None = None) -> list[Record]:
    """Records of `path`, each checked: every field of `fields` present and passing its check.

    With `group_field`, a JSON file that is one object of lists (the lists keyed by that field's value, as
    SafetyBench's dev files group their items by category) is read as the records of all its lists, each
    given the key as `group_field`. Raises DataError listing up to MAX_LISTED_PROBLEMS located problems
    (all counted) with `fmt_help`, the benchmark's format in one line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{benchmark}: data file {path} does not exist; {fmt_help}")
    records: list[Record] = []
    problems: list[Problem] = []
    items = iter_records(p)
    if group_field is not None and p.suffix.lower() == ".json":
        items = list(items)
        items = _grouped(items, p, fields, group_field) or items
    for item in items:
        if isinstance(item, Problem):
            problems.append(item)
            continue
        if isinstance(item, Record):
            record, data = item, item.data
        else:
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

