"""Prompts to sample from: preference data or plain prompt files, as lists of chat messages.

The one reader of prompts (for `generate`, and anything else that needs "a file of prompts").
- Preference data in any format the data layer reads (file, directory, dataset name; detected by
  `chosen`/`rejected` in the first record): the pairs' prompts, through `load_pairs`.
- Plain prompt files (.jsonl/.json/.parquet), one record per prompt:
  `{"prompt": "text"}` or `{"prompt": [{"role", "content"}, ...]}`; `{"messages": [...]}` or
  `{"conversations": [...]}` (role/content or from/value turns; trailing assistant turns, as in
  SFT data, are dropped so the prompt ends with a user turn); `{"instruction", "input"}` (alpaca).
  Optional `system` and `id` fields.
Identical prompts are read once (counted). Bad rows fail loading with file, line and field,
unless `skip_bad_rows` (then they are counted).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from prefloop.data.formats import RecordError, Roles, check_prompt
from prefloop.data.loader import Problem, SkipReport, iter_records, load_pairs
from prefloop.data.schema import TEMPLATE_FIELDS, Message, has_text
from prefloop.data.words import count
from prefloop.errors import DataError

PLAIN_HELP = ('a prompt record is {"prompt": "text"}, {"prompt": [turns]}, {"messages": [turns]}, '
              '{"conversations": [turns]} or {"instruction": ..., "input": ...}')


@dataclass
class Prompt:
    messages: list[dict]
    id: str
    source: str

    @property
    def key(self) -> str:
        """Content hash of the messages: what makes two prompts the same (resuming, caching)."""
        return prompt_key(self.messages)


def prompt_key(messages: list[dict]) -> str:
    """Content hash of a conversation: roles, contents and each turn's template fields (tool calls,
    names, reasoning; turns without them hash as before, so existing outputs still match)."""
    turns = []
    for m in messages:
        fields = {k: m[k] for k in TEMPLATE_FIELDS if m.get(k) not in (None, "", [])}
        turns.append([m["role"], m["content"], fields] if fields else [m["role"], m["content"]])
    blob = json.dumps(turns, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


@dataclass
class PromptSet:
    prompts: list[Prompt]
    duplicates: int = 0
    trailing_answers_dropped: int = 0
    skipped: SkipReport = field(default_factory=SkipReport)
    kind: str = "prompts"  # or "preference pairs"

    def summary(self) -> str:
        text = f"{count(len(self.prompts), 'prompt')} (from {self.kind})"
        if self.duplicates:
            text += f"; {count(self.duplicates, 'duplicate prompt')} read once"
        if self.trailing_answers_dropped:
            text += (f"; {count(self.trailing_answers_dropped, 'conversation')} ended with an assistant turn, "
                     "which was dropped")
        if self.skipped.count:
            text += f"; skipped {count(self.skipped.count, 'bad row')}: " + "; ".join(self.skipped.reasons)
        return text


_ROLES = Roles({})


def plain_prompt(record: dict) -> tuple[list[dict], bool]:
    """(messages, dropped_trailing_answer) of one plain prompt record; RecordError when it has none."""
    dropped = False
    if "prompt" in record and isinstance(record["prompt"], str):
        turns = [{"role": "user", "content": record["prompt"]}]
    elif "instruction" in record and isinstance(record["instruction"], str):
        text = "\n".join(p for p in (record["instruction"], record.get("input")) if isinstance(p, str) and p)
        turns = [{"role": "user", "content": text}]
    else:
        key = next((k for k in ("prompt", "messages", "conversations") if k in record), None)
        if key is None:
            raise RecordError("", f"no prompt field (record keys: {sorted(record)[:12]})", PLAIN_HELP)
        turns = [m.to_dict() for m in _ROLES.messages(record[key], key)]
        while turns and turns[-1]["role"] == "assistant":
            turns.pop()
            dropped = True
    system = record.get("system")
    if isinstance(system, str) and system and not (turns and turns[0]["role"] == "system"):
        turns.insert(0, {"role": "system", "content": system})
    check_prompt([Message.from_dict(m) for m in turns], "prompt")
    if not any(m["role"] == "user" and has_text(m.get("content")) for m in turns):
        raise RecordError(_prompt_field(record), "the prompt has no text (every user turn is empty or blank)",
                          "write the question, or remove the row")
    return turns, dropped


def _prompt_field(record: dict) -> str:
    """The field a plain prompt record's text came from (for error messages)."""
    return next((k for k in ("prompt", "instruction", "messages", "conversations") if k in record), "prompt")


def _is_preference_data(path: Path) -> bool:
    if not path.is_file():
        return True  # a directory or dataset name: the data layer resolves it
    for item in iter_records(path):
        if isinstance(item, Problem):
            continue
        record = item[2]
        return isinstance(record, dict) and "chosen" in record and "rejected" in record
    return False


def read_prompts(source: str, skip_bad_rows: bool = False, dataset_dir: str = "data") -> PromptSet:
    """Every distinct prompt of `source` in file order (see the module docstring for formats)."""
    path = Path(source)
    if _is_preference_data(path):
        loaded = load_pairs(source, dataset_dir=dataset_dir, skip_bad_rows=skip_bad_rows)
        found = [Prompt(pair.prompt_messages(), pair.id or "", pair.source or "") for pair in loaded.pairs]
        result = PromptSet([], kind="preference pairs", skipped=loaded.skipped)
    else:
        found, result = [], PromptSet([])
        for item in iter_records(path):
            if isinstance(item, Problem):
                result.skipped.add(item)
                continue
            kind, number, record = item
            where = f"{kind} {number}"
            try:
                if not isinstance(record, dict):
                    raise RecordError("", f"expected a JSON object, got {type(record).__name__}", PLAIN_HELP)
                messages, dropped = plain_prompt(record)
            except RecordError as err:
                result.skipped.add(Problem(str(path), where, err.field, err.message, err.suggestion))
                continue
            result.trailing_answers_dropped += dropped
            rid = record.get("id")
            found.append(Prompt(messages, str(rid) if rid is not None else f"{path.stem}:{number}",
                                f"{path}:{number}" if kind == "line" else f"{path}#{number}"))
        if result.skipped.count and not skip_bad_rows:
            listed = "\n".join(f"  {p}" for p in result.skipped.problems[:20])
            raise DataError(f"{count(result.skipped.count, 'problem')} reading prompts from {source}:\n{listed}")
    seen: set[str] = set()
    for prompt in found:
        if prompt.key in seen:
            result.duplicates += 1
            continue
        seen.add(prompt.key)
        result.prompts.append(prompt)
    if not result.prompts:
        raise DataError(f"{source} holds no prompts; " + PLAIN_HELP)
    return result
