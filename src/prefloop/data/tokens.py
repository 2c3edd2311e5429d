"""Fast, exact token ids for many texts: one Rust call per batch, and a shared prompt head.

Encoding a pair tokenizes its prompt and both answered conversations, so the prompt text is
tokenized three times. Fast (Rust) tokenizers split their input at special tokens and tokenize
the pieces between them independently, so when a generation prompt ends with a special token plus
a fixed header (ChatML's `<|im_start|>` + "assistant\\n"), the text before that token and the text
after it can be tokenized separately and joined: the prompt's head is tokenized once instead of
three times. Whether that holds for a tokenizer and template is not assumed: `find_prompt_split`
checks it on probe conversations (replies starting with spaces, newlines, punctuation, non-ASCII)
and returns None when any probe differs (e.g. SentencePiece "▁" prefixing the first piece only),
and the encoder then tokenizes whole texts.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefloop.data.template import ChatTemplate, special_strings


def batch_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of many strings in one call of the fast tokenizer (no special tokens added)."""
    if not texts:
        return []
    backend = fast_backend(tokenizer)
    if backend is not None:
        # The Rust tokenizer without offsets: ~4x faster than tokenizer(texts), same ids.
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def fast_backend(tokenizer):
    """The Rust tokenizer behind a fast tokenizer, when it can be called directly."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if (
        backend is not None
        and hasattr(backend, "encode_batch_fast")
        and backend.truncation is None
        and backend.padding is None
    ):
        return backend
    return None


@dataclass(frozen=True)
class PromptSplit:
    """Generation prompts end with `marker` (a special token + `tail`); split right after the token."""

    marker: str
    tail: str
    tail_ids: list[int]

    def cut(self, prompt: str) -> int | None:
        """Where to split a generation prompt (and its answered conversations), or None."""
        return len(prompt) - len(self.tail) if prompt.endswith(self.marker) else None


_PROBE_PROMPTS = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "ünïcödé 字 and more?"},
    ],
)
_PROBE_REPLIES = ("Hello there.", " leading space", "\nnew line", "  two spaces", "ünïcödé 字 x", "123", "!?", "\t tab")


def find_prompt_split(tokenizer, template: ChatTemplate) -> PromptSplit | None:
    """A verified `PromptSplit` for this tokenizer and template, or None (tokenize whole texts)."""
    if fast_backend(tokenizer) is None:
        return None
    try:
        prompts = [template.render(m, add_generation_prompt=True) for m in _PROBE_PROMPTS]
        answered = [
            [template.training_text(m + [{"role": "assistant", "content": r}]) for r in _PROBE_REPLIES]
            for m in _PROBE_PROMPTS
        ]
    except Exception:  # noqa: BLE001 - a template that fails on probes gets no shortcut
        return None
    last = max(
        ((prompts[0].rfind(t) + len(t), t) for t in special_strings(tokenizer) if prompts[0].rfind(t) >= 0),
        default=None,
    )
    if last is None:
        return None
    tail = prompts[0][last[0] :]
    split = PromptSplit(last[1] + tail, tail, batch_ids(tokenizer, [tail])[0] if tail else [])
    whole, parts = [], []
    for prompt, texts in zip(prompts, answered):
        cut = split.cut(prompt)
        if cut is None or not all(t.startswith(prompt) for t in texts):
            return None
        for text in (prompt, *texts):
            whole.append(text)
            parts += (text[:cut], text[cut:])
    whole_ids, part_ids = batch_ids(tokenizer, whole), batch_ids(tokenizer, parts)
    if any(ids != part_ids[2 * i] + part_ids[2 * i + 1] for i, ids in enumerate(whole_ids)):
        return None
    return split
