"""Batched text generation from a local causal LM: the one decode loop behind `serve`, `generate`
and a local judge.

Why not `model.generate`: every row of a batch here has its own sampling settings (temperature,
top-p, seed, stop strings, token budget), rows stream text as it is produced, and the loop
reports per-token log-probs the way the OpenAI API does. Prompts are left-padded so all rows
decode in lock-step with one KV cache.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from prefloop.data.template import get_template


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one sequence. `temperature == 0` is greedy; `seed` makes sampling reproducible."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    def for_sample(self, index: int) -> "SamplingParams":
        """Sample `index` of n from one request: seed + index, so the n samples differ yet repeat on rerun."""
        return self if self.seed is None else replace(self, seed=self.seed + index)


@dataclass
class TokenLogprob:
    """One generated token with its log-prob under the model (before temperature/top-p) and the
    `top_logprobs` most likely alternatives at that position."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)

    def to_openai(self) -> dict:
        return {
            "token": self.token,
            "logprob": self.logprob,
            "bytes": list(self.token.encode("utf-8")),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in self.top],
        }


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end of turn or a stop string) or "length" (token budget spent)
    logprobs: list[TokenLogprob] | None = None


# on_update(row, text_delta, new_logprobs, finished_sample_or_None): called from the decode loop.
UpdateCallback = Callable[[int, str, list, "Sample | None"], None]

_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def stop_token_ids(tokenizer, model=None, end_of_turn: str | None = None) -> set[int]:
    """Token ids that end the assistant's turn: the template's end-of-turn string, EOS from tokenizer
    and generation config, and common end-of-turn markers that are single tokens of this vocabulary."""
    ids: set[int] = set()
    if end_of_turn:
        eot = tokenizer(end_of_turn.strip(), add_special_tokens=False).input_ids
        if len(eot) == 1:
            ids.add(int(eot[0]))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.update(int(i) for i in (config_eos if isinstance(config_eos, (list, tuple)) else [config_eos]))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in _END_OF_TURN_TOKENS if t in vocab)
    return ids


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` might still grow into a stop string (or are an
    incomplete UTF-8 sequence), so a stream must not send them yet."""
    keep = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                keep = max(keep, k)
                break
    while keep < len(text) and text[len(text) - keep - 1] == "\ufffd":
        keep += 1
    return keep


class _Row:
    """Decode state of one sequence."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams):
        self.prompt_ids = prompt_ids
        self.params = params
        self.ids: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.text = ""
        self.sent = 0  # characters of text already handed to the callback
        self.sent_logprobs = 0
        self.finished: Sample | None = None
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(int(seed))


class LocalGenerator:
    """Generates chat completions from a loaded causal LM and its tokenizer."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.template = get_template(None, tokenizer)
        self.stop_ids = stop_token_ids(tokenizer, model, self.template.end_of_turn)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.stop_ids)
        config = getattr(model, "config", None)
        self.context_length = getattr(config, "max_position_embeddings", None)

    @classmethod
    def load(cls, path: str, adapter: str | None = None) -> "LocalGenerator":
        """Load model and tokenizer from `path` (GPU in bf16 when there is one, else CPU fp32)."""
        from prefloop.models import load_causal_lm, load_tokenizer

        device = "cuda" if torch.cuda.is_available() else None
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else None
        return cls(load_causal_lm(path, dtype=dtype, adapter=adapter, device=device), load_tokenizer(path))

    @property
    def device(self):
        return next(self.model.parameters()).device

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of the prompt (template rendered with the generation prompt; it holds any BOS)."""
        text = self.template.render(messages, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def generate(
        self, rows: list[tuple[list[int], SamplingParams]], on_update: UpdateCallback | None = None
    ) -> list[Sample]:
        """Decode all rows together; returns one Sample per row in order."""
        if not rows:
            return []
        states = [_Row(list(ids), params) for ids, params in rows]
        with torch.inference_mode():
            self._decode(states, on_update)
        return [s.finished for s in states]

    def _decode(self, states: list[_Row], on_update) -> None:
        device = self.device
        width = max(len(s.prompt_ids) for s in states)
        input_ids = torch.full((len(states), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(states), width), dtype=torch.long)
        for i, s in enumerate(states):
            input_ids[i, width - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids)
            mask[i, width - len(s.prompt_ids) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        for s in states:
            if s.params.max_new_tokens <= 0:
                self._finish(s, "length", on_update, states.index(s))
        while any(s.finished is None for s in states):
            logits = out.logits[:, -1, :].float().cpu()
            next_ids = torch.full((len(states),), self.pad_id, dtype=torch.long)
            for i, s in enumerate(states):
                if s.finished is None:
                    next_ids[i] = self._step(i, s, logits[i], on_update)
            if all(s.finished is not None for s in states):
                break
            mask = torch.cat([mask, torch.ones((len(states), 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=next_ids[:, None].to(device),
                attention_mask=mask,
                position_ids=positions,
                cache=out.cache,
                use_cache=True,
            )

    def _step(self, i: int, s: _Row, logits: torch.Tensor, on_update) -> int:
        """Pick row i's next token, update its text, and finish it on end-of-turn, stop string or budget."""
        token = _choose(logits, s.params, s.generator)
        if token in self.stop_ids:
            self._finish(s, "stop", on_update, i)
            return token
        s.ids.append(token)
        if s.params.logprobs:
            s.logprobs.append(self._token_logprob(logits, token, s.params.top_logprobs))
        s.text = self.tokenizer.decode(s.ids, skip_special_tokens=True)
        for stop in s.params.stop:
            at = s.text.find(stop, max(0, s.sent - len(stop)))
            if stop and at >= 0:
                s.text = s.text[:at]
                self._finish(s, "stop", on_update, i)
                return token
        if len(s.ids) >= s.params.max_new_tokens:
            self._finish(s, "length", on_update, i)
        elif on_update is not None:
            ready = len(s.text) - _held_back(s.text, s.params.stop)
            if ready > s.sent:
                on_update(i, s.text[s.sent : ready], s.logprobs[s.sent_logprobs :], None)
                s.sent, s.sent_logprobs = ready, len(s.logprobs)
        return token

    def _finish(self, s: _Row, reason: str, on_update, i: int) -> None:
        s.finished = Sample(s.text, list(s.ids), reason, list(s.logprobs) if s.params.logprobs else None)
        if on_update is not None:
            on_update(i, s.text[s.sent :], s.logprobs[s.sent_logprobs :], s.finished)

    def _token_logprob(self, logits: torch.Tensor, token: int, top_n: int) -> TokenLogprob:
        logps = torch.log_softmax(logits, dim=-1)
        top = []
        if top_n > 0:
            values, indices = logps.topk(min(top_n, logps.numel()))
            top = [(self.tokenizer.decode([int(t)]), float(v)) for v, t in zip(values, indices)]
        return TokenLogprob(self.tokenizer.decode([token]), float(logps[token]), top)


def _choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Greedy at temperature 0, else nucleus sampling (top-p) at the given temperature."""
    if params.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p  # keeps at least the top token
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
