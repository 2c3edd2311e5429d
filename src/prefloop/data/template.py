"""Chat templates: the tokenizer's own Jinja template, or a built-in one chosen by name.

A `ChatTemplate` renders a conversation (a list of {"role", "content"} dicts, optionally starting
with a system message) to the text a model sees. Training (`encode.py`), generation and serving
all render through `ChatTemplate.render`, so a model is trained on exactly the format it is
prompted with.

Built-in templates are Jinja strings written to render the same text as the chat templates of
the model families they are named after (rendered with the same Jinja environment transformers'
`apply_chat_template` uses). They serve tokenizers that ship without a template (base models).

Besides rendering, a template tells the encoder where a reply ends: `end_of_turn` is the string
that closes an assistant turn (`<|im_end|>`, `<|eot_id|>`, the EOS token, ...), and
`reply_trailer` is what the template writes after it at the end of a conversation (ChatML's
"\\n"). A model stops generating at the end-of-turn token, so the trailer is never generated and
is not part of a training sequence (see `training_text`).

This module is also the one definition of the tokens that end a reply (`stop_token_ids`, and their
texts `stop_strings`: training's sample answers, generation and serving stop on them, and the encoder
removes them from the end of answers written with them) and of the tokenizer's special and added
tokens (`special_token_text`, `special_strings`). `answer_text` / `is_empty_answer` / `answer_key` say what
an answer is without a given tokenizer's stop strings: the encoder's count of empty answers and `data
check`'s empty and identical checks (which strip nothing without a tokenizer).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

from prefloop.data.schema import REASONING_FIELDS
from prefloop.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# The literal "{eos}" in a built-in's end of turn means "the tokenizer's EOS token".
EOS = "{eos}"

_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2.5-Instruct: ChatML with a default system prompt when the conversation has none.
_QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
_QWEN = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>system\n" + _QWEN_DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if not (loop.first and message['role'] == 'system') %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-3-Instruct: BOS, header-wrapped roles, trimmed contents, <|eot_id|> after every turn.
_LLAMA3 = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Mistral-7B-Instruct v0.3 (tokenizer V3) as mistral-common writes it: [INST] blocks, replies are
# " " + trimmed content + EOS, user/assistant alternate, and the system prompt joins the last
# *user* message (the Hugging Face template's `loop.last` would drop it once a reply follows,
# so a prompt would not be a prefix of its answered conversation).
_MISTRAL = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set loop_messages = messages %}{% endif %}"
    "{% set ns = namespace(last_user=-1) %}"
    "{% for message in loop_messages %}{% if message['role'] == 'user' %}{% set ns.last_user = loop.index0 %}"
    "{% endif %}{% endfor %}"
    "{{ bos_token }}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('mistral template: after an optional system message, roles must alternate "
    "user/assistant/user/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.index0 == ns.last_user and system_message is defined %}"
    "{{ '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] | trim + eos_token }}"
    "{% else %}{{ raise_exception('mistral template: only system, user and assistant roles are supported') }}"
    "{% endif %}"
    "{% endfor %}"
)

# Gemma 3 (text): BOS, the system prompt is prepended to the first user turn, the assistant role
# is called "model", contents are trimmed.
_GEMMA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('gemma template: after an optional system message, roles must alternate "
    "user/assistant/user/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Phi-3.5-mini-instruct: <|role|> headers, <|end|> after every turn, EOS at the very end of a
# finished conversation.
_PHI3 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}"
    "{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# Stanford Alpaca: a system paragraph (by default Alpaca's own), then "### Instruction:" /
# "### Response:" blocks; EOS and a blank line after each reply (as LLaMA-Factory's `alpaca`).
# One difference from LLaMA-Factory 0.9.5: its alpaca writes a system message as given, with the blank
# line only inside its default system text, so a custom system runs straight into the first block
# ("Be brief.### Instruction:"); here every system paragraph, default or custom, is followed by "\n\n"
# ("Be brief.\n\n### Instruction:", as Alpaca's own prompt is laid out). Token ids for data with a
# custom system therefore differ from LLaMA-Factory's by that separator (tests/test_template.py).
_ALPACA_DEFAULT_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
_ALPACA = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\n\n' }}{% set loop_messages = messages[1:] %}"
    "{% else %}{{ '" + _ALPACA_DEFAULT_SYSTEM + "\n\n' }}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n### Response:\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + '\n\n' }}"
    "{% endif %}"
    "{% endfor %}"
)

# Vicuna v1.1 (FastChat): "SYSTEM USER: q ASSISTANT: a</s>USER: ..."; the generation prompt
# ends with "ASSISTANT:" and the reply starts with a space.
_VICUNA_DEFAULT_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_VICUNA = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + ' ' }}{% set loop_messages = messages[1:] %}"
    "{% else %}{{ \"" + _VICUNA_DEFAULT_SYSTEM + " \" }}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# LLaMA-Factory's `default` template: "System: ...<eos>\nHuman: ...<eos>\nAssistant:...<eos>\n".
_DEFAULT = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ 'System: ' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'Human: ' + message['content'] + eos_token + '\nAssistant:' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class BuiltinTemplate:
    source: str  # Jinja, rendered like transformers' apply_chat_template
    end_of_turn: str  # what closes an assistant turn; EOS = the tokenizer's EOS token
    about: str
    # Control tokens the template writes, which the family's tokenizers hold as single tokens.
    control_tokens: tuple[str, ...] = ()


_CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {
    "qwen": BuiltinTemplate(_QWEN, "<|im_end|>", "ChatML with Qwen2.5's default system prompt", _CHATML_TOKENS),
    "chatml": BuiltinTemplate(_CHATML, "<|im_end|>", "ChatML, no default system prompt", _CHATML_TOKENS),
    "llama3": BuiltinTemplate(
        _LLAMA3, "<|eot_id|>", "Llama-3-Instruct", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    ),
    "mistral": BuiltinTemplate(_MISTRAL, EOS, "Mistral-7B-Instruct v0.3 [INST] format", ("[INST]", "[/INST]")),
    "gemma": BuiltinTemplate(
        _GEMMA, "<end_of_turn>", "Gemma 3 (system prompt joins the first user turn)",
        ("<start_of_turn>", "<end_of_turn>"),
    ),
    "phi3": BuiltinTemplate(
        _PHI3, "<|end|>", "Phi-3.5-mini-instruct", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
    ),
    "alpaca": BuiltinTemplate(_ALPACA, EOS, "Stanford Alpaca ### Instruction / ### Response"),
    "vicuna": BuiltinTemplate(_VICUNA, EOS, "Vicuna v1.1 USER: / ASSISTANT:"),
    "default": BuiltinTemplate(_DEFAULT, EOS, "LLaMA-Factory's default Human: / Assistant:"),
}

_PROBE_USER = "prefloopprobequestion"
_PROBE_REPLY = "prefloopprobereply"


def _field_probes() -> dict[str, tuple[list[dict], bool, tuple[str, ...]]]:
    """What a template must write to render each kind of turn content beyond role and text:
    kind -> (conversation, add_generation_prompt, marker strings that must appear in the rendering).

    Kinds: "tool_calls" (the called function's name and arguments), "tool" (a tool result's text),
    "function_call" (LLaMA-Factory's function-call turn), "name" (a speaker's name on a user turn),
    and each reasoning field. A tool result's `tool_call_id` and `name` only link it to its call;
    templates may leave them out (Qwen2.5 does), so they are passed on but not required.
    """
    call = {"type": "function", "function": {"name": "prefloopprobetool", "arguments": {"q": "prefloopprobeargs"}}}
    user = {"role": "user", "content": _PROBE_USER}
    calling = {"role": "assistant", "content": "", "tool_calls": [call]}
    result = {"role": "tool", "content": "prefloopproberesult", "tool_call_id": "call_0", "name": "prefloopprobetool"}
    probes = {
        "tool_calls": ([user, calling, result], True, ("prefloopprobetool", "prefloopprobeargs")),
        "tool": ([user, calling, result], True, ("prefloopproberesult",)),
        "function_call": ([user, {"role": "function_call", "content": "prefloopprobecall"},
                           {"role": "tool", "content": "r"}], True, ("prefloopprobecall",)),
        "name": ([{"role": "user", "content": _PROBE_USER, "name": "prefloopprobename"}], True, ("prefloopprobename",)),
    }
    for key in REASONING_FIELDS:
        reply = {"role": "assistant", "content": _PROBE_REPLY, key: "prefloopprobereasoning"}
        probes[key] = ([user, reply], False, ("prefloopprobereasoning",))
    return probes


def field_kinds(messages: list[dict]) -> list[tuple[int, str]]:
    """(turn index, kind) of every turn content a template must render (see `_field_probes`)."""
    found = []
    for i, m in enumerate(messages):
        if m.get("tool_calls"):
            found.append((i, "tool_calls"))
        if m["role"] in ("tool", "function_call"):
            found.append((i, m["role"]))
        elif m.get("name"):
            found.append((i, "name"))
        found += [(i, key) for key in REASONING_FIELDS if m.get(key)]
    return found


_KIND_TEXT = {"tool_calls": "tool calls", "tool": "tool results", "function_call": "function-call turns",
              "name": "speaker names"}


def kind_text(kind: str) -> str:
    """A kind from `field_kinds` in words ("tool calls", "tool results", "reasoning_content", ...)."""
    return _KIND_TEXT.get(kind, kind)


def _for_template(messages: list[dict]) -> list[dict]:
    """Tool calls as chat templates expect them (Hugging Face convention): `arguments` an object, not
    the JSON string the OpenAI format sends; everything else as given."""
    if not any(m.get("tool_calls") for m in messages):
        return messages
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls:
            m = {**m, "tool_calls": [_call_for_template(c) for c in calls]}
        out.append(m)
    return out


def _call_for_template(call: dict) -> dict:
    function = call.get("function", call)
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            function = {**function, "arguments": parsed}
    return {**call, "function": function} if "function" in call else function


def known_templates() -> list[str]:
    return list(BUILTIN_TEMPLATES)


# The special-token variables a built-in template may use; prefloop renders a missing one as "".
_TOKEN_VARIABLES = ("bos_token", "eos_token")


def portable_source(source: str, tokenizer) -> str:
    """A built-in template's `source` as it is saved with a model of `tokenizer`: each special-token variable it
    uses that the tokenizer does not define (Qwen tokenizers have no BOS token) is bound to "" at its top, as
    prefloop renders it in training. transformers' `apply_chat_template` (and vLLM, TGI) pass only the tokens a
    tokenizer has, so without the binding a saved `llama3` template raised "'bos_token' is undefined" where
    training had rendered no BOS. With every variable defined the source is returned unchanged."""
    missing = [name for name in _TOKEN_VARIABLES if name in source and not getattr(tokenizer, name, None)]
    return "".join("{% set " + name + " = '' %}" for name in missing) + source


def repaired_builtin(tokenizer) -> str | None:
    """The `portable_source` of the tokenizer's chat template when it is a built-in's source saved as it was
    before the variables were bound (a model trained or merged by an earlier prefloop) and it needs them bound;
    else None (the template is left as it is)."""
    source = getattr(tokenizer, "chat_template", None)
    if not isinstance(source, str) or not any(spec.source == source for spec in BUILTIN_TEMPLATES.values()):
        return None
    fixed = portable_source(source, tokenizer)
    return fixed if fixed != source else None


# Conversations `check_saved_template` renders: with and without a system prompt, several turns, the
# generation prompt and a finished conversation (they alternate as mistral and gemma require).
_SAVE_CHECKS = (
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}], True),
    ([{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}], False),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2 + 2?"}], True),
)


def check_saved_template(saved_tokenizer, template: ChatTemplate, tokenizer, where: str) -> None:
    """Check that a saved model renders prompts as it was trained: `saved_tokenizer` (the tokenizer as saved, or
    loaded back from the saved folder `where`) renders sample conversations with transformers'
    `apply_chat_template`, as `prefloop generate`, `serve`, vLLM and any transformers user will, and the text and
    its token ids must be what `template` renders with the training `tokenizer` (at training start both are the
    same object, so only the text can differ; merge loads the saved folder back). Raises ConfigError (exit 2)
    saying what differs; nothing claims the model "loads with transformers" unless this passed."""
    for messages, generation_prompt in _SAVE_CHECKS:
        expected = template.render(messages, add_generation_prompt=generation_prompt)
        try:
            got = saved_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as err:  # noqa: BLE001 - re-raised with what it means
            raise ConfigError(
                f"{where}: the saved chat template ({template.name}) fails in transformers' apply_chat_template: "
                f"{err}; a model saved so could not be prompted outside prefloop. Choose another template "
                f"(`template: NAME`, known: {', '.join(known_templates())}) or leave it unset to use the "
                "tokenizer's own") from err
        ids = tokenizer(expected, add_special_tokens=False)["input_ids"]
        if got != expected or saved_tokenizer(got, add_special_tokens=False)["input_ids"] != ids:
            raise ConfigError(
                f"{where}: the saved tokenizer renders the {template.name} chat template differently from training "
                f"({got!r} instead of {expected!r} for a sample conversation): prompts to the saved model would not "
                "match what it was trained on. Choose another template (`template: NAME`) or leave it unset")


@lru_cache(maxsize=32)
def _compile(source: str):
    """Compile with the Jinja environment `apply_chat_template` uses, so renders match it exactly."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # pragma: no cover - older/newer transformers without the private helper
        return _compile_sandboxed(source)
    return _compile_jinja_template(source)


def _compile_sandboxed(source: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


# ---------------------------------------------------------------------------------------------
# Special tokens, and the tokens that end a reply
# ---------------------------------------------------------------------------------------------

# End-of-turn and EOS tokens of common chat model families. A tokenizer that holds one of them as a special
# or added token stops a reply there too (a chat model's generation config often lists several), unless its
# chat template writes that token inside an assistant turn (gpt-oss's harmony format ends the analysis
# message before the final answer with `<|end|>`): see `ChatTemplate.in_turn_tokens`.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>",
                      "<|end_of_text|>", "<eos>")


def special_token_text(tokenizer, added: bool = False) -> dict[int, str]:
    """Token id -> text of the tokenizer's special tokens (what decoding with skip_special_tokens leaves
    out); with `added`, also its other added tokens (e.g. Qwen3's `<think>`), which it matches whole in
    any text."""
    ids = getattr(tokenizer, "all_special_ids", None) or []
    tokens = getattr(tokenizer, "all_special_tokens", None) or []
    out = {int(i): str(t) for i, t in zip(ids, tokens)}
    for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if added or getattr(token, "special", False):
            out[int(i)] = str(token)
    return out


def special_strings(tokenizer) -> list[str]:
    """Special and added tokens (`special_token_text(added=True)`) as texts, longest first (so `<|im_end|>`
    wins over a shorter prefix)."""
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or [])
    tokens.update(special_token_text(tokenizer, added=True).values())
    return sorted((t for t in tokens if t), key=len, reverse=True)


def stop_token_ids(tokenizer, end_of_turn: str | None = None, model=None, in_turn: Iterable[str] = ()) -> list[int]:
    """Token ids that end a reply, each once, in this order: the end of turn (when it is one token), EOS
    (the tokenizer's, then the model's generation config's), and the END_OF_TURN_TOKENS that are special or
    added tokens of this tokenizer, except those in `in_turn` (tokens the chat template writes inside an
    assistant turn, `ChatTemplate.in_turn_tokens`: stopping there would cut the reply). A common token that
    is only ordinary vocabulary (a "</s>" BPE piece of a ChatML model) is text, never a stop.

    The one definition of where a reply ends: training's sample answers, generation and serving stop on
    these, and the encoder removes their texts (`stop_strings`) from the end of answers written with them.
    """
    ids: list[int] = []

    def add(token_id) -> None:
        if token_id is not None and int(token_id) not in ids:
            ids.append(int(token_id))

    if end_of_turn and end_of_turn.strip():
        eot = tokenizer(end_of_turn.strip(), add_special_tokens=False)["input_ids"]
        if len(eot) == 1:
            add(eot[0])
    add(tokenizer.eos_token_id)
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token_id in config_eos if isinstance(config_eos, (list, tuple)) else [config_eos]:
        add(token_id)
    special = {text: i for i, text in sorted(special_token_text(tokenizer, added=True).items(), reverse=True)}
    skip = set(in_turn)
    for token in END_OF_TURN_TOKENS:
        if token not in skip:
            add(special.get(token))
    return ids


def stop_strings(tokenizer, end_of_turn: str | None = None, model=None, in_turn: Iterable[str] = ()) -> tuple[str, ...]:
    """The texts of the stop tokens (`stop_token_ids`) that are special or added tokens, longest first:
    what data written for a trainer that appends EOS ends its answers with. A plain-text end of turn
    (Alpaca's EOS is a token, but "###" would be text) is not one of them."""
    text = special_token_text(tokenizer, added=True)
    found = {text[i] for i in stop_token_ids(tokenizer, end_of_turn, model, in_turn) if i in text and text[i]}
    return tuple(sorted(found, key=lambda t: (-len(t), t)))


def strip_stop_text(text: str, stops: Iterable[str]) -> tuple[str, int]:
    """`text` without the stop tokens written at its end, and how many were removed. Whitespace after a
    removed token goes with it; text without such an ending is returned unchanged."""
    stops = sorted(set(stops), key=len, reverse=True)
    removed = 0
    while stops:
        trimmed = text.rstrip()
        stop = next((t for t in stops if t and trimmed.endswith(t)), None)
        if stop is None:
            return text, removed
        text, removed = trimmed[: len(trimmed) - len(stop)], removed + 1
    return text, removed


def answer_text(text: str, stops: Iterable[str] = ()) -> str:
    """An answer's text as it is trained: without the stop tokens `stops` (the tokenizer's `stop_strings`, as
    the encoder removes them) written at its end. Nothing else is removed: for a tokenizer without "</s>" as
    a token, "Use <s>old</s>" is text the model is trained on, so with no `stops` the text is unchanged."""
    return strip_stop_text(text, stops)[0]


def is_empty_answer(text: str, fields: Mapping[str, Any] | None = None, stops: Iterable[str] = ()) -> bool:
    """The one definition of an empty answer (the encoder's count, `data check`'s empty check): nothing but
    whitespace once the stop tokens `stops` at its end are removed (`answer_text`), and no tool call.
    With a ChatML tokenizer's stops an answer of just "<|im_end|>" is empty; one that only calls a tool is not."""
    return not answer_text(text, stops).strip() and not (fields or {}).get("tool_calls")


def answer_key(role: str, text: str, fields: Mapping[str, Any] | None = None, stops: Iterable[str] = ()) -> tuple:
    """What makes two answers the same answer (`data check`'s identical check): role, `answer_text` (without
    the tokenizer's stop strings `stops`: with a ChatML tokenizer "A" and "A<|im_end|>" are the same answer)
    and template fields."""
    return role, answer_text(text, stops), json.dumps(dict(fields or {}), sort_keys=True, default=str)


class ChatTemplate:
    """A compiled chat template bound to a tokenizer's special tokens.

    Attributes a caller uses:
    - `name`: the built-in's name, or "tokenizer" for the tokenizer's own template.
    - `end_of_turn`: the string that closes an assistant reply; generation stops on it.
    - `reply_trailer`: what the template writes after the final `end_of_turn` (e.g. "\\n");
      it is not part of training sequences.
    - `appends_eos`: True when the template writes nothing after a reply, so the encoder appends
      the tokenizer's EOS token to each response (a response must end with one stop token).
    - `bos_token`: the BOS string when the rendering starts with it (then tokenization must not
      add another), else None.
    """

    def __init__(self, name: str, source: str, tokenizer, end_of_turn: str | None = None):
        self.name = name
        if name != "tokenizer":
            source = portable_source(source, tokenizer)  # what is saved with a model renders as training does
        self.source = source
        self._compiled = _compile(source)
        # Same variables apply_chat_template gives a template: the special tokens map.
        self._context = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
        if name != "tokenizer":
            self._context.setdefault("bos_token", tokenizer.bos_token or "")
            self._context.setdefault("eos_token", tokenizer.eos_token or "")
        self.supports_tools = "tools" in source
        self._renders: dict[str, bool] = {}
        self._in_turn: frozenset[str] | None = None
        self._specials = tuple(special_strings(tokenizer))
        self._probe(tokenizer, end_of_turn)

    # -- rendering ---------------------------------------------------------------------------

    def render(self, messages: list[dict], add_generation_prompt: bool = False, tools=None) -> str:
        """The conversation as text, exactly as the template writes it.

        With `add_generation_prompt=True` the text ends with the header that starts the
        assistant's reply: this is the prompt for generation and the `prompt_ids` of training.
        `tools` (a JSON string or a list of tool schemas) is passed to templates that use it.
        """
        if tools is not None and isinstance(tools, str):
            tools = json.loads(tools)
        # tools/documents are always defined (None when absent), as apply_chat_template does.
        return self._compiled.render(
            messages=_for_template(messages),
            add_generation_prompt=add_generation_prompt,
            tools=tools if self.supports_tools else None,
            documents=None,
            **self._context,
        )

    def renders(self, kind: str) -> bool:
        """Whether this template writes turn content of `kind` (a kind from `field_kinds`: "tool_calls",
        "tool", "function_call", "name" or a reasoning field), found by rendering a probe conversation
        and looking for its markers; a template that raises on it does not render it."""
        if kind not in self._renders:
            messages, generation_prompt, markers = _field_probes()[kind]
            try:
                text = self.render(messages, add_generation_prompt=generation_prompt)
            except Exception:  # noqa: BLE001 - e.g. raise_exception('only user and assistant roles')
                text = ""
            self._renders[kind] = all(marker in text for marker in markers)
        return self._renders[kind]

    def unrendered(self, messages: list[dict]) -> list[tuple[int, str]]:
        """(turn index, kind) of the turn contents in `messages` that this template would drop."""
        return [(i, kind) for i, kind in field_kinds(messages) if not self.renders(kind)]

    def check_renders(self, messages: list[dict], where: str = "messages") -> None:
        """Raise DataError naming the first turn (`where[i].field`) whose content this template would drop."""
        missing = self.unrendered(messages)
        if missing:
            i, kind = missing[0]
            field = "content" if kind in ("tool", "function_call") else kind
            raise DataError(f"{where}[{i}].{field}: the {self.name} chat template does not render {kind_text(kind)} "
                            f"({len(missing)} turn content(s) it would drop); use a model whose chat template renders "
                            "them, or leave them out")

    def training_text(self, messages: list[dict], tools=None) -> str:
        """A conversation that ends with the answer turn, as a training sequence holds it. The answer is
        the whole turn (`PreferencePair.answer`): its tool calls, reasoning or name are rendered as the
        template writes them (check `unrendered` first: a template may drop them).

        That is `render(messages)` cut right after the final reply's `end_of_turn` (the
        template's `reply_trailer`, e.g. ChatML's "\\n", is removed: the model stops at the
        end-of-turn token and never generates it), or `render(messages) + EOS` for templates
        that write no end of turn. Raises ValueError if the rendering does not end as probed.
        """
        text = self.render(messages, add_generation_prompt=False, tools=tools)
        if self.appends_eos:
            return text + self.end_of_turn
        ending = self.end_of_turn + self.reply_trailer
        if not text.endswith(ending):
            raise ValueError(f"the {self.name} template's rendering does not end with {ending!r}")
        return text[: len(text) - len(self.reply_trailer)] if self.reply_trailer else text

    def stop_token_ids(self, tokenizer, model=None) -> list[int]:
        """Token ids that end a generated reply (`stop_token_ids` with this template's end of turn).

        Pass them as `eos_token_id` to `model.generate`, so sampling stops where training ends.
        """
        return stop_token_ids(tokenizer, self.end_of_turn, model, self.in_turn_tokens())

    def stop_strings(self, tokenizer, model=None) -> tuple[str, ...]:
        """The texts of this template's stop tokens (`stop_strings`)."""
        return stop_strings(tokenizer, self.end_of_turn, model, self.in_turn_tokens())

    def in_turn_tokens(self) -> frozenset[str]:
        """The END_OF_TURN_TOKENS this template writes inside an assistant turn, which must not stop a reply:
        found by rendering probe replies (plain, with each reasoning field, with a tool call) and looking at
        the assistant turn without its end (the end of turn, then any special tokens at its very end).
        gpt-oss's harmony format writes `<|end|>` after the analysis message, before the final answer."""
        if self._in_turn is None:
            found: set[str] = set()
            user = {"role": "user", "content": _PROBE_USER}
            call = {"type": "function", "function": {"name": "prefloopprobetool", "arguments": {"q": "x"}}}
            replies = [{}, {"tool_calls": [call]}, *({key: "prefloopprobereasoning"} for key in REASONING_FIELDS)]
            for extra in replies:
                reply = {"role": "assistant", "content": _PROBE_REPLY, **extra}
                try:
                    prompt = self.render([user], add_generation_prompt=True)
                    text = self.render([user, reply])
                except Exception:  # noqa: BLE001 - a template that refuses the probe does not write it
                    continue
                body = text[len(prompt):] if text.startswith(prompt) else text[text.find(_PROBE_USER) + len(_PROBE_USER):]
                body = body.rstrip()
                while True:  # drop the turn's end: trailing special tokens and whitespace
                    ending = next((t for t in (self.end_of_turn, *self._specials) if t and body.endswith(t)), None)
                    if ending is None:
                        break
                    body = body[: len(body) - len(ending)].rstrip()
                found.update(t for t in END_OF_TURN_TOKENS if t in body)
            self._in_turn = frozenset(found)
        return self._in_turn

    # -- probing -----------------------------------------------------------------------------

    def _probe(self, tokenizer, end_of_turn: str | None) -> None:
        """Find what the template writes after a reply, using a marker reply."""
        probe = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}]
        try:
            text = self.render(probe)
        except Exception as err:  # noqa: BLE001 - a broken template is a config problem
            raise ConfigError(self._failure(tokenizer, err)) from err
        at = text.rfind(_PROBE_REPLY)
        if at < 0:
            raise ConfigError(f"chat template {self.name!r} does not write the assistant's reply; it cannot be trained on")
        after = text[at + len(_PROBE_REPLY) :]
        eos = tokenizer.eos_token
        if end_of_turn == EOS:
            if not eos:
                raise ConfigError(
                    f"template {self.name!r} ends replies with the tokenizer's EOS token, but the tokenizer has "
                    "none: set eos_token in the tokenizer, or choose another template"
                )
            end_of_turn = eos
        if end_of_turn is None:
            end_of_turn = self._find_end_of_turn(after, tokenizer)
        self.appends_eos = end_of_turn == ""
        if self.appends_eos:
            if not eos:
                raise ConfigError(
                    f"chat template {self.name!r} writes nothing after a reply and the tokenizer has no EOS "
                    "token, so a trained model could never stop: set eos_token, or choose a built-in template"
                )
            end_of_turn = eos
            after = ""
        elif not after.startswith(end_of_turn):
            raise ConfigError(  # a built-in whose declared end of turn is wrong: a bug here
                f"template {self.name!r} writes {after!r} after a reply, expected it to start with {end_of_turn!r}"
            )
        self.end_of_turn = end_of_turn
        self.reply_trailer = "" if self.appends_eos else after[len(end_of_turn) :]
        bos = tokenizer.bos_token
        self.bos_token = bos if bos and text.startswith(bos) else None

    def _failure(self, tokenizer, err: Exception) -> str:
        """What to do when the template fails on a plain conversation. For the tokenizer's own template the
        advice covers every command: training and `data check` can choose a built-in template, while
        generate, serve and eval prompt the model with the template it carries, which must be fixed there."""
        known = ", ".join(known_templates())
        if self.name != "tokenizer":
            return (f"chat template {self.name!r} fails on a plain [user, assistant] conversation: {err}. "
                    f"Choose another built-in template with `template: NAME` (known: {known}).")
        path = getattr(tokenizer, "name_or_path", "") or "the model"
        unset = [name for name in _TOKEN_VARIABLES if f"'{name}' is undefined" in str(err)]
        why = (f" (it uses {unset[0]}, which this tokenizer does not define: set {unset[0]} in its "
               "tokenizer_config.json, or bind it at the top of the template)") if unset else ""
        return (f"the chat template of {path} fails on a plain [user, assistant] conversation: {err}{why}. "
                f"To generate, serve or evaluate with this model, fix the chat_template in {path}'s "
                "tokenizer_config.json (or chat_template.jinja); to train on it or check data, a built-in template "
                f"can replace it: `template: NAME` in the training config, `--template NAME` for `prefloop data "
                f"check` (known: {known}).")

    @staticmethod
    def _find_end_of_turn(after: str, tokenizer) -> str:
        """The end of turn of an unknown template: up to the first special token after the reply,
        else the text after the reply without trailing whitespace ("" when there is none)."""
        best = None
        for token in special_strings(tokenizer):
            at = after.find(token)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, token)
        if best is not None:
            return after[: best[0] + len(best[1])]
        return after.rstrip()

    def __repr__(self) -> str:
        return f"ChatTemplate({self.name!r}, end_of_turn={self.end_of_turn!r}, reply_trailer={self.reply_trailer!r})"


def get_template(name: str | None, tokenizer, warn: bool = True) -> ChatTemplate:
    """The chat template to train and generate with.

    `name=None` (or "tokenizer"): the tokenizer's own Jinja template; otherwise a built-in one
    (see BUILTIN_TEMPLATES). Errors say which names exist. `warn=False`: no warning about control tokens
    the tokenizer splits (for a caller that only inspects the template; the run's own call warns once).
    """
    known = ", ".join(known_templates())
    if name is None or name == "tokenizer":
        source = getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):  # several named templates: the default one is for chat
            source = source.get("default")
        if not source:
            raise ConfigError(
                f"the tokenizer {getattr(tokenizer, 'name_or_path', '') or ''} has no chat template: "
                f"set template: NAME, known: {known}"
            )
        return ChatTemplate("tokenizer", source, tokenizer)
    key = name.strip().lower()
    if key not in BUILTIN_TEMPLATES:
        raise ConfigError(f"unknown chat template {name!r}: known templates are {known} (or leave template unset "
                          "to use the tokenizer's own)")
    spec = BUILTIN_TEMPLATES[key]
    template = ChatTemplate(key, spec.source, tokenizer, end_of_turn=spec.end_of_turn)
    missing = split_control_tokens(spec.control_tokens, tokenizer)
    if missing and warn:
        logger.warning(
            "template %s writes %s, which this tokenizer splits into several tokens; a model trained this way "
            "still works, but the family's own tokenizer (or adding them as special tokens and resizing the "
            "embeddings) matches its pretraining", key, ", ".join(missing),
        )
    return template


def split_control_tokens(tokens, tokenizer) -> list[str]:
    """The control tokens that the tokenizer does not hold as one token."""
    vocab = tokenizer.get_vocab()
    return [t for t in tokens if t not in vocab]


def dropped_by_builtin(tokenizer, name: str | None) -> list[str]:
    """What the tokenizer's own chat template renders and the built-in `name` would drop, in words ("tools",
    "tool calls", "tool results", "reasoning_content", ...), found with the same probes as `renders`.
    Empty when `name` is unset/"tokenizer" or the tokenizer has no template of its own. A caller that
    replaces a model's template with a built-in (a saved or merged model) warns with this list: a served
    model would silently lose e.g. tool calling."""
    if name is None or name == "tokenizer":
        return []
    try:
        own = get_template(None, tokenizer)
    except ConfigError:
        return []
    builtin = get_template(name, tokenizer, warn=False)  # the caller's own get_template warned already
    dropped = ["tools"] if own.supports_tools and not builtin.supports_tools else []
    kinds = ("tool_calls", "tool", "function_call", "name", *REASONING_FIELDS)
    return dropped + [kind_text(k) for k in kinds if own.renders(k) and not builtin.renders(k)]
