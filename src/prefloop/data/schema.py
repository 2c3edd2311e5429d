"""The one internal representation of preference data.

Every reader in `formats.py` converts its on-disk format into `PreferencePair`;
nothing downstream (encoding, training, labeling, judging) knows about file formats.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any


def has_text(content: Any) -> bool:
    """True when a message's content (a string, or OpenAI content parts) holds non-blank text: the one
    definition of an empty prompt turn, for prompt files, `generate`, `serve` and `chat`."""
    if isinstance(content, str):
        return bool(content.strip())
    if isinstance(content, list):
        return any(isinstance(p, dict) and has_text(p.get("text")) or isinstance(p, str) and has_text(p)
                   for p in content)
    return False


REPEAT_MARK = "#repeat-"  # the id suffix of a copy dataset_info's num_samples adds (loader `_num_samples`)


def is_repeat(pair: "PreferencePair") -> bool:
    """True for a copy that dataset_info's num_samples added on purpose (not a duplicate in the data)."""
    return REPEAT_MARK in (pair.id or "")


def is_empty_prompt(pair: "PreferencePair") -> bool:
    """The one definition of an empty prompt: its last turn (the system message aside) is whitespace only.
    The loader makes such a record a bad row (file:line), for training, `data check` and evaluation alike."""
    return bool(pair.turns) and not pair.turns[-1].content.strip()


def is_number(value: Any) -> bool:
    """True for a finite int or float given as a number: not a bool, not a string like "0.5", not NaN/inf.

    The one number check for per-pair values (weight, margin, dimension scores, chosen/rejected scores),
    shared by every reader, `data check` and training."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def not_a_number(value: Any) -> str | None:
    """Why `value` is not a usable number (for an error message), or None when `is_number(value)`."""
    if is_number(value):
        return None
    if isinstance(value, bool):
        return f"{json.dumps(value)} is a boolean, not a number"
    if isinstance(value, str):
        return f"{value!r} is a string, not a number (write it without quotes)"
    if isinstance(value, (int, float)):
        return f"{value!r} is not a finite number"
    if value is None:
        return "null is not a number"
    return f"{type(value).__name__} {value!r} is not a number"


ROLES = ("system", "user", "assistant", "tool", "function_call")

# Message fields besides role and content that chat templates render (the OpenAI chat format and the
# Hugging Face chat-template conventions): an assistant turn's `tool_calls` (a list of
# {"type": "function", "function": {"name", "arguments"}}), a tool result's `tool_call_id` and `name`,
# a speaker's `name`, and the reasoning of reasoning models under the names templates use for it.
TEMPLATE_FIELDS = ("tool_calls", "tool_call_id", "name", "reasoning_content", "reasoning", "thinking")
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")


@dataclass(frozen=True, eq=False)
class Message:
    """One chat turn. `role` is one of ROLES (LLaMA-Factory's `observation` maps to `tool`).

    `fields` holds the turn's other template fields (TEMPLATE_FIELDS: tool calls, tool-result ids,
    names, reasoning), exactly as the data gave them; they travel with the turn to every rendering
    (the tokenizer's chat template, the judge's prompt, an endpoint's request). Equal turns have
    equal role, content and fields.
    """

    role: str
    content: str
    fields: dict[str, Any] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.role, self.content, self.fields) == (other.role, other.content, other.fields)

    def __hash__(self) -> int:
        return hash((self.role, self.content, json.dumps(self.fields, sort_keys=True, default=str)))

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content, **self.fields}

    @classmethod
    def from_dict(cls, message: dict[str, Any]) -> "Message":
        """A turn from a {"role", "content", ...} dict (fields outside TEMPLATE_FIELDS are not kept)."""
        fields = {k: message[k] for k in TEMPLATE_FIELDS if message.get(k) not in (None, "", [])}
        return cls(message["role"], message["content"], fields)


@dataclass
class PreferencePair:
    """A prompt (a conversation ending with a user turn) and two answers, one preferred.

    `prompt` holds the turns in order; an optional system prompt is its first message with
    role "system". `tools` is the tool/function description (a JSON string) when the data has
    one. `chosen` and `rejected` are the texts of the two answers. An answer turn may carry more
    than its text, as prompt turns do: `chosen_fields` / `rejected_fields` hold its TEMPLATE_FIELDS
    (tool calls, reasoning, a name) and `chosen_role` / `rejected_role` its role ("assistant", or
    LLaMA-Factory's "function_call"); `answer(which)` is the whole turn, which every rendering
    (the chat template, `messages`) receives, so a template that renders them trains on them and
    one that would drop them is refused per pair by the encoder.

    Optional fields: `id` (stable identifier, used in logs and reports), `weight` (per-pair loss
    weight), `margin` (a target reward margin, e.g. a judge's score gap), `dimensions`
    (multi-objective scores, e.g. {"helpfulness": 4}), `source` (file:line or provenance).
    """

    prompt: list[Message]
    chosen: str
    rejected: str
    tools: str | None = None
    id: str | None = None
    weight: float | None = None
    margin: float | None = None
    dimensions: dict[str, Any] | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    chosen_fields: dict[str, Any] = field(default_factory=dict)
    rejected_fields: dict[str, Any] = field(default_factory=dict)
    chosen_role: str = "assistant"
    rejected_role: str = "assistant"

    @property
    def system(self) -> str | None:
        if self.prompt and self.prompt[0].role == "system":
            return self.prompt[0].content
        return None

    @property
    def turns(self) -> list[Message]:
        """The prompt without the system message."""
        return [m for m in self.prompt if m.role != "system"]

    def answer(self, which: str) -> Message:
        """The answer turn `which` ("chosen" or "rejected"): its role, text and template fields."""
        if which not in ("chosen", "rejected"):
            raise ValueError(f"which must be 'chosen' or 'rejected', got {which!r}")
        return Message(getattr(self, f"{which}_role"), getattr(self, which), getattr(self, f"{which}_fields"))

    def answer_extras(self) -> list[str]:
        """What the answers hold beyond their text, as "chosen.tool_calls", "rejected.role", ...: their
        template fields and a role other than "assistant". A reader that takes only `chosen` / `rejected`
        (the texts) would drop these, so it must handle them or refuse the pair and say so."""
        found = []
        for which in ("chosen", "rejected"):
            found += [f"{which}.{key}" for key in getattr(self, f"{which}_fields")]
            if getattr(self, f"{which}_role") != "assistant":
                found.append(f"{which}.role")
        return found

    def messages(self, response: str | Message) -> list[dict[str, Any]]:
        """The whole conversation with `response` as the final turn (for chat templates): a text is a
        plain assistant turn, a Message (e.g. `answer("chosen")`) keeps its role and fields."""
        last = response if isinstance(response, Message) else Message("assistant", response)
        return [m.to_dict() for m in self.prompt] + [last.to_dict()]

    def swapped(self) -> "PreferencePair":
        """The pair with chosen and rejected exchanged (their texts, roles and fields; nothing else)."""
        return dataclasses.replace(
            self, chosen=self.rejected, rejected=self.chosen, chosen_fields=self.rejected_fields,
            rejected_fields=self.chosen_fields, chosen_role=self.rejected_role, rejected_role=self.chosen_role,
        )

    def prompt_messages(self) -> list[dict[str, Any]]:
        """The prompt turns as dicts, each with its template fields (tool calls, names, reasoning)."""
        return [m.to_dict() for m in self.prompt]


@dataclass
class EncodedPair:
    """Token ids of one pair, produced by `data/encode.py`.

    Invariant: `prompt_ids + chosen_ids` equals the token ids of the whole conversation rendered
    by the chat template (same for rejected). Responses end with the template's end-of-turn token.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    id: str | None = None
    weight: float = 1.0
    margin: float = 0.0
    prompt_truncated: bool = False
    response_truncated: bool = False
    index: int = -1  # position of the pair in the list given to `encode_pairs`

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) * 2 + len(self.chosen_ids) + len(self.rejected_ids)
