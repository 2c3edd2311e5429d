"""Load preference pairs: dataset names/paths -> `PreferencePair`s, with every problem reported.

`load_pairs` is the one entry point (training, eval, `data check`, the loop). Malformed input is
reported with file, line (or record number) and field plus a suggestion; by default loading
fails listing the first problems, with `skip_bad_rows=True` bad rows are skipped and counted.
Every pair gets a stable `id` (`file stem:line` when the data has none) and a `source`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from prefloop.data.formats import (FORMATS_HELP, KNOWN_FIELDS, SCORE_FIELDS, RecordError, check_scores, closest_field,
                                   make_reader, misspelt_kind, unread_kind, warning_lines)
from prefloop.data.registry import NO_OPTIONS, DatasetSource, OptionNames, resolve_dataset
from prefloop.data.schema import REPEAT_MARK, PreferencePair, is_empty_prompt
from prefloop.data.words import count, plural
from prefloop.errors import DataError, json_error_text

MAX_LISTED_PROBLEMS = 20
_KEPT_PROBLEMS = 200  # problems kept in full for reports; all are counted
_INDEX = re.compile(r"\[\d+\]")
# dataset_info.json columns a record may leave out (the others are required and checked per record).
_OPTIONAL_COLUMNS = ("query", "history", "system", "tools")
_POSITION = re.compile(r"\b(line|column) \d+")
_LINE = re.compile(r"\bline (\d+)")
_RECORD = re.compile(r"\brecord \d+")


@dataclass
class Problem:
    """One thing wrong with the input: where (file, line or record), which field, what, what to do."""

    file: str
    location: str  # "line 12", "record 3", "record 3, line 12" (a JSON list) or "" for the whole file
    field: str
    message: str
    suggestion: str = ""

    @property
    def reason(self) -> str:
        """The kind of problem, for counting (no line numbers or list indices)."""
        field_name = _INDEX.sub("[]", self.field)
        message = _POSITION.sub(r"\1 N", self.message)
        return f"{field_name}: {message}" if field_name else message

    def __str__(self) -> str:
        line = _LINE.search(self.location)
        record = _RECORD.search(self.location)
        where = self.file + (f":{line.group(1)}" if line else "") + (f" ({record.group(0)})" if record else "")
        text = f"{where}: " + (f"field '{self.field}': " if self.field else "") + self.message
        return text + (f" -> {self.suggestion}" if self.suggestion else "")

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "location": self.location, "field": self.field, "message": self.message, "suggestion": self.suggestion}


@dataclass
class SkipReport:
    """Rows (or whole files) that could not be read: how many, grouped by reason, and the first few."""

    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    def add(self, problem: Problem) -> None:
        self.count += 1
        self.reasons[problem.reason] += 1
        if len(self.problems) < _KEPT_PROBLEMS:
            self.problems.append(problem)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "reasons": dict(self.reasons.most_common()), "first": [p.to_dict() for p in self.problems[:MAX_LISTED_PROBLEMS]]}


@dataclass
class WarningReport:
    """Pairs that were read with something in them ignored: how many per kind (formats.WARNINGS), and the first few."""

    kinds: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(self.kinds.values())

    def add(self, kind: str, problem: Problem) -> None:
        self.kinds[kind] += 1
        if len(self.problems) < _KEPT_PROBLEMS:
            self.problems.append(problem)

    def lines(self) -> list[str]:
        """One line per kind: "N pairs had ..." """
        return warning_lines(dict(self.kinds.most_common()))

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "kinds": dict(self.kinds.most_common()),
                "first": [p.to_dict() for p in self.problems[:MAX_LISTED_PROBLEMS]]}


@dataclass
class LoadResult:
    pairs: list[PreferencePair]
    format_counts: Counter
    skipped: SkipReport
    sources: list[DatasetSource]
    pairs_per_dataset: dict[str, int] = field(default_factory=dict)
    warnings: WarningReport = field(default_factory=WarningReport)
    notes: list[str] = field(default_factory=list)  # what was done to the data as asked (num_samples draws)

    @property
    def files(self) -> list[str]:
        return [str(f) for s in self.sources for f in s.files]

    def summary(self) -> str:
        formats = ", ".join(f"{name} {n}" for name, n in self.format_counts.most_common()) or "none"
        text = f"{count(len(self.pairs), 'pair')} from {count(len(self.files), 'file')} (formats: {formats})"
        if self.skipped.count:
            text += f"; skipped {count(self.skipped.count, 'bad row')}: " + "; ".join(f"{n}x {r}" for r, n in self.skipped.reasons.most_common(5))
        if self.warnings.count:
            text += "; " + "; ".join(self.warnings.lines())
        if self.notes:
            text += "; " + "; ".join(self.notes)
        return text


# ---------------------------------------------------------------------------------------------
# Records from files: (location, record) or a Problem
# ---------------------------------------------------------------------------------------------


class _Duplicated(dict):
    """A JSON object that gave a key more than once (`duplicate`: the first such key); the value kept is the last."""

    duplicate: str = ""


@dataclass(frozen=True)
class DuplicateKey:
    """A record in which a key is given twice (`field`: where, e.g. "chosen" or "conversations[1].value")."""

    field: str
    key: str


class _JsonDecoder:
    """json.loads that notices a key given twice in an object (Python's json keeps the last without a word).

    The check costs one dict comparison per object; only a record that has a duplicate is walked to name it."""

    def __init__(self) -> None:
        self.found = False
        self.decoder = json.JSONDecoder(object_pairs_hook=self._object)

    def _object(self, pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        seen: set[str] = set()
        marked = _Duplicated(obj)
        marked.duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
        self.found = True
        return marked

    def loads(self, raw: bytes) -> Any:
        """Like json.loads(raw) (same encoding detection and errors)."""
        return self.decoder.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))

    def check(self, record: Any) -> Any:
        """`record`, or a DuplicateKey naming where a key is given twice in it."""
        if not self.found:
            return record
        where = _duplicate_in(record, "")
        return record if where is None else where

    def reset(self) -> None:
        self.found = False


def _duplicate_in(value: Any, at: str) -> DuplicateKey | None:
    if isinstance(value, dict):
        if isinstance(value, _Duplicated):
            return DuplicateKey(f"{at}.{value.duplicate}" if at else value.duplicate, value.duplicate)
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        found = _duplicate_in(item, f"{at}{key}" if str(key).startswith("[") else (f"{at}.{key}" if at else key))
        if found is not None:
            return found
    return None


def _jsonl_records(path: Path) -> Iterator[tuple[str, int, Any] | Problem]:
    seen_any = False
    decoder = _JsonDecoder()
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                record = decoder.loads(raw)
            except UnicodeDecodeError as err:
                seen_any = True
                yield Problem(str(path), f"line {lineno}", "", f"not UTF-8 text ({err.reason})", "save the file as UTF-8")
                continue
            except json.JSONDecodeError as err:
                if not raw.strip():
                    continue
                seen_any = True
                yield Problem(str(path), f"line {lineno}", "", json_error_text(err, with_line=False), "each line must be one complete JSON object")
                continue
            seen_any = True
            if decoder.found:
                record = decoder.check(record)
                decoder.reset()
            yield "line", lineno, record
    if not seen_any:
        yield Problem(str(path), "", "", "file is empty (no records)", "add preference records or remove the file from the dataset")


def _json_records(path: Path) -> Iterator[tuple[str, int, Any] | Problem]:
    raw = path.read_bytes()
    decoder = _JsonDecoder()
    try:
        data = decoder.loads(raw)
    except UnicodeDecodeError as err:
        yield Problem(str(path), "", "", f"not UTF-8 text ({err.reason})", "save the file as UTF-8")
        return
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several JSON values: it is JSON Lines with a .json name
            yield from _jsonl_records(path)
            return
        if not raw.strip():
            yield Problem(str(path), "", "", "file is empty (no records)", "add preference records or remove the file from the dataset")
            return
        yield Problem(str(path), f"line {err.lineno}", "", json_error_text(err), "fix the JSON syntax (the file must be one JSON list of records)")
        return
    if isinstance(data, dict):
        data = [data]  # a single record
    if decoder.found and isinstance(data, list):
        data = [decoder.check(record) for record in data]
    if not isinstance(data, list):
        yield Problem(str(path), "", "", f"expected a JSON list of records, got {type(data).__name__}", "write the file as [ {...}, {...} ] or as JSON Lines")
        return
    if not data:
        yield Problem(str(path), "", "", "file is empty (an empty list)", "add preference records or remove the file from the dataset")
        return
    for index, record in enumerate(data, 1):
        yield "record", index, record


def json_list_lines(text: str) -> list[int]:
    """The line on which each element of a JSON list (the text of a whole .json file) starts."""
    decoder = json.JSONDecoder()
    lines: list[int] = []
    start = len(text) - len(text.lstrip())
    if not text[start:].startswith("["):  # a file holding one object: record 1
        return [text.count("\n", 0, start) + 1]
    at = start + 1
    line, counted = 1, 0
    while True:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        if at >= len(text) or text[at] == "]":
            return lines
        line += text.count("\n", counted, at)
        counted = at
        lines.append(line)
        _, at = decoder.raw_decode(text, at)


class _RecordLines:
    """Where record N of a JSON list file starts (`record N, line L`), read only when a record has a problem."""

    def __init__(self, path: Path) -> None:
        self.path, self.lines = path, None

    def location(self, kind: str, number: int) -> str:
        if kind != "record" or self.path.suffix.lower() != ".json":
            return f"{kind} {number}"
        if self.lines is None:
            try:
                self.lines = json_list_lines(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.lines = []
        return f"record {number}, line {self.lines[number - 1]}" if number <= len(self.lines) else f"record {number}"


def _parquet_records(path: Path) -> Iterator[tuple[str, int, Any] | Problem]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError subclasses
        yield Problem(str(path), "", "", f"not a readable parquet file ({err})", "check the file is complete parquet (re-export it)")
        return
    index = 0
    for batch in parquet.iter_batches(batch_size=8192):
        for record in batch.to_pylist():
            index += 1
            yield "record", index, record
    if index == 0:
        yield Problem(str(path), "", "", "file is empty (no rows)", "add preference records or remove the file from the dataset")


_READERS = {".jsonl": _jsonl_records, ".json": _json_records, ".parquet": _parquet_records}


def iter_records(path: Path) -> Iterator[tuple[str, int, Any] | Problem]:
    """(kind, number, record) for each record of `path` ("line" for JSONL, "record" otherwise), or Problems.

    A record that gives a key twice (Python's json would keep the last value silently) is a Problem naming
    the key's place in the record, for every reader of records (pairs, prompts, candidates, label items)."""
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        yield Problem(str(path), "", "", f"unsupported file type {path.suffix!r}", "use .jsonl, .json (a list) or .parquet")
        return
    record_lines = _RecordLines(path)
    try:
        for item in reader(path):
            if not isinstance(item, Problem) and isinstance(item[2], DuplicateKey):
                kind, number, duplicate = item
                item = Problem(str(path), record_lines.location(kind, number), duplicate.field,
                               f"key {duplicate.key!r} is given twice in one object (a JSON reader would keep only "
                               "the last, silently)", "keep one of the two")
            yield item
    except OSError as err:
        yield Problem(str(path), "", "", f"cannot read the file ({err.strerror or err})", "check that it exists and is readable")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _repeats_the_pair(value: Any, pair: PreferencePair) -> bool:
    """True when an unread `messages` field only repeats the pair's own conversation: the prompt and the chosen
    answer (UltraFeedback-binarized's `messages` column) or the prompt alone. Nothing is lost by not reading it,
    so it is not warned about."""
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        return False
    turns = [(m.get("role"), m.get("content")) for m in value]
    prompt = [(m["role"], m["content"]) for m in pair.prompt_messages()]
    return turns in (prompt, prompt + [(pair.chosen_role, pair.chosen)])


def _read_source(source: DatasetSource, limit: int | None, pairs: list[PreferencePair], formats: Counter,
                 problems: SkipReport, used_prefixes: dict[str, Path], warnings: WarningReport) -> int:
    pending: list[tuple[str, str, str, str]] = []  # the warnings of the record being read (kept if it is read)

    def warn(kind: str, field_name: str, message: str, suggestion: str) -> None:
        pending.append((kind, field_name, message, suggestion))

    read_record = make_reader(source.spec, warn)
    read = 0
    # A field no reader takes that is one typo away from one they do ("sytem", "histroy") would be kept as an
    # extra and never used: warn (once per field name in the summary, counted per pair).
    known_fields = (*KNOWN_FIELDS, *source.spec.columns.values())
    score_fields = {key for both in SCORE_FIELDS for key in both}
    typos: dict[str, str | None] = {}
    # Every column declared in dataset_info.json must be a field of the data: a misspelt "system" column would
    # drop every system prompt without a word; a misspelt "chosen" one makes every row a bad row whose message
    # ("missing field 'better'") does not point at the mapping.
    declared = {name: column for name, column in source.spec.columns.items() if isinstance(column, str)}
    seen_keys: set[str] = set()
    records = 0  # JSON objects looked at
    complete = True  # every record of every file was looked at
    for path in source.files:
        if limit is not None and read >= limit:
            complete = False
            break
        # Stable default ids: "stem:line"; the whole path if another file already uses the stem.
        prefix = path.stem
        if used_prefixes.setdefault(prefix, path) != path:
            prefix = str(path)
        file_name = str(path)
        record_lines = _RecordLines(path)
        for item in iter_records(path):
            if isinstance(item, Problem):
                problems.add(item)
                continue
            kind, number, record = item
            if not isinstance(record, dict):
                problems.add(Problem(file_name, record_lines.location(kind, number), "",
                                     f"expected a JSON object, got {type(record).__name__}", FORMATS_HELP))
                continue
            records += 1
            if declared:
                seen_keys.update(record)
            pending.clear()
            try:
                fmt, pair = read_record(record)
                if is_empty_prompt(pair):  # before num_samples draws and validation splits: every caller alike
                    raise RecordError("prompt", "the prompt is empty or whitespace-only (its last turn has no text)",
                                      "write the question, or leave the row out")
                if pair.extra:
                    check_scores(pair.extra, warn)
            except RecordError as err:
                problems.add(Problem(file_name, record_lines.location(kind, number), err.field, err.message, err.suggestion))
                continue
            for key in pair.extra:
                if key in known_fields and not (key == "messages" and _repeats_the_pair(pair.extra[key], pair)):
                    warn(unread_kind(key, fmt), key, f"field {key!r} is not read in the {fmt} format; it is kept as "
                         "an extra field and not used", f"write the record in a format that has {key!r}, or remove it")
                    continue
                if key in score_fields:
                    continue
                if key not in typos:
                    typos[key] = closest_field(key, (*known_fields, *score_fields))
                if typos[key] is not None:
                    warn(misspelt_kind(key, typos[key]), key, f"field {key!r} is read by no format (did you mean "
                         f"{typos[key]!r}?); it is kept as an extra field and not used", f"rename it to {typos[key]!r}")
            for warning, field_name, message, suggestion in pending:
                warnings.add(warning, Problem(file_name, record_lines.location(kind, number), field_name, message, suggestion))
            if pair.extra.get("tie") is True:  # kept on the user's request (the exporters' opt-in), never unreported
                warnings.add("tie_read_in_order", Problem(file_name, record_lines.location(kind, number), "tie",
                                                          "the pair is marked as a tie; read in the file's order",
                                                          "leave ties out of the file to train on preferences only"))
            if pair.id is None:
                pair.id = f"{prefix}:{number}"
            if pair.source is None:
                pair.source = f"{file_name}:{number}" if kind == "line" else f"{file_name}#{number}"
            pairs.append(pair)
            formats[fmt] += 1
            read += 1
            if limit is not None and read >= limit:
                complete = False
                break
    missing = {name: column for name, column in declared.items() if column not in seen_keys}
    if missing and complete and records:
        names = ", ".join(f"{name!r}: {column!r}" for name, column in missing.items())
        fields = sorted(seen_keys)
        raise DataError(
            f"dataset {source.name!r}: dataset_info.json declares {plural('the column', len(missing))} {names}, but no record of "
            f"{', '.join(str(f) for f in source.files[:3])} has such a field (its fields: {', '.join(fields[:12])}); fix the "
            f"{plural('column name', len(missing))} in 'columns'"
            + (" or remove " + ("it" if len(missing) == 1 else "them") + " (their text would be left out of every prompt)"
               if all(name in _OPTIONAL_COLUMNS for name in missing) else ""))
    return read


def _num_samples(source: DatasetSource, pairs: list[PreferencePair], start: int, max_samples: int | None, seed: int,
                 notes: list[str]) -> int:
    """Replace `pairs[start:]` (every pair read from `source`) by LLaMA-Factory's `num_samples` draw and return
    how many are left: a random permutation of the n pairs cut to num_samples; when num_samples > n, all n pairs
    plus num_samples - n drawn again at random (with replacement); then `max_samples` keeps the first ones
    (LLaMA-Factory `data/loader.py` `_load_single_dataset`). Reproducible from `seed` and the dataset name.
    A repeated pair is a copy whose id gets "#repeat-K" (ids stay unique)."""
    read = pairs[start:]
    wanted, n = source.num_samples, len(read)
    if not n or wanted is None:
        return n
    rng = random.Random(f"{seed}:{source.name}")
    order = rng.sample(range(n), min(wanted, n)) + [rng.randrange(n) for _ in range(wanted - n)]
    if max_samples is not None:
        order = order[:max_samples]
    seen: Counter = Counter()
    chosen = []
    for i in order:
        pair = read[i]
        if seen[i]:
            pair = dataclasses.replace(pair, id=f"{pair.id}{REPEAT_MARK}{seen[i]}")
        seen[i] += 1
        chosen.append(pair)
    pairs[start:] = chosen
    repeated = max(wanted - n, 0) if max_samples is None else sum(k - 1 for k in seen.values())
    detail = [f"seed {seed}"]
    if repeated:
        detail.append(f"{count(repeated, 'pair')} repeated to reach it")
    if max_samples is not None and max_samples < wanted:
        detail.append(f"max_samples kept the first {len(chosen)}")
    notes.append(f"dataset {source.name!r}: num_samples {wanted} drawn at random from its {count(n, 'pair')} "
                 f"({'; '.join(detail)})")
    return len(chosen)


def load_pairs(dataset: str, dataset_dir: str = "data", skip_bad_rows: bool = False, max_samples: int | None = None,
               allow_empty: bool = False, options: OptionNames = NO_OPTIONS, seed: int = 42) -> LoadResult:
    """Read every pair of `dataset` (names from dataset_info.json, files or directories, comma-separated).

    `max_samples` caps the pairs taken from each dataset (LLaMA-Factory's meaning: the first ones). A
    dataset_info.json `num_samples` draws that many pairs at random (repeating pairs when it is more than the
    dataset has), reproducibly from `seed` (the training seed), as LLaMA-Factory does. Raises DataError
    listing problems unless `skip_bad_rows`; raises when no pair is left unless `allow_empty`.
    `options` names the calling command's options, so that errors name only options it has.
    """
    if max_samples is not None and max_samples < 0:
        raise DataError(f"max_samples must be >= 0, got {max_samples}")
    sources = resolve_dataset(dataset, dataset_dir, options)
    pairs: list[PreferencePair] = []
    formats: Counter = Counter()
    problems = SkipReport()
    per_dataset: dict[str, int] = {}
    used_prefixes: dict[str, Path] = {}
    warnings = WarningReport()
    notes: list[str] = []
    for source in sources:
        start = len(pairs)
        read = _read_source(source, max_samples if source.num_samples is None else None, pairs, formats, problems,
                            used_prefixes, warnings)
        if source.num_samples is not None:
            read = _num_samples(source, pairs, start, max_samples, seed, notes)
        per_dataset[source.name] = per_dataset.get(source.name, 0) + read
    if problems.count and not skip_bad_rows:
        raise DataError(_problems_message(dataset, problems, options))
    if not pairs and not allow_empty:
        detail = f"; {count(problems.count, 'bad row')} {plural('was', problems.count)} skipped: " + "; ".join(problems.reasons) if problems.count else ""
        raise DataError(f"dataset {dataset!r} has no usable preference pairs{detail}")
    return LoadResult(pairs=pairs, format_counts=formats, skipped=problems, sources=sources, pairs_per_dataset=per_dataset,
                      warnings=warnings, notes=notes)


def _problems_message(dataset: str, problems: SkipReport, options: OptionNames) -> str:
    lines = [f"{count(problems.count, 'problem')} reading dataset {dataset!r}:"]
    lines += [f"  {p}" for p in problems.problems[:MAX_LISTED_PROBLEMS]]
    if problems.count > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {problems.count - MAX_LISTED_PROBLEMS} more")
    if options.skip_bad_rows:
        lines.append(f"Fix them, or skip bad rows with {options.skip_bad_rows} (skipped rows are counted and reported).")
    else:
        lines.append("Fix them.")
    return "\n".join(lines)


def split_validation(pairs: Sequence[PreferencePair], val_size: float | int, seed: int = 42) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Reproducible train/validation split: `val_size` < 1 is a fraction, >= 1 a count of pairs.

    The same pairs, seed and val_size always give the same split; both parts keep the input order.
    """
    n = len(pairs)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or not math.isfinite(val_size) or val_size < 0:
        raise DataError(f"val_size must be a fraction in [0, 1) or a count >= 1, got {val_size!r}")
    if val_size == 0:
        return list(pairs), []
    if val_size < 1:
        n_val = math.ceil(n * val_size)
    elif float(val_size).is_integer():
        n_val = int(val_size)
    else:
        raise DataError(f"val_size {val_size} is neither a fraction below 1 nor a whole count of pairs")
    if n_val >= n:
        raise DataError(f"val_size {val_size!r} leaves no training pairs ({n_val} of {n} pairs for validation); use a smaller val_size")
    val_indices = set(random.Random(seed).sample(range(n), n_val))
    train = [p for i, p in enumerate(pairs) if i not in val_indices]
    val = [p for i, p in enumerate(pairs) if i in val_indices]
    return train, val
