"""The pairwise judge prompt: built from criteria, editable as a template file.

A template is plain text with the placeholders `{question}`, `{answer_a}`, `{answer_b}` (required)
and `{criteria}` (optional); everything else is kept as written, braces included. The default
asks for a short comparison first, then the verdict as `[[A]]`, `[[B]]` or `[[C]]` (tie), and warns
the judge about position and length bias (the MT-Bench pairwise prompt, with criteria).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from prefloop.data.schema import REASONING_FIELDS
from prefloop.errors import ConfigError

DEFAULT_CRITERIA = ("helpfulness", "accuracy", "clarity", "safety")

DEFAULT_TEMPLATE = """\
Please act as an impartial judge and evaluate the quality of the responses provided by two AI \
assistants to the conversation shown below. Judge them on {criteria}. Begin by comparing the two \
responses and give a short explanation. Avoid any position bias: the order in which the responses \
were presented must not influence your decision. Do not let the length of the responses influence \
your evaluation, and do not favour either assistant's name. Be as objective as possible. After your \
explanation, give your final verdict on its own line, strictly in this format: [[A]] if assistant A \
is better, [[B]] if assistant B is better, [[C]] for a tie.

[The Start of the Conversation]
{question}
[The End of the Conversation]

[The Start of Assistant A's Answer]
{answer_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{answer_b}
[The End of Assistant B's Answer]
"""

RETRY_MESSAGE = ("Your reply did not end with a verdict in the required form. Reply with exactly one of "
                 "[[A]], [[B]] or [[C]] and nothing else.")

_PLACEHOLDER = re.compile(r"\{(question|answer_a|answer_b|criteria)\}")
_REQUIRED = ("question", "answer_a", "answer_b")


def parse_criteria(criteria: str | None) -> tuple[str, ...]:
    names = tuple(c.strip() for c in (criteria or "").split(",") if c.strip())
    return names or DEFAULT_CRITERIA


def criteria_text(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _call_text(call: dict) -> str:
    function = call.get("function", call)
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return f"[Tool call] {function.get('name', '')}({arguments})"


def _turn_text(m: dict) -> str:
    """One turn with its speaker label and everything the model saw in it: a speaker's name, the
    assistant's reasoning and tool calls, a tool result's function name."""
    label = m["role"].capitalize()
    if m.get("name"):
        label += f" ({m['name']})"
    parts = [f"[{label}]"]
    parts += [f"[Reasoning] {m[key]}" for key in REASONING_FIELDS if m.get(key)]
    if m.get("content"):
        parts.append(m["content"])
    parts += [_call_text(c) for c in m.get("tool_calls") or []]
    return "\n".join(parts)


def render_conversation(messages: list[dict]) -> str:
    """The prompt turns as text: one plain user turn is shown as is, longer conversations with speaker
    labels; tool calls, tool results, names and reasoning are shown, never dropped."""
    if len(messages) == 1 and messages[0]["role"] == "user" and set(messages[0]) <= {"role", "content"}:
        return messages[0]["content"]
    return "\n\n".join(_turn_text(m) for m in messages)


class JudgePrompt:
    """A template with its criteria; `fingerprint` changes whenever the judge would be asked differently."""

    def __init__(self, template: str = DEFAULT_TEMPLATE, criteria: tuple[str, ...] = DEFAULT_CRITERIA,
                 origin: str = "built-in template"):
        missing = [name for name in _REQUIRED if "{" + name + "}" not in template]
        if missing:
            raise ConfigError(f"the judge template ({origin}) lacks the placeholder(s) "
                              + ", ".join("{" + m + "}" for m in missing)
                              + "; a template needs {question}, {answer_a} and {answer_b} ({criteria} is optional)")
        self.template, self.criteria, self.origin = template, criteria, origin

    @classmethod
    def from_options(cls, criteria: str | None, template_file: str | None) -> "JudgePrompt":
        names = parse_criteria(criteria)
        if not template_file:
            return cls(DEFAULT_TEMPLATE, names)
        path = Path(template_file)
        if not path.is_file():
            raise ConfigError(f"judge template file {template_file} does not exist")
        return cls(path.read_text(encoding="utf-8"), names, origin=str(path))

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.template}\0{','.join(self.criteria)}".encode()).hexdigest()[:16]

    def render(self, messages: list[dict], answer_a: str, answer_b: str) -> str:
        """One pass over the template, so text inside the answers is never treated as a placeholder."""
        values = {"question": render_conversation(messages), "answer_a": answer_a, "answer_b": answer_b,
                  "criteria": criteria_text(self.criteria)}
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)
