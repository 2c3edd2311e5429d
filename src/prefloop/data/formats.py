"""Readers for every accepted on-disk preference format, and the writer of the seed's format.

Each record (one JSON object / parquet row) is converted to a `PreferencePair`. The format is
detected from the record's keys and value types, or declared in `dataset_info.json`
(`formatting`, `columns`, `tags`, LLaMA-Factory's convention). Formats:

- ``seed``: ``conversations`` (``from``/``value`` turns) + ``chosen``/``rejected`` strings;
- ``sharegpt``: LLaMA-Factory ranking, ``chosen``/``rejected`` are message objects;
- ``alpaca``: LLaMA-Factory ranking, ``instruction``/``input``/``chosen``/``rejected``;
- ``trl_standard``: TRL ``prompt``/``chosen``/``rejected`` strings;
- ``trl_conversational``: TRL ``role``/``content`` lists, explicit or implicit prompt (the turns chosen
  and rejected share). A string ``prompt`` is removed from the start of chosen/rejected lists that repeat
  it; next to whole conversations it is ignored, as TRL ignores it, and when it is not one of their
  shared user turns the reader warns (the loader counts such pairs);
- ``hh``: Anthropic HH-RLHF ``\\n\\nHuman:`` / ``\\n\\nAssistant:`` transcripts.

An answer turn keeps what it carries besides its text, as a prompt turn does: tool calls, reasoning,
a name (`PreferencePair.chosen_fields`), and LLaMA-Factory's ``function_call`` role
(`PreferencePair.chosen_role`). Whether the chat template renders them is known only at encoding: a
pair whose template would drop them is refused there, per pair and counted (`data/encode.py`).

A reader raises `RecordError` (field + what is wrong + what to do); the loader adds file and line. What
is read but worth a word (an ignored prompt string) goes to the reader's `warn` callback.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from prefloop.data.dimensions import dimension_problem
from prefloop.data.schema import REASONING_FIELDS, TEMPLATE_FIELDS, Message, PreferencePair, not_a_number
from prefloop.data.words import count

# warn(kind, field, message, suggestion): a record was read, but something in it was ignored; `kind`
# (one of WARNINGS) is what the loader counts.
Warn = Callable[[str, str, str, str], None]

# Warning kinds -> what the counted pairs had, in words.
WARNINGS = {
    "prompt_string_ignored": "a prompt string that is none of the user turns chosen and rejected share "
                             "(ignored: the shared turns are the prompt, as TRL reads it)",
    "scores_contradict_label": "chosen/rejected scores that rate the rejected answer higher: read as labeled "
                               "(chosen is preferred), as TRL and LLaMA-Factory read it; if the scores are right, swap "
                               "chosen and rejected in the file, or give them as `dimensions` and let pref_dimensions "
                               "(dimension_conflicts: flip) direct the pair",
    "scores_tied": "equal chosen/rejected scores: read as labeled (chosen is preferred); leave ties out of the file "
                   "to train on preferences only",
    "tie_read_in_order": "a tie (\"tie\": true, as `export --include-ties` and `pairs-from-ratings --ties keep` "
                         "write them on request): read as chosen > rejected in the file's order (or as "
                         "pref_dimensions decide); leave ties out of the file to train on preferences only",
}


_MISSPELT = "misspelt_field:"
_UNREAD = "unread_field:"


def misspelt_kind(key: str, known: str) -> str:
    """The warning kind for a record field `key` that looks like a misspelling of the field `known`."""
    return f"{_MISSPELT}{key}:{known}"


def unread_kind(key: str, fmt: str) -> str:
    """The warning kind for a field `key` that some format reads but the record's format `fmt` does not."""
    return f"{_UNREAD}{key}:{fmt}"


def _warning_text(kind: str) -> str:
    if kind.startswith(_UNREAD):
        key, fmt = kind[len(_UNREAD):].rsplit(":", 1)
        return (f"a field {key!r}, which the {fmt} format does not read (kept as an extra field, not used): "
                f"write the record in a format that has {key!r}, or remove it")
    if kind.startswith(_MISSPELT):
        key, known = kind[len(_MISSPELT):].rsplit(":", 1)
        return (f"a field {key!r}, which no format reads (kept as an extra field, not used): did you mean {known!r}? "
                f"rename it, or it is left out of training")
    return WARNINGS.get(kind, kind)


def warning_lines(kinds: Mapping[str, int]) -> list[str]:
    """One line per warning kind: "N pairs had ..." (for the load summary and `data check`)."""
    return [f"{count(n, 'pair')} had {_warning_text(kind)}" for kind, n in kinds.items()]


# Every field some reader takes from a record: an unread field one typo away from one of these is reported.
KNOWN_FIELDS = ("conversations", "messages", "chosen", "rejected", "prompt", "instruction", "input", "system",
                "history", "tools", "id", "weight", "margin", "dimensions", "source")


# Per-answer scores (UltraFeedback-binarized writes score_chosen/score_rejected): kept with the pair (`extra`),
# checked, and compared with the label; the label decides, as in TRL and LLaMA-Factory (which ignore them).
SCORE_FIELDS = (("chosen_score", "rejected_score"), ("score_chosen", "score_rejected"))


def check_scores(extra: Mapping[str, Any], warn: Warn) -> None:
    """Check a pair's per-answer scores (SCORE_FIELDS) in its unread fields: both must be numbers (RecordError
    otherwise, one alone included: no comparison can be made); a higher rejected score or a tie is warned
    about (kinds "scores_contradict_label", "scores_tied"), the pair is read as labeled."""
    for chosen_key, rejected_key in SCORE_FIELDS:
        present = [k for k in (chosen_key, rejected_key) if extra.get(k) is not None]
        if not present:
            continue
        if len(present) == 1:
            other = rejected_key if present[0] == chosen_key else chosen_key
            raise RecordError(other, f"{present[0]!r} is given but {other!r} is not: one score cannot be compared",
                              f"add {other!r}, or remove {present[0]!r}")
        for key in present:
            problem = not_a_number(extra[key])
            if problem:
                raise RecordError(key, f"{key!r} must be a finite number: {problem}", f"write {key!r} as a number")
        chosen, rejected = extra[chosen_key], extra[rejected_key]
        if rejected > chosen:
            warn("scores_contradict_label", rejected_key, f"{rejected_key!r} ({rejected}) is higher than {chosen_key!r} "
                 f"({chosen}); the pair is read as labeled (chosen preferred)",
                 "swap chosen and rejected if the scores are right, or drop the pair")
        elif rejected == chosen:
            warn("scores_tied", rejected_key, f"{chosen_key!r} and {rejected_key!r} are equal ({chosen}); read as labeled",
                 "leave ties out of the file")


def _typo_distance(a: str, b: str, limit: int) -> int:
    """Edit distance with adjacent transpositions (optimal string alignment), case-insensitive; > limit as limit + 1."""
    a, b = a.lower(), b.lower()
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        if min(row) > limit:
            return limit + 1
        prev2, prev = prev, row
    return prev[-1]


def closest_field(key: str, known: Iterable[str]) -> str | None:
    """The field `key` is most likely a misspelling of (one edit or swap away, two for long names), or None.
    Short names (under 4 letters) and exact matches are never reported."""
    best, best_distance = None, None
    for name in known:
        if name == key or len(name) < 4:
            continue
        limit = 2 if len(name) >= 8 else 1
        distance = _typo_distance(key, name, limit)
        if distance <= limit and (best_distance is None or distance < best_distance):
            best, best_distance = name, distance
    return best


def _no_warning(kind: str, field: str, message: str, suggestion: str) -> None:
    return None


FORMATS = ("seed", "sharegpt", "alpaca", "trl_standard", "trl_conversational", "hh")
# Values accepted for `formatting` in dataset_info.json ("trl" covers both TRL forms; LLaMA-Factory's
# "openai" is its sharegpt with role/content messages, read by the same reader).
FORMATTINGS = ("auto", "seed", "sharegpt", "openai", "alpaca", "trl", "hh")

FORMATS_HELP = (
    "accepted formats: the seed's {conversations, chosen, rejected}; LLaMA-Factory sharegpt ranking "
    "(chosen/rejected message objects) or alpaca ranking {instruction, input, chosen, rejected}; "
    "TRL {prompt, chosen, rejected} (strings or role/content lists); Anthropic HH transcripts "
    "(chosen/rejected starting with '\\n\\nHuman:')"
)

OPTIONAL_FIELDS = ("id", "weight", "margin", "dimensions", "source")

# On-disk role names -> internal roles (schema.ROLES). LLaMA-Factory's `observation` is a tool result.
DEFAULT_ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
    "ipython": "tool",
    "function_call": "function_call",
}
_PROMPT_SIDE = ("user", "tool")  # roles that may end a prompt / take even positions
_ANSWER_SIDE = ("assistant", "function_call")

# Keys that hold the pair itself; `extra` and provenance never overwrite them (they may set OPTIONAL_FIELDS).
_SEED_CORE = ("conversations", "chosen", "rejected", "tools")


class RecordError(ValueError):
    """One record cannot be read: `field` names the offending key, `suggestion` says what to do."""

    def __init__(self, field: str, message: str, suggestion: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.suggestion = suggestion


# ---------------------------------------------------------------------------------------------
# Writer: the seed's format (what `export`, `judge`, `data check --write-clean` produce)
# ---------------------------------------------------------------------------------------------


def to_seed_record(pair: PreferencePair, **provenance: Any) -> dict[str, Any]:
    """`pair` as one record of the seed's format; `provenance` adds top-level keys (e.g. judge="gpt-4o").

    Optional fields are written only when set; `pair.extra` keys are written back at top level, and
    each turn keeps its template fields (tool calls, names, reasoning), answers too (an answer turn with
    fields or the function_call role is written as a message object), so reading the record again
    gives the same pair. `provenance` may also set an optional field
    (e.g. source="judge:gpt-4o").
    """
    record: dict[str, Any] = {
        "conversations": [{"from": m.role, "value": m.content, **m.fields} for m in pair.prompt],
        "chosen": _answer_record(pair.answer("chosen")),
        "rejected": _answer_record(pair.answer("rejected")),
    }
    if pair.tools is not None:
        record["tools"] = pair.tools
    for name in OPTIONAL_FIELDS:
        value = getattr(pair, name)
        if value is not None:
            record[name] = value
    for key, value in list(pair.extra.items()) + list(provenance.items()):
        if key in _SEED_CORE:
            raise ValueError(f"provenance/extra key {key!r} would overwrite the pair's {key!r}")
        if value is not None:
            record[key] = value
    return record


def _answer_record(answer: Message) -> str | dict[str, Any]:
    """An answer as the seed writes it: its text, or a message object when the turn carries more."""
    if answer.role == "assistant" and not answer.fields:
        return answer.content
    return {"from": answer.role, "value": answer.content, **answer.fields}


def write_seed_jsonl(pairs: Iterable[PreferencePair], path: str | Path, **provenance: Any) -> int:
    """Write `pairs` as JSONL in the seed's format (UTF-8, one record per line); returns the count."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(to_seed_record(pair, **provenance), ensure_ascii=False))
            f.write("\n")
            count += 1
    return count


# ---------------------------------------------------------------------------------------------
# Format declaration (from dataset_info.json) and detection
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormatSpec:
    """How to read one dataset: `formatting` (one of FORMATTINGS), LLaMA-Factory `columns` and `tags`."""

    formatting: str = "auto"
    columns: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


AUTO = FormatSpec()


def _absent(record: Mapping[str, Any], key: str, what: str) -> RecordError:
    """The error for an answer `key` that is missing, or present but null (an empty parquet/CSV cell, JSON null)."""
    if key in record:
        return RecordError(key, f"{key!r} is null (an empty cell or JSON null), so the pair has no {what} answer",
                           f"fill in {key!r}, or leave the row out")  # the loader names the command's own skip option
    return RecordError(key, f"missing field {key!r}", f"add {key!r}: the {what} answer as a string or message object")


def detect_format(record: Mapping[str, Any]) -> str:
    """The format of one record from its keys and value types (see FORMATS); RecordError if none fits."""
    for key, what in (("chosen", "preferred"), ("rejected", "dispreferred")):
        if key in record and record[key] is None:
            raise _absent(record, key, what)
    if "conversations" in record or ("messages" in record and not _trl_with_messages_column(record)):
        chosen = record.get("chosen")
        return "sharegpt" if isinstance(chosen, (dict, list)) else "seed"
    if "instruction" in record:
        return "alpaca"
    chosen = record.get("chosen")
    if "chosen" not in record or "rejected" not in record:
        missing = [k for k in ("chosen", "rejected") if k not in record]
        raise RecordError(
            missing[0],
            f"missing field {missing[0]!r} (record keys: {sorted(record)[:12]})",
            "every preference record needs a chosen and a rejected answer (other column names: declare them as "
            "'columns' in dataset_info.json); " + FORMATS_HELP,
        )
    if isinstance(chosen, list):
        return "trl_conversational"
    if "prompt" in record:
        return "trl_conversational" if isinstance(record["prompt"], list) else "trl_standard"
    if isinstance(chosen, str) and _looks_like_hh(chosen):
        return "hh"
    raise RecordError(
        "prompt",
        f"cannot tell the format: no prompt, and chosen is not an HH transcript (keys: {sorted(record)[:12]})",
        "add a 'prompt' (TRL), 'conversations' (seed/sharegpt) or 'instruction' (alpaca) field; " + FORMATS_HELP,
    )


def _trl_with_messages_column(record: Mapping[str, Any]) -> bool:
    """TRL rows that also carry a `messages` column (UltraFeedback-binarized has prompt, chosen, rejected and
    messages = the chosen conversation): a `prompt`, or chosen as a whole conversation, makes the row TRL's."""
    chosen = record.get("chosen")
    if not isinstance(chosen, list):
        return False
    if "prompt" in record:
        return True
    first = chosen[0] if chosen else None
    role = first.get("role", first.get("from")) if isinstance(first, dict) else None
    return DEFAULT_ROLE_ALIASES.get(role) in ("system", "user") if isinstance(role, str) else False


def make_reader(spec: FormatSpec = AUTO, warn: Warn = _no_warning) -> Callable[[Mapping[str, Any]], tuple[str, PreferencePair]]:
    """A function record -> (format name, PreferencePair) for `spec`; built once per dataset.

    `warn(kind, field, message, suggestion)` is called for a record that is read but has something
    ignored (kind "prompt_string_ignored": a TRL string prompt that is none of the user turns its whole
    conversations share); the loader counts them per kind (see WARNINGS)."""
    if spec.formatting not in FORMATTINGS:
        raise ValueError(f"unknown formatting {spec.formatting!r}; known: {', '.join(FORMATTINGS)}")
    conv = _ConversationReader(spec)
    alpaca = _AlpacaReader(spec)
    trl = _TrlReader(spec, warn)
    by_format = {
        "seed": conv,
        "sharegpt": conv,
        "alpaca": alpaca,
        "trl_standard": trl,
        "trl_conversational": trl,
        "hh": _read_hh,
    }
    if spec.formatting in ("seed", "sharegpt", "openai"):
        return conv
    if spec.formatting == "alpaca":
        return alpaca
    if spec.formatting == "trl":
        return trl
    if spec.formatting == "hh":
        return _read_hh

    def read_auto(record: Mapping[str, Any]) -> tuple[str, PreferencePair]:
        return by_format[detect_format(record)](record)

    return read_auto


def record_to_pair(record: Mapping[str, Any], spec: FormatSpec = AUTO, warn: Warn = _no_warning) -> tuple[str, PreferencePair]:
    """Convert one record (convenience for single records; loops should reuse `make_reader`)."""
    if not isinstance(record, Mapping):
        raise RecordError("", f"expected a JSON object, got {type(record).__name__}", FORMATS_HELP)
    return make_reader(spec, warn)(record)


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


def _require_str(record: Mapping[str, Any], key: str, hint: str = "") -> str:
    value = record.get(key)
    if isinstance(value, str):
        return value
    if key not in record:
        raise RecordError(key, f"missing field {key!r}", hint or f"add {key!r} as a string")
    raise RecordError(key, f"{key!r} must be a string, got {_type_name(value)}", hint or f"make {key!r} a string")


def _content_text(content: Any, where: str) -> str:
    """Message content as text: a string, or OpenAI-style text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RecordError(where, f"message content must be a string, got {_type_name(content)}", "write the turn's text as a string")


def _tools_text(record: Mapping[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    raise RecordError(key, f"{key!r} must be a JSON string or list, got {_type_name(value)}", "describe the tools as a JSON string")


def _tool_call_error(where: str, message: str) -> RecordError:
    return RecordError(where, message, 'write each call as {"type": "function", "function": {"name": "...", '
                                       '"arguments": {...}}} (OpenAI / Hugging Face chat format)')


def template_fields(raw: Mapping[str, Any], role: str, where: str, content_key: str = "content") -> dict[str, Any]:
    """The turn's TEMPLATE_FIELDS (tool calls, tool-result id, name, reasoning), validated, as given.

    Raises RecordError naming the field: tool calls must be a list of calls on an assistant turn,
    `tool_call_id` belongs to a tool result, names and reasoning are strings.
    """
    fields: dict[str, Any] = {}
    for key in TEMPLATE_FIELDS:
        value = raw.get(key)
        if key == content_key or value is None or value == "" or value == []:
            continue
        at = f"{where}.{key}"
        if key == "tool_calls":
            if role not in _ANSWER_SIDE:
                raise RecordError(at, f"a {role!r} turn has tool_calls", "only an assistant turn calls tools")
            if not isinstance(value, list):
                raise _tool_call_error(at, f"'tool_calls' must be a list of calls, got {_type_name(value)}")
            for i, call in enumerate(value):
                function = call.get("function", call) if isinstance(call, dict) else None
                if not (isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"]):
                    raise _tool_call_error(f"{at}[{i}]", "a tool call needs a function name")
                arguments = function.get("arguments")
                if arguments is not None and not isinstance(arguments, (str, dict)):
                    raise _tool_call_error(f"{at}[{i}]", f"tool call arguments must be an object or a JSON string, "
                                                         f"got {_type_name(arguments)}")
        elif not isinstance(value, str):
            raise RecordError(at, f"{key!r} must be a string, got {_type_name(value)}", f"write {key!r} as a string")
        elif key == "tool_call_id" and role != "tool":
            raise RecordError(at, f"a {role!r} turn has a tool_call_id", "only a tool result answers a tool call")
        elif key in REASONING_FIELDS and role not in _ANSWER_SIDE:
            raise RecordError(at, f"a {role!r} turn has {key!r}", "only an assistant turn carries reasoning")
        fields[key] = value
    return fields


class Roles:
    """Role/content key names and role aliases, from LLaMA-Factory `tags` or the defaults."""

    def __init__(self, tags: Mapping[str, str]) -> None:
        self.role_key = tags.get("role_tag")
        self.content_key = tags.get("content_tag")
        self.aliases = dict(DEFAULT_ROLE_ALIASES)
        for tag, role in (
            ("user_tag", "user"),
            ("assistant_tag", "assistant"),
            ("observation_tag", "tool"),
            ("function_tag", "function_call"),
            ("system_tag", "system"),
        ):
            if tag in tags:
                self.aliases[tags[tag]] = role

    def message(self, raw: Any, where: str) -> Message:
        if not isinstance(raw, dict):
            raise RecordError(where, f"a turn must be an object with role and content, got {_type_name(raw)}", 'write turns as {"from": "user", "value": "..."}')
        role_key, content_key = self.role_key, self.content_key
        if role_key is None:
            if "from" in raw:
                role_key, content_key = "from", content_key or "value"
            elif "role" in raw:
                role_key, content_key = "role", content_key or "content"
            else:
                raise RecordError(where, f"turn has no 'from' or 'role' key (keys: {sorted(raw)})", "give each turn from/value or role/content (or declare tags in dataset_info.json)")
        elif content_key is None:  # tags declare role_tag only: the text is under a usual name
            content_key = next((k for k in ("content", "value", "text") if k in raw), "content")
        if role_key not in raw:
            raise RecordError(where, f"turn has no {role_key!r} key (keys: {sorted(raw)})", f"give each turn {role_key!r}/{content_key!r} as declared in tags")
        raw_role = raw[role_key]
        role = self.aliases.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            known = ", ".join(sorted(self.aliases))
            raise RecordError(f"{where}.{role_key}", f"unknown role {raw_role!r}", f"use one of: {known} (or declare custom tags in dataset_info.json)")
        fields = template_fields(raw, role, where, content_key)
        if content_key not in raw and "tool_calls" not in fields:
            raise RecordError(where, f"turn has no {content_key!r} key", f"add the turn's text under {content_key!r}")
        content = raw.get(content_key)
        if content is None and "tool_calls" in fields:  # an assistant turn that only calls tools (OpenAI: null)
            content = ""
        return Message(role, _content_text(content, f"{where}.{content_key}"), fields)

    def messages(self, raw: Any, where: str) -> list[Message]:
        if not isinstance(raw, list):
            raise RecordError(where, f"{where!r} must be a list of turns, got {_type_name(raw)}", 'write a list like [{"from": "user", "value": "..."}]')
        return [self.message(m, f"{where}[{i}]") for i, m in enumerate(raw)]


def check_prompt(prompt: list[Message], where: str) -> None:
    """A prompt: optional system first, then user/assistant alternating, ending with a user turn.

    A tool result stands where a user turn would (after the assistant turn that called the tool);
    several tool results in a row (answers to parallel calls) count as one turn.
    """
    if not prompt or (len(prompt) == 1 and prompt[0].role == "system"):
        raise RecordError(where, "the prompt has no user turn", "add at least one user turn before the answers")
    start = 1 if prompt[0].role == "system" else 0
    position = -1  # turn position; several tool results in a row (parallel tool calls) are one turn
    for i in range(start, len(prompt)):
        role = prompt[i].role
        if role == "system":
            raise RecordError(f"{where}[{i}]", "a system turn may only come first", "move the system prompt to the first turn (or the 'system' field)")
        if not (role == "tool" and i > start and prompt[i - 1].role == "tool"):
            position += 1
        expected = _PROMPT_SIDE if position % 2 == 0 else _ANSWER_SIDE
        if role not in expected:
            raise RecordError(
                f"{where}[{i}]",
                f"turn {i} is {role!r} but turns must alternate user/assistant (expected {' or '.join(expected)})",
                "merge consecutive turns of the same speaker, or add the missing turn",
            )
    if prompt[-1].role not in _PROMPT_SIDE:
        raise RecordError(
            where,
            f"the conversation does not end with a user turn (it ends with {prompt[-1].role!r})",
            "the prompt is every turn before the answers: drop the trailing assistant turn or move it into chosen/rejected",
        )


def _with_system(prompt: list[Message], system: Any, key: str) -> list[Message]:
    if system is None or system == "":
        return prompt
    if not isinstance(system, str):
        raise RecordError(key, f"{key!r} must be a string, got {_type_name(system)}", "write the system prompt as a string")
    if prompt and prompt[0].role == "system":
        if prompt[0].content == system:
            return prompt
        raise RecordError(key, f"both a {key!r} field and a system turn, with different texts", "keep only one of them")
    return [Message("system", system)] + prompt


def _optional(record: Mapping[str, Any]) -> dict[str, Any]:
    """The optional per-pair fields (id, weight, margin, dimensions, source), validated."""
    out: dict[str, Any] = {}
    value = record.get("id")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise RecordError("id", f"'id' must be a string or integer, got {_type_name(value)}", "use a unique string id per pair")
        out["id"] = str(value)
    for key in ("weight", "margin"):
        value = record.get(key)
        if value is None:
            continue
        problem = not_a_number(value)
        if problem:
            raise RecordError(key, f"{key!r} must be a finite number: {problem}", f"write {key!r} as a number (or leave it out)")
        if key == "weight" and value < 0:
            raise RecordError(key, f"'weight' must be >= 0, got {value}", "use a non-negative per-pair loss weight")
        out[key] = float(value)
    value = record.get("dimensions")
    if value is not None:
        if not isinstance(value, dict):
            raise RecordError("dimensions", f"'dimensions' must be an object of scores, got {_type_name(value)}", 'write e.g. {"helpfulness": 4, "safety": 5}')
        for name, entry in value.items():
            problem = dimension_problem(name, entry)
            if problem:
                raise RecordError(*problem)
        out["dimensions"] = value
    value = record.get("source")
    if value is not None:
        if not isinstance(value, str):
            raise RecordError("source", f"'source' must be a string, got {_type_name(value)}", "write the provenance as a string")
        out["source"] = value
    return out


def _extra(record: Mapping[str, Any], used: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in used and v is not None}


def _answer(raw: Any, roles: Roles, key: str) -> Message:
    """A response given as a string or a single message object, as an answer turn (its template fields
    and role kept: whether the chat template renders them is checked when the pair is encoded)."""
    if isinstance(raw, str):
        return Message("assistant", raw)
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if isinstance(raw, dict):
        message = roles.message(raw, key)
        if message.role not in _ANSWER_SIDE:
            raise RecordError(key, f"{key!r} is a {message.role!r} turn; the answer must be an assistant turn", "give the answer the assistant role/tag")
        return message
    if raw is None:
        raise RecordError(key, f"missing field {key!r}", f"add {key!r}: the answer as a string or message object")
    raise RecordError(key, f"{key!r} must be a string or a message object, got {_type_name(raw)}", f"write {key!r} as a string")


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


class _ConversationReader:
    """The seed's format and LLaMA-Factory sharegpt ranking (one reader: they differ in chosen's type)."""

    def __init__(self, spec: FormatSpec) -> None:
        cols = spec.columns
        self.messages_key = cols.get("messages")
        self.chosen_key = cols.get("chosen", "chosen")
        self.rejected_key = cols.get("rejected", "rejected")
        self.system_key = cols.get("system", "system")
        self.tools_key = cols.get("tools", "tools")
        self.roles = Roles(spec.tags)
        base = {self.chosen_key, self.rejected_key, self.system_key, self.tools_key, *OPTIONAL_FIELDS}
        self.used = frozenset(base | {self.messages_key or "conversations", "messages"})

    def __call__(self, record: Mapping[str, Any]) -> tuple[str, PreferencePair]:
        key = self.messages_key or ("conversations" if "conversations" in record else "messages")
        if key not in record:
            if self.messages_key is None:  # sharegpt's default column is conversations; messages is read too
                raise RecordError("conversations", "missing field 'conversations' (or 'messages')",
                                  "add the prompt turns as a list under 'conversations' (or set columns.messages in "
                                  "dataset_info.json to the field that holds them)")
            raise RecordError(key, f"missing field {key!r}", "add the prompt turns as a list (or set columns.messages in dataset_info.json)")
        prompt = self.roles.messages(record[key], key)
        prompt = _with_system(prompt, record.get(self.system_key), self.system_key)
        check_prompt(prompt, key)
        raw_chosen = record.get(self.chosen_key)
        for key, value, what in ((self.chosen_key, raw_chosen, "preferred"),
                                 (self.rejected_key, record.get(self.rejected_key), "dispreferred")):
            if value is None:
                raise _absent(record, key, what)
        chosen = _answer(raw_chosen, self.roles, self.chosen_key)
        rejected = _answer(record.get(self.rejected_key), self.roles, self.rejected_key)
        pair = _pair(prompt, chosen, rejected, tools=_tools_text(record, self.tools_key),
                     extra=_extra(record, self.used), **_optional(record))
        return ("seed" if isinstance(raw_chosen, str) else "sharegpt"), pair


class _AlpacaReader:
    """LLaMA-Factory alpaca ranking: instruction (+ input) is the user turn; optional system, history."""

    def __init__(self, spec: FormatSpec) -> None:
        cols = spec.columns
        self.prompt_key = cols.get("prompt", "instruction")
        self.query_key = cols.get("query", "input")
        self.chosen_key = cols.get("chosen", "chosen")
        self.rejected_key = cols.get("rejected", "rejected")
        self.system_key = cols.get("system", "system")
        self.history_key = cols.get("history", "history")
        self.tools_key = cols.get("tools", "tools")
        self.used = frozenset(
            {self.prompt_key, self.query_key, self.chosen_key, self.rejected_key, self.system_key, self.history_key,
             self.tools_key, *OPTIONAL_FIELDS}
        )

    def __call__(self, record: Mapping[str, Any]) -> tuple[str, PreferencePair]:
        instruction = _require_str(record, self.prompt_key, "add the instruction as a string")
        query = record.get(self.query_key)
        if query is not None and not isinstance(query, str):
            raise RecordError(self.query_key, f"{self.query_key!r} must be a string, got {_type_name(query)}", "write the input as a string")
        user = "\n".join(part for part in (instruction, query) if part)
        prompt: list[Message] = []
        history = record.get(self.history_key)
        if history:
            if not isinstance(history, list):
                raise RecordError(self.history_key, f"{self.history_key!r} must be a list of [question, answer] pairs", 'write e.g. [["Hi", "Hello!"]]')
            for i, turn in enumerate(history):
                if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
                    raise RecordError(f"{self.history_key}[{i}]", "each history entry must be [question, answer] strings", 'write e.g. ["Hi", "Hello!"]')
                prompt += [Message("user", turn[0]), Message("assistant", turn[1])]
        prompt.append(Message("user", user))
        prompt = _with_system(prompt, record.get(self.system_key), self.system_key)
        pair = PreferencePair(
            prompt=prompt,
            chosen=_require_str(record, self.chosen_key, "add the preferred answer as a string"),
            rejected=_require_str(record, self.rejected_key, "add the dispreferred answer as a string"),
            tools=_tools_text(record, self.tools_key),
            extra=_extra(record, self.used),
            **_optional(record),
        )
        return "alpaca", pair


def _pair(prompt: list[Message], chosen: Message, rejected: Message, **rest: Any) -> PreferencePair:
    """The pair of a prompt and two answer turns (text, role and template fields of each)."""
    return PreferencePair(prompt=prompt, chosen=chosen.content, rejected=rejected.content,
                          chosen_fields=chosen.fields, rejected_fields=rejected.fields,
                          chosen_role=chosen.role, rejected_role=rejected.role, **rest)


def shared_turns(chosen: list[Message], rejected: list[Message]) -> int:
    """How many leading turns chosen and rejected share, leaving each at least its last turn (the answer)."""
    limit = min(len(chosen), len(rejected)) - 1
    n = 0
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    return n


def split_shared_prompt(chosen: list[Message], rejected: list[Message], chosen_key: str = "chosen", rejected_key: str = "rejected") -> tuple[list[Message], Message, Message]:
    """Implicit prompt: the leading turns chosen and rejected share; each must then have one answer turn."""
    n = shared_turns(chosen, rejected)
    answers = []
    for key, messages in ((chosen_key, chosen), (rejected_key, rejected)):
        rest = messages[n:]
        if len(rest) != 1:
            raise RecordError(
                key,
                f"after the {n} turns chosen and rejected share, {key!r} has {len(rest)} turns (expected one answer)",
                "chosen and rejected must share every turn except the final assistant answer",
            )
        if rest[0].role not in _ANSWER_SIDE:
            raise RecordError(key, f"the last turn of {key!r} is {rest[0].role!r}, not an assistant answer", "end chosen and rejected with the assistant's answer")
        answers.append(rest[0])
    return list(chosen[:n]), answers[0], answers[1]


def _is_conversation(messages: list[Message]) -> bool:
    """Whether a chosen/rejected list is a whole conversation (it starts with a system or user turn)
    rather than only the answer."""
    return bool(messages) and messages[0].role not in _ANSWER_SIDE


def _check_prompt_string(prompt: str, chosen: list[Message], rejected: list[Message], key: str, warn: Warn) -> None:
    """A string prompt next to whole conversations is ignored (TRL's maybe_extract_prompt ignores it too);
    when it is not the text of a user turn they share, something may be lost: warn."""
    if not prompt.strip():
        return
    n = shared_turns(chosen, rejected)
    if not any(m.role == "user" and m.content.strip() == prompt.strip() for m in chosen[:n]):
        warn(
            "prompt_string_ignored",
            key,
            f"{key!r} is a string that is not one of the user turns chosen and rejected share "
            f"({_preview_text(prompt)}); it is ignored: the prompt is the turns they share, as TRL reads it",
            f"drop {key!r}, or give chosen and rejected as the answer turn only if {key!r} is the prompt",
        )


def _preview_text(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 3] + "...")


class _TrlReader:
    """TRL preference data: standard (strings) or conversational (role/content lists), explicit or implicit prompt."""

    def __init__(self, spec: FormatSpec, warn: Warn = _no_warning) -> None:
        self.warn = warn
        cols = spec.columns
        self.prompt_key = cols.get("prompt", "prompt")
        self.chosen_key = cols.get("chosen", "chosen")
        self.rejected_key = cols.get("rejected", "rejected")
        self.system_key = cols.get("system", "system")
        self.tools_key = cols.get("tools", "tools")
        self.roles = Roles(spec.tags)
        self.used = frozenset({self.prompt_key, self.chosen_key, self.rejected_key, self.system_key, self.tools_key, *OPTIONAL_FIELDS})

    def _responses(self, raw: Any, key: str, prompt: list[Message]) -> list[Message]:
        messages = self.roles.messages(raw, key)
        if len(messages) > len(prompt) and messages[: len(prompt)] == prompt:
            messages = messages[len(prompt):]  # the list repeats the prompt: keep what follows it
        return messages

    def __call__(self, record: Mapping[str, Any]) -> tuple[str, PreferencePair]:
        raw_prompt = record.get(self.prompt_key)
        raw_chosen = record.get(self.chosen_key)
        raw_rejected = record.get(self.rejected_key)
        for key, value in ((self.chosen_key, raw_chosen), (self.rejected_key, raw_rejected)):
            if value is None:
                raise _absent(record, key, "preferred" if key == self.chosen_key else "dispreferred")
            if not isinstance(value, (str, list)):
                raise RecordError(key, f"{key!r} must be a string or a list of turns, got {_type_name(value)}", f"write {key!r} as a string")
        if type(raw_chosen) is not type(raw_rejected):
            raise RecordError(self.rejected_key, "chosen and rejected must both be strings or both be lists of turns", "use the same form for both answers")

        prompt_field = self.prompt_key  # the field named when the prompt is not a valid conversation
        if isinstance(raw_chosen, str):
            if isinstance(raw_prompt, str):
                prompt, fmt = [Message("user", raw_prompt)], "trl_standard"
            elif isinstance(raw_prompt, list):
                prompt, fmt = self.roles.messages(raw_prompt, self.prompt_key), "trl_conversational"
            elif raw_prompt is None:
                raise RecordError(self.prompt_key, f"missing field {self.prompt_key!r}", "add the prompt as a string (or use full HH transcripts)")
            else:
                raise RecordError(self.prompt_key, f"{self.prompt_key!r} must be a string or a list of turns, got {_type_name(raw_prompt)}", "write the prompt as a string")
            chosen, rejected = Message("assistant", raw_chosen), Message("assistant", raw_rejected)
        else:
            fmt = "trl_conversational"
            if isinstance(raw_prompt, list):
                prompt = self.roles.messages(raw_prompt, self.prompt_key)
                chosen_msgs = self._responses(raw_chosen, self.chosen_key, prompt)
                rejected_msgs = self._responses(raw_rejected, self.rejected_key, prompt)
            elif isinstance(raw_prompt, str) or raw_prompt is None:
                # A list that repeats the string prompt as its first turn: keep what follows it.
                given = [] if raw_prompt is None else [Message("user", raw_prompt)]
                chosen_msgs = self._responses(raw_chosen, self.chosen_key, given)
                rejected_msgs = self._responses(raw_rejected, self.rejected_key, given)
                if raw_prompt is None or _is_conversation(chosen_msgs) and _is_conversation(rejected_msgs):
                    # Implicit prompt: the turns chosen and rejected share (TRL's maybe_extract_prompt also
                    # ignores a string prompt next to whole conversations); a string that is none of their
                    # user turns is reported, so that a prompt that disagrees with them is not lost unseen.
                    prompt, prompt_field = [], self.chosen_key
                    if raw_prompt is not None:
                        _check_prompt_string(raw_prompt, chosen_msgs, rejected_msgs, self.prompt_key, self.warn)
                else:
                    prompt = given
            else:
                raise RecordError(self.prompt_key, f"{self.prompt_key!r} must be a string or a list of turns, got {_type_name(raw_prompt)}", "write the prompt as a list of role/content turns")
            shared, chosen, rejected = split_shared_prompt(chosen_msgs, rejected_msgs, self.chosen_key, self.rejected_key)
            prompt = prompt + shared
        prompt = _with_system(prompt, record.get(self.system_key), self.system_key)
        check_prompt(prompt, prompt_field)
        pair = _pair(prompt, chosen, rejected, tools=_tools_text(record, self.tools_key),
                     extra=_extra(record, self.used), **_optional(record))
        return fmt, pair


_HH_MARKER = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_USED = frozenset({"chosen", "rejected", *OPTIONAL_FIELDS})


def _looks_like_hh(text: str) -> bool:
    return text.startswith("\n\nHuman:") or text.startswith("Human:")


def parse_hh_transcript(text: str, key: str) -> list[Message]:
    """`\\n\\nHuman: ...\\n\\nAssistant: ...` -> messages (contents stripped of surrounding whitespace).

    The dialogue alternates, so a marker of the speaker who is already talking does not start a new
    turn: it is text of the current turn (e.g. a user quoting "\\n\\nHuman: ..."), kept as written.
    """
    if text.startswith("Human:"):
        text = "\n\n" + text
    markers = list(_HH_MARKER.finditer(text))
    head = text[: markers[0].start()] if markers else text
    if head.strip():
        raise RecordError(key, f"text before the first 'Human:' turn: {head[:40]!r}", "start the transcript with '\\n\\nHuman:'")
    turns: list[list[str]] = []  # [speaker, text]
    for i, marker in enumerate(markers):
        body = text[marker.end() : markers[i + 1].start() if i + 1 < len(markers) else len(text)]
        if turns and turns[-1][0] == marker.group(1):
            turns[-1][1] += marker.group(0) + body
        else:
            turns.append([marker.group(1), body])
    if len(turns) < 2:
        raise RecordError(key, "an HH transcript needs at least one Human and one Assistant turn", "write '\\n\\nHuman: question\\n\\nAssistant: answer'")
    return [Message(_HH_ROLES[speaker], body.strip()) for speaker, body in turns]


def _read_hh(record: Mapping[str, Any]) -> tuple[str, PreferencePair]:
    chosen_text = _require_str(record, "chosen", "add the full chosen transcript as a string")
    rejected_text = _require_str(record, "rejected", "add the full rejected transcript as a string")
    chosen_msgs = parse_hh_transcript(chosen_text, "chosen")
    rejected_msgs = parse_hh_transcript(rejected_text, "rejected")
    prompt, chosen, rejected = split_shared_prompt(chosen_msgs, rejected_msgs)
    check_prompt(prompt, "chosen")
    return "hh", _pair(prompt, chosen, rejected, extra=_extra(record, _HH_USED), **_optional(record))
