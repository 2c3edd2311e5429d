"""Batched text generation from a local causal LM: the one decode loop behind `serve`, `generate`
and a local judge.

Why not `model.generate`: every row of a batch here has its own sampling settings (temperature,
top-p, seed, stop strings, token budget), rows stream text as it is produced, and the loop
reports per-token log-probs the way the OpenAI API does. Prompts are left-padded so all rows
decode in lock-step with one KV cache.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from prefloop.attention_names import RUNS_SDPA
from prefloop.data.schema import has_text
from prefloop.data.template import get_template, special_token_text
from prefloop.errors import DataError


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one sequence. `temperature` below GREEDY_BELOW (0 included) is greedy; `seed`
    makes sampling reproducible. `top_k` (0 or less: off) and `top_p` filter as transformers'
    warpers do (see `sampling_logits`).

    `frequency_penalty`, `presence_penalty` and `logit_bias` ((token id, bias) pairs) change the
    logits before the choice as the OpenAI API defines them (see `adjust_logits`)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off (vLLM's -1 also means off)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty or self.logit_bias)

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
    # The bytes the token adds to the answer's text (and those each `top` entry would add):
    # `TokenBytes.in_text`. A token holding part of a multi-byte character decodes to "\ufffd" alone,
    # so its text cannot give them. None: the text's UTF-8.
    token_bytes: bytes | None = None
    top_bytes: list[bytes] | None = None

    def to_openai(self) -> dict:
        """The OpenAI `logprobs.content` entry. `bytes` are what the token adds to the text
        (`TokenBytes.in_text`), so the bytes of an answer's tokens join into exactly its text's UTF-8, even
        where a character spans tokens (what the field is for) and at the start of a SentencePiece
        tokenizer's text, whose decoder strips the first token's leading space (Llama 2, Mistral).
        `token` is the token decoded alone: for those tokenizers without its leading space anywhere,
        so the `token` strings need not join into the text; the bytes do."""
        top_bytes = self.top_bytes or [t.encode("utf-8") for t, _ in self.top]
        return {
            "token": self.token,
            "logprob": _finite(self.logprob),
            "bytes": list(self.token_bytes if self.token_bytes is not None else self.token.encode("utf-8")),
            "top_logprobs": [{"token": t, "logprob": _finite(lp), "bytes": list(b)}
                             for (t, lp), b in zip(self.top, top_bytes)],
        }


def _finite(logprob: float) -> float:
    """-inf (a token the model rules out) as -9999.0, as vLLM does: JSON has no infinity."""
    return max(logprob, -9999.0)


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end of turn or a stop string), "length" (token budget spent) or "cancelled"
    logprobs: list[TokenLogprob] | None = None


# on_update(row, text_delta, new_logprobs, finished_sample_or_None): called from the decode loop.
UpdateCallback = Callable[[int, str, list, "Sample | None"], None]

# Temperatures below this are greedy, as in vLLM (its _SAMPLING_EPS): dividing float32 logits by 1e-40
# gives inf and NaN, and argmax of those picked an arbitrary token (often end of turn: an empty answer).
GREEDY_BELOW = 1e-5

def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): the printable character standing for each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def _decoder_kinds(tokenizer) -> set[str]:
    """The decoder types of a fast tokenizer ("ByteLevel", "ByteFallback", "Metaspace", "Replace", ...)."""
    import json

    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return set()
    try:
        state = json.loads(decoder.__getstate__())
    except Exception:  # noqa: BLE001 - an unknown decoder: fall back to the decoded text
        return set()
    kinds, todo = set(), [state]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            kinds.add(node.get("type"))
            todo.extend(node.get("decoders") or [])
    return kinds


class TokenBytes:
    """token id -> the bytes that token stands for (for `logprobs`' `bytes`).

    Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM): the token's characters map back to bytes.
    SentencePiece with byte fallback (Llama 2, Mistral, Gemma): `<0xE2>` is that byte, "▁" a space.
    Special and added tokens: their text. Anything else: the token decoded alone.

    Calling it gives a token's own bytes; `in_text` gives what it adds to a decoded answer, which differs
    only at the start of the text under a decoder that strips leading spaces there (SentencePiece's
    `Strip` decoder in Llama 2 and Mistral, a Metaspace decoder that prepends "▁"): "▁Hello" is b" Hello"
    alone but adds b"Hello" as the first token, since the answer's text has no leading space."""

    def __init__(self, tokenizer, special: dict[int, str]):
        # added tokens (special or not: Qwen3's "<think>") are their text, not pieces of the vocabulary
        added = {int(i): str(t) for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}
        self.tokenizer, self.special = tokenizer, {**added, **special}
        kinds = _decoder_kinds(tokenizer)
        self.alphabet = _byte_level_alphabet() if "ByteLevel" in kinds else None
        self.byte_fallback = "ByteFallback" in kinds
        self.metaspace = bool(kinds & {"Metaspace", "Replace"})
        self.strips_start = bool(kinds & {"Strip", "Metaspace"})  # may drop the text's leading space(s)
        self.skipped = set(special)  # left out of the text (decoded with skip_special_tokens)
        self._cache: dict[int, bytes] = {}
        self._first_cache: dict[int, bytes] = {}

    def __call__(self, token_id: int) -> bytes:
        token_id = int(token_id)
        if token_id not in self._cache:
            self._cache[token_id] = self._bytes(token_id)
        return self._cache[token_id]

    def in_text(self, token_id: int, previous) -> bytes:
        """The bytes `token_id` adds to the text decoded (special tokens skipped) from `previous` (the
        answer's tokens before it) followed by it: its own bytes, except as the first token of the text,
        where the leading spaces the decoder strips there are left out. So the `in_text` bytes of an
        answer's tokens join into exactly its text's UTF-8."""
        token_id = int(token_id)
        if not self.strips_start or token_id in self.skipped or any(int(t) not in self.skipped for t in previous):
            return self(token_id)
        if token_id not in self._first_cache:
            own = self(token_id)
            # what the decoder leaves of the token at the start of a text: the token decoded alone, when that
            # is its own bytes less some of their leading spaces (a byte piece of a split character decodes to
            # "\ufffd" alone and keeps its own byte)
            alone = self.tokenizer.decode([token_id]).encode("utf-8")
            spaces = len(own) - len(own.lstrip(b" "))
            self._first_cache[token_id] = alone if own.endswith(alone) and len(own) - len(alone) <= spaces else own
        return self._first_cache[token_id]

    def _bytes(self, token_id: int) -> bytes:
        if token_id in self.special:
            return self.special[token_id].encode("utf-8")
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str):
            if self.alphabet is not None and all(c in self.alphabet for c in piece):
                return bytes(self.alphabet[c] for c in piece)
            if self.byte_fallback and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                try:
                    return bytes([int(piece[3:5], 16)])
                except ValueError:
                    pass
            if self.metaspace:
                return piece.replace("\u2581", " ").encode("utf-8")
        return self.tokenizer.decode([token_id]).encode("utf-8")


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


class PromptTooLong(DataError):
    """A prompt that leaves no room for an answer in the model's context: OpenAI's and vLLM's
    `context_length_exceeded` (the server answers it with that code and a 400; `generate` fails that
    one prompt, naming its file and line)."""

    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, context_length: int):
        self.prompt_tokens, self.context_length = prompt_tokens, context_length
        super().__init__(f"messages: this model's maximum context length is {context_length} tokens, and the "
                         f"messages take {prompt_tokens}, leaving no room for an answer; shorten the messages "
                         "(drop early turns or cut long texts)")


def check_prompt_tokens(prompt_ids: list[int], context_length: int | None) -> None:
    """Raises DataError for an empty prompt and PromptTooLong for one that fills the model's context."""
    if not prompt_ids:
        raise DataError("messages: the prompt is empty (no tokens); send at least one user message with text")
    if context_length is not None and len(prompt_ids) >= context_length:
        raise PromptTooLong(len(prompt_ids), context_length)


def render_prompt(template, messages: list[dict]) -> str:
    """The conversation rendered with the generation prompt, as the model reads it.

    A chat template may refuse a conversation: Gemma's and Mistral's raise "System role not
    supported" or "roles must alternate user/assistant". That is a problem with the request, not a
    crash: it raises DataError naming `messages` with the template's own message (the server answers
    it with a 400, as vLLM does; `generate` and a local judge fail that one prompt)."""
    import jinja2

    try:
        return template.render(messages, add_generation_prompt=True)
    except (jinja2.TemplateError, TypeError) as err:  # TypeError: e.g. a template adding a string to None
        raise DataError(f"messages: this model's chat template refuses the conversation ({err}); send it in a "
                        "form the template accepts (e.g. without a system message, or with the system text "
                        "at the start of the first user message; user and assistant turns alternating)") from err


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
        self.limit = params.max_new_tokens  # tokens it may take: its budget, at most what the context leaves
        self.seed = int(params.seed if params.seed is not None else random.getrandbits(63))
        self.generator: torch.Generator | None = None  # made on the model's device when decoding starts


class LocalGenerator:
    """Generates chat completions from a loaded causal LM and its tokenizer."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.template = get_template(None, tokenizer)
        self.stop_ids = set(self.template.stop_token_ids(tokenizer, model))  # data/template.stop_token_ids
        self._special_text = special_token_text(tokenizer)
        self._token_bytes = TokenBytes(tokenizer, self._special_text)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.stop_ids)
        # transformers renamed `past_key_values` to `cache` during 5.x; pass whichever this version takes.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model wraps it
        self._cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        # One-token decode steps of a left-padded batch run in eager attention: with a padding mask,
        # SDPA took 9 ms a call on an H100 and eager was 5.6x faster end to end (bench/serve_batching.py).
        # The prompt (prefill) keeps SDPA, which never materialises the L x L scores.
        self._base = base
        # A model that trained with one of prefloop's attention backends runs SDPA without a plan.
        self._prefill_attention = getattr(getattr(base, "config", None), "_attn_implementation", None)
        self._eager_decode = (self._prefill_attention in {"sdpa", *RUNS_SDPA}
                              and hasattr(base, "set_attn_implementation"))
        config = getattr(model, "config", None)
        self.context_length = getattr(config, "max_position_embeddings", None)

    @classmethod
    def load(cls, path: str, adapter: str | None = None) -> "LocalGenerator":
        """Load the model from `path` (with LoRA `adapter`) and its tokenizer (`models.tokenizer_dir`: the adapter's
        when it holds one); GPU in bf16 when there is one, else CPU fp32."""
        from prefloop.models import load_causal_lm, load_tokenizer, tokenizer_dir

        device = "cuda" if torch.cuda.is_available() else None
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else None
        source = tokenizer_dir(path, adapter)  # the adapter's own tokenizer: the chat template it trained with
        return cls(load_causal_lm(path, dtype=dtype, adapter=adapter, device=device),
                   load_tokenizer(source, key="--adapter" if source == adapter else "model_name_or_path"))

    @property
    def device(self):
        return next(self.model.parameters()).device

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of the prompt (template rendered with the generation prompt; it holds any BOS).

        Raises DataError when no user message holds text, when the messages hold tool calls, tool
        results, names or reasoning that the chat template would drop (the model would answer a
        conversation other than the one sent), or when the template refuses the conversation (see
        `render_prompt`); PromptTooLong when the prompt leaves no room for an answer in the context.
        """
        if not any(m.get("role") == "user" and has_text(m.get("content")) for m in messages):
            raise DataError("messages: no user message holds any text, so there is nothing to answer; "
                            "send at least one user message with text")
        self.template.check_renders(messages)
        text = render_prompt(self.template, messages)
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        check_prompt_tokens(ids, self.context_length)
        return ids

    def generate(
        self, rows: list[tuple[list[int], SamplingParams]], on_update: UpdateCallback | None = None,
        cancelled: Callable[[int], bool] | None = None,
    ) -> list[Sample]:
        """Decode all rows together; returns one Sample per row in order. `cancelled(row)`, asked
        before every step, ends a row early (finish_reason "cancelled": e.g. its client went away).
        A row ends with "length" at its `max_new_tokens` or when prompt and answer fill the model's
        context (never decoding past `max_position_embeddings`). Raises DataError for an empty prompt
        and PromptTooLong for one that fills the context, before decoding any row."""
        if not rows:
            return []
        for ids, _ in rows:
            check_prompt_tokens(ids, self.context_length)
        states = [_Row(list(ids), params) for ids, params in rows]
        if self.context_length is not None:
            for s in states:
                s.limit = min(s.limit, self.context_length - len(s.prompt_ids))
        try:
            with torch.inference_mode():
                self._decode(states, on_update, cancelled)
        finally:
            if self._eager_decode:
                self._base.set_attn_implementation(self._prefill_attention)
        return [s.finished for s in states]

    def _decode(self, states: list[_Row], on_update, cancelled=None) -> None:
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
            if s.limit <= 0:
                self._finish(s, "length", on_update, states.index(s))
        for s in states:
            s.generator = torch.Generator(device=device).manual_seed(s.seed)
        if self._eager_decode:
            self._base.set_attn_implementation("eager")
        while any(s.finished is None for s in states):
            if cancelled is not None:
                for i, s in enumerate(states):
                    if s.finished is None and cancelled(i):
                        self._finish(s, "cancelled", None, i)
                if all(s.finished is not None for s in states):
                    break
            logits = out.logits[:, -1, :].float()
            active = [s.params if s.finished is None else None for s in states]
            tokens = choose_tokens(adjust_logits(logits, active, [s.ids for s in states]), active,
                                   [s.generator for s in states])
            logprobs = self._token_logprobs(logits, tokens, states)
            for i, s in enumerate(states):
                if s.finished is None:
                    self._step(i, s, tokens[i], logprobs[i], on_update)
            if all(s.finished is not None for s in states):
                break
            mask = torch.cat([mask, torch.ones((len(states), 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=torch.tensor(tokens, device=device)[:, None],
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_arg: _cache_of(out)},
            )

    def _step(self, i: int, s: _Row, token: int, logprob: "TokenLogprob | None", on_update) -> None:
        """Append row i's next token, update its text, and finish it on end-of-turn, stop string or budget."""
        if token in self.stop_ids or (s.params.stop and self._special_text.get(token) in s.params.stop):
            # a stop string that is a special token (e.g. "<|im_start|>"): the text leaves special tokens
            # out, so it never shows there; the token itself ends the answer, as end of turn does
            self._finish(s, "stop", on_update, i)
            return
        s.ids.append(token)
        if logprob is not None:
            s.logprobs.append(logprob)
        if not s.params.stop and on_update is None:  # nobody looks at the text before the end
            if len(s.ids) >= s.limit:
                self._finish(s, "length", on_update, i)
            return
        s.text = self.tokenizer.decode(s.ids, skip_special_tokens=True)
        # the earliest occurrence of any stop string (one token may complete several; list order is no rank)
        found = [at for at in (s.text.find(stop, max(0, s.sent - len(stop))) for stop in s.params.stop if stop)
                 if at >= 0]
        if found:
            s.text = s.text[: min(found)]
            self._finish(s, "stop", on_update, i)
            return
        if len(s.ids) >= s.limit:
            self._finish(s, "length", on_update, i)
        elif on_update is not None:
            ready = len(s.text) - _held_back(s.text, s.params.stop)
            if ready > s.sent:
                on_update(i, s.text[s.sent : ready], s.logprobs[s.sent_logprobs :], None)
                s.sent, s.sent_logprobs = ready, len(s.logprobs)

    def _token_logprobs(self, logits: torch.Tensor, tokens: list[int], states: list[_Row]) -> list:
        """TokenLogprob per row that asked for log-probs (None for the others), computed in one batch."""
        rows = [i for i, s in enumerate(states) if s.finished is None and s.params.logprobs]
        out: list = [None] * len(states)
        if not rows:
            return out
        logps = torch.log_softmax(logits[rows], dim=-1)
        chosen = logps.gather(1, torch.tensor([tokens[i] for i in rows], device=logps.device)[:, None])[:, 0].tolist()
        top_n = max(states[i].params.top_logprobs for i in rows)
        values = indices = None
        if top_n > 0:
            values, indices = (t.tolist() for t in logps.topk(min(top_n, logps.shape[-1]), dim=-1))
        for k, i in enumerate(rows):
            n = states[i].params.top_logprobs
            top_ids = indices[k][:n] if n else []
            top = [(self.tokenizer.decode([t]), v) for t, v in zip(top_ids, values[k][:n])] if n else []
            in_text = self._token_bytes.in_text  # the bytes each adds to this row's text so far
            out[i] = TokenLogprob(self.tokenizer.decode([tokens[i]]), chosen[k], top, in_text(tokens[i], states[i].ids),
                                  [in_text(t, states[i].ids) for t in top_ids])
        return out

    def _finish(self, s: _Row, reason: str, on_update, i: int) -> None:
        if not s.params.stop and on_update is None:
            s.text = self.tokenizer.decode(s.ids, skip_special_tokens=True)
        s.finished = Sample(s.text, list(s.ids), reason, list(s.logprobs) if s.params.logprobs else None)
        if on_update is not None:
            on_update(i, s.text[s.sent :], s.logprobs[s.sent_logprobs :], s.finished)


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def adjust_logits(logits: torch.Tensor, params: list["SamplingParams | None"], generated: list[list[int]]):
    """Logits after each row's logit bias and frequency/presence penalties, as the OpenAI API
    defines them (API reference, "Parameter details"): for token j generated c[j] times so far in
    this completion, `logit[j] - c[j] * frequency_penalty - (c[j] > 0) * presence_penalty
    + logit_bias[j]`. `logits`: (rows, vocab) float; returns a new tensor when any row changes
    (the model's own logits stay as they are for the reported log-probs), else `logits` itself."""
    rows = [i for i, p in enumerate(params) if p is not None and p.adjusts_logits]
    if not rows:
        return logits
    out = logits.clone()
    for i in rows:
        p = params[i]
        if p.logit_bias:
            ids = torch.tensor([t for t, _ in p.logit_bias], device=out.device)
            out[i, ids] += torch.tensor([b for _, b in p.logit_bias], device=out.device, dtype=out.dtype)
        if (p.frequency_penalty or p.presence_penalty) and generated[i]:
            counts = torch.bincount(torch.tensor(generated[i], device=out.device), minlength=out.shape[-1])
            counts = counts[: out.shape[-1]].to(out.dtype)
            out[i] -= counts * p.frequency_penalty + (counts > 0).to(out.dtype) * p.presence_penalty
    return out


def sampling_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor | None = None,
                    top_p: torch.Tensor | None = None) -> torch.Tensor:
    """Logits to sample from, one row each: divided by the row's `temperature`, then its `top_k` most
    likely tokens kept (0 or less: all; every token tied with the k-th stays), then the smallest set
    of most likely tokens whose probability adds up to at least `top_p` (1: all; at least one token
    always stays). Filtered tokens get -inf. The same as transformers' TemperatureLogitsWarper,
    TopKLogitsWarper and TopPLogitsWarper (min_tokens_to_keep=1) applied in that order, as `generate`
    does, ties and the exact top-p boundary included: a token is dropped when the tokens above it
    already hold `top_p`. `logits` (rows, vocab) float; the others (rows,).

    None skips a filter for every row, at no cost: the caller decides from its Python settings
    (`choose_tokens`), so a step that filters nothing reads nothing back from the device. `top_k`
    is best given on the CPU: its largest value (read there without a device sync) is how many
    tokens `torch.topk` takes, not a sort of the whole vocabulary."""
    scaled = logits / temperature[:, None].to(logits.dtype)
    if top_k is not None:
        most = min(int(top_k.max()), scaled.shape[-1])
        if most > 0:
            k = top_k.to(scaled.device).clamp(max=scaled.shape[-1])
            largest = scaled.topk(most, dim=-1).values  # descending: the k-th largest at k - 1, ties included
            kth = largest.gather(1, (k - 1).clamp(min=0)[:, None].to(torch.long))
            scaled = scaled.masked_fill((scaled < kth) & (k > 0)[:, None], float("-inf"))
    if top_p is not None:
        # as TopPLogitsWarper: sorted ascending, drop the tokens whose cumulative probability from the bottom
        # is at most 1 - top_p (the mass above them is then at least top_p), keeping the most likely one
        sorted_logits, order = scaled.sort(dim=-1, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # 1 - top_p in float64, then in the logits' precision: as transformers compares with a Python float;
        # a row at 1 (off) gets a threshold no cumulative probability is at or below
        top_p = top_p.to(scaled.device)
        threshold = torch.where(top_p < 1.0, 1 - top_p.double(), -1.0).to(cumulative.dtype)
        drop = cumulative <= threshold[:, None]
        drop[:, -1] = False
        scaled = scaled.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scaled


def choose_tokens(logits: torch.Tensor, params: list["SamplingParams | None"], generators: list) -> list[int]:
    """Next token of every row, in one batch on the logits' device: greedy at temperature 0 (and any
    temperature below GREEDY_BELOW, whose division would overflow to inf/NaN), else a sample from
    `sampling_logits` (temperature, top-k, top-p). Sampling uses the Gumbel-max trick with noise
    from the row's own generator, so a row samples the same tokens whatever else is in its batch.
    Rows whose params are None (finished) get the greedy token, which is ignored."""
    tokens = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if p is not None and p.temperature >= GREEDY_BELOW]
    if rows:
        device = logits.device
        index = torch.tensor(rows, device=device)
        # top-k / top-p only when a row asks for them, decided here from the settings: no tensors, no work
        # and no device sync for a batch that uses neither (the usual case)
        top_k = top_p = None
        if any(params[i].top_k > 0 for i in rows):
            top_k = torch.tensor([params[i].top_k for i in rows])  # on the CPU: sampling_logits reads its max
        if any(params[i].top_p < 1.0 for i in rows):
            top_p = torch.tensor([params[i].top_p for i in rows], device=device, dtype=torch.float64)
        scaled = sampling_logits(logits[index], torch.tensor([params[i].temperature for i in rows], device=device),
                                 top_k, top_p)
        noise = torch.empty_like(scaled)
        for k, i in enumerate(rows):
            noise[k].uniform_(generator=generators[i])
        gumbel = -torch.log(-torch.log(noise.clamp_(1e-12, 1.0 - 1e-7)))
        tokens[index] = (scaled + gumbel).argmax(dim=-1)
    return tokens.tolist()
