"""Log-likelihoods of continuations given a context: the one scoring function of the multiple-choice benchmarks.

`truthfulqa_mc` and `safety_mc` (base-model mode) both ask: for a context c and choices a_1..a_n,
what is log p(a_i | c) = sum over the continuation tokens t of log p(t | c, t_<)? The model runs
through the trainer's log-prob path (`train/logps.py` via `train/reference.compute_reference_logps`,
the one model call site): the choices of one question are laid out as (prompt, chosen, rejected)
"pairs" sharing the context, so the prefix-shared layout encodes the context once per two choices.

Tokenization follows lm-evaluation-harness 0.4.13 (`TemplateLM._encode_pair`, `HFLM.tok_encode`):
trailing spaces of the context move to the front of the continuation; the context is encoded alone;
the continuation ids are the ids of context + continuation after the first len(context ids) tokens.
Special tokens are the tokenizer's own default (lm-eval's `add_bos_token=None`, since its PR #3347):
a tokenizer that adds a BOS (Llama, Gemma, Mistral) gets it in front of the context, one that adds
none (Qwen2, GPT-2) gets nothing; a text that already starts with the BOS text gets no second one.
An EOS a tokenizer appends (`add_eos_token`) is left out (`tok_encode`), where lm-eval keeps it.
(lm-eval up to 0.4.9 encoded without special tokens, which scores BOS-trained models such as Gemma
without their BOS: EleutherAI/lm-evaluation-harness#1455, #2049.) So the numbers are those lm-eval
computes on the same model and text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BATCH_SIZE = 8  # pairs (two continuations each) per forward


@dataclass
class Request:
    """One context and its continuations, as token ids (see `encode_request`)."""

    context_ids: list[int]
    continuation_ids: list[list[int]]


def scoring_device() -> str | None:
    """"cuda" when a GPU is visible (scoring runs there in float32), else None (the CPU)."""
    import torch

    return "cuda" if torch.cuda.is_available() else None


def prefix_token_id(tokenizer) -> int | None:
    """lm-eval's `HFLM.prefix_token_id`: the BOS id, else the EOS id."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def tok_encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as lm-eval 0.4.13's `HFLM.tok_encode` makes them for a causal LM.

    The special tokens the tokenizer puts *in front* of a text by default (a BOS for tokenizers that
    add one), except when `text` already starts with the text of the prefix token (`prefix_token_id`),
    which then is not added again. Special tokens a tokenizer appends (`add_eos_token: true`, common in
    fine-tuned Llama / Mistral checkpoints) are left out: an EOS after the context would be scored as
    if it came before the continuation, and one after each continuation would be scored as part of
    it. (lm-eval 0.4.13 keeps them and so scores such tokenizers wrongly; without trailing special
    tokens both give the same ids.)"""
    prefix = prefix_token_id(tokenizer)
    plain = list(tokenizer(text, add_special_tokens=False).input_ids)
    if prefix is not None and text.startswith(tokenizer.decode(prefix)):
        return plain
    return _leading_special_ids(tokenizer, text, plain) + plain


def _leading_special_ids(tokenizer, text: str, plain: list[int]) -> list[int]:
    """The ids the tokenizer's default encoding of `text` puts before `plain` (its ids without special tokens)."""
    full = list(tokenizer(text).input_ids)
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []  # a post-processor that changes the text's own ids: no special tokens rather than misaligned ones


def encode_request(tokenizer, context: str, continuations: list[str]) -> Request:
    """Token ids of `context` and each continuation, split as lm-evaluation-harness 0.4.x splits them.

    Raises ValueError when the context is empty (there is no position to predict the first token from)
    or a continuation encodes to no tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if not context[: len(context) - n_spaces]:
        raise ValueError("the context is empty")
    moved = context[len(context) - n_spaces:] if n_spaces else ""
    context = context[: len(context) - n_spaces]
    context_ids = tok_encode(tokenizer, context)
    continuations_ids = []
    for text in continuations:
        whole = tok_encode(tokenizer, context + moved + text)
        ids = whole[len(context_ids):]
        if not ids:
            raise ValueError(f"the continuation {text!r} encodes to no tokens")
        continuations_ids.append(ids)
    return Request(context_ids, continuations_ids)


def continuation_logps(model, requests: list[Request], pad_token_id: int, batch_size: int = DEFAULT_BATCH_SIZE,
                       chunk_size: int = 1024, layout: str = "packed_prefix_shared",
                       desc: str = "choices", wheres: list[str] | None = None) -> list[np.ndarray]:
    """Summed log-prob of every continuation given its context: one float64 array [n_i] per request.

    The model runs in eval mode without gradients; `layout` is any batch layout of `train/collate.py`
    (all give the same numbers up to float rounding; "padded" is the plain computation lm-eval does).
    Raises PrefloopError naming the first affected item (`wheres[i]`, e.g. "file:line", else its
    number) when a log-likelihood is NaN or +inf (broken weights or an overflowing dtype): an argmax or
    a normalisation over them would give a score without meaning. -inf (a token the model gives
    probability 0) is a value, and is kept."""
    import torch

    from prefloop.models import Reference
    from prefloop.train.reference import compute_reference_logps

    features, slots = [], []  # slots[k] = (request index, first choice, second choice or None)
    for r, request in enumerate(requests):
        choices = request.continuation_ids
        for j in range(0, len(choices), 2):
            second = j + 1 if j + 1 < len(choices) else None
            features.append({"prompt_ids": list(request.context_ids), "chosen_ids": list(choices[j]),
                             "rejected_ids": list(choices[second if second is not None else j])})
            slots.append((r, j, second))
    out = [np.zeros(len(r.continuation_ids)) for r in requests]
    if not features:
        return out
    with torch.no_grad():
        first, second = compute_reference_logps(Reference(model, "separate", "model"), features, layout, pad_token_id,
                                                batch_size, chunk_size, desc=desc, what="log-likelihoods")
    for (r, j, k), a, b in zip(slots, first.double().tolist(), second.double().tolist()):
        out[r][j] = a
        if k is not None:
            out[r][k] = b
    _check_finite(out, wheres)
    return out


def _check_finite(lls: list[np.ndarray], wheres: list[str] | None) -> None:
    from prefloop.errors import PrefloopError

    bad = [i for i, ll in enumerate(lls) if np.isnan(ll).any() or np.isposinf(ll).any()]
    if bad:
        where = wheres[bad[0]] if wheres else f"item {bad[0] + 1}"
        raise PrefloopError(f"{where}: the model gave NaN or +inf log-likelihoods {lls[bad[0]].tolist()} (and for "
                            f"{len(bad) - 1} more of the {len(lls)} answer sets): its weights are broken or its dtype "
                            f"overflows; check the model (load it in float32, or take a checkpoint from before the run "
                            f"diverged)")
