"""Per-sequence log-probs of preference pairs: the only place the model is called.

`pair_logps` runs the decoder backbone once for the batch (any layout of `train/collate.py`),
takes hidden states only at the positions that predict a response token, and pushes them through
the output head in chunks of `chunk_size` rows with a logsumexp per chunk. The full
(tokens x vocab) fp32 logits are never materialised, neither in forward nor in backward:
- frozen head (LoRA; the usual case): a custom autograd function computes, per chunk, the token
  log-probs and their gradient with respect to the hidden states, (onehot - softmax) @ W, and keeps
  only that [rows, hidden] tensor for backward: two head matmuls per token instead of three.
- trainable head (full fine-tuning, tied embeddings being trained, a peft-wrapped head, logit
  soft-capping): each chunk runs under `torch.utils.checkpoint`, so backward recomputes the chunk's
  logits instead of keeping them alive.

Packed and prefix-shared rows attend per unit (`train/attention.py`), so a row's attention costs what
its sequences need rather than the square of the row length, and a whole packed batch is one row.

Everything the model's own forward does beyond head(decoder(x)) is done here too, so the log-probs are
the model's (and TRL's, whose fused head reads the same config): the logit scaling of Granite / Cohere /
Falcon-H1 (`logit_scale`), Gemma 2's soft-capping (`logit_softcap`), and a sliding attention window
(`sliding_window`): a packed / prefix-shared batch with a sequence longer than the window is computed as
plain padded sequences, since the layouts' attention knows units and branches but no window.

`pair_logps_reference` is the plain computation (padded batch, full logits, log_softmax, gather):
the ground truth for tests and benchmarks.

Mixed precision: pass `autocast_dtype=torch.bfloat16` (fp32 master weights, bf16 matmuls; works on
CPU where `torch.autocast("cpu", dtype=torch.bfloat16)` is supported and on CUDA). Nesting with the
autocast that `transformers.Trainer(bf16=True)` already applies is harmless; passing it here makes
the reference-cache pass and eval use the same precision as training. Logsumexp and sums are fp32.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from prefloop.train.attention import PLAN_KWARG, attention_backend, use_attention_backend
from prefloop.train import varlen
from prefloop.train.flex import BLOCK_MASK_KWARG, block_mask, fallback_reason
from prefloop.train.collate import IGNORE_INDEX, attention_mask_4d
from prefloop.train.losses import SequenceLogps

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1024
ONE_ROW = 1 << 40  # a packed row capacity no batch reaches
# The numerics of this module (layout handling, attention path): part of the reference cache key, since
# a change rounds differently and a reused cache would no longer tie exactly with the untrained policy.
# 2: segment attention, one packed row per batch. 3: the model's logit scaling (Granite, Cohere) and sliding
# attention window (Mistral, Gemma 2/3) applied.
LOGPS_VERSION = 3


@dataclass
class PairLogps:
    """Log-probs of a batch of B pairs plus the logits metric (TRL's `logits/chosen`)."""

    seq: SequenceLogps
    chosen_logits_mean: torch.Tensor  # [B], detached: mean logit over response positions and vocab
    rejected_logits_mean: torch.Tensor  # [B], detached


def num_pairs(batch: dict) -> int:
    return int(batch["weight"].shape[0])


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder backbone (hidden states, final norm applied) and the output head of a causal LM,
    unwrapping peft (its LoRA layers live inside these modules, so they still apply, and
    `disable_adapter()` still switches them off)."""
    base = model
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    if not hasattr(base, "get_decoder") or not hasattr(base, "get_output_embeddings"):
        raise TypeError(f"{type(base).__name__} is not a transformers causal LM (no get_decoder/get_output_embeddings)")
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if decoder is None or head is None:
        raise TypeError(f"{type(base).__name__} has no separate decoder/output head; prefloop needs a causal LM")
    return decoder, head


def _backend(decoder, device) -> str | None:
    """The prefloop attention backend of `decoder`; a plain SDPA model is switched to `auto`'s choice."""
    return attention_backend(decoder) or use_attention_backend(decoder, "auto", device)


def packed_row_tokens(model) -> int | None:
    """Capacity of a packed row for `model` (`collate_pairs`' `row_tokens`): the whole batch in one
    row under segment or flex attention, where attention costs per unit and a longer row only drops
    padding; None (the longest unit) with an explicit mask, which costs the square of the row length."""
    decoder, _ = decoder_and_head(model)
    backend = attention_backend(decoder)  # not switched here: the forward does it, under the run's autocast
    if backend is None and getattr(decoder.config, "_attn_implementation", None) == "sdpa":
        backend = "auto"  # segments, varlen or flex: never the explicit mask
    return ONE_ROW if backend in ("auto", "segments", "varlen", "flex") else None


def _hidden_states(decoder, batch: dict, by_sequence: bool | None = None) -> torch.Tensor:
    """Last hidden states [R, L, d] for any layout.

    Packed / prefix-shared rows run the model's attention backend (`train/attention.py`): segment
    attention with the batch's plan, varlen attention with its gather/scatter layout or FlexAttention
    with a block mask (each built here once per batch), or (sdpa_mask, eager models) the equivalent
    explicit 4D mask; sequence by sequence where the sliding window binds (`by_sequence`, see `pair_logps`)."""
    extra = {}
    if "attn_segments" in batch and (window_binds(decoder, batch) if by_sequence is None else by_sequence):
        return _sequence_by_sequence(decoder, batch)
    if "attn_segments" in batch:
        segments, branches = batch["attn_segments"], batch["attn_branches"]
        backend = _backend(decoder, segments.device)
        if backend == "segments":
            mask, extra[PLAN_KWARG] = None, batch["attn_plan"]
        elif backend == "varlen":  # with the plan: segment attention if the kernel fails (train/varlen.py)
            mask, extra[PLAN_KWARG] = None, batch["attn_plan"]
            extra[varlen.LAYOUT_KWARG] = varlen.layout(batch["attn_plan"], segments.device)
        elif backend == "flex":  # with the plan: segment attention if FlexAttention fails (train/flex.py)
            mask, extra[PLAN_KWARG] = None, batch["attn_plan"]
            if fallback_reason() is None:
                extra[BLOCK_MASK_KWARG] = block_mask(segments, branches)
        elif backend == "sdpa_mask":  # SDPA takes the boolean mask in any precision
            mask = attention_mask_4d(segments, branches)
        elif getattr(decoder.config, "_attn_implementation", "sdpa") == "eager":
            dtype = next(decoder.parameters()).dtype
            allowed = attention_mask_4d(segments, branches)
            mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
        else:
            raise ValueError(f"packed / prefix-shared batches need attn_implementation 'sdpa' or 'eager'; this "
                             f"model uses {decoder.config._attn_implementation!r}. Load it with "
                             f"attn_implementation='sdpa' or use the padded layout")
    else:
        mask = batch["attention_mask"]
    out = decoder(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
                  use_cache=False, **extra)
    return out.last_hidden_state


def sliding_window(model) -> int | None:
    """The attention window of the model's sliding-window layers (Mistral, Gemma 2/3, Qwen2 with
    `use_sliding_window`, ...): a query sees only the keys less than `window` positions before it. None when no
    layer slides."""
    config = _text_config(model)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    if layer_types is not None and not any("sliding" in str(t) for t in layer_types):
        return None
    return int(window)


def window_binds(model, batch: dict) -> bool:
    """True when a sequence of this packed / prefix-shared batch is longer than the model's sliding window.
    The layouts' attention (segments, varlen, flex, the explicit mask) knows only which unit and branch a key
    belongs to, not the window, so such a batch is computed sequence by sequence (`_sequence_by_sequence`)."""
    window = sliding_window(model)
    return window is not None and int(batch["position_ids"].max()) + 1 > window


def _sequence_pieces(batch: dict) -> list[tuple[int, list[int], int]]:
    """The sequences of a packed / prefix-shared batch as (row, its columns in the row, how many leading
    columns another sequence already gives): a whole sequence as it is; a prefix-shared pair as prompt+chosen
    and prompt+rejected (the rejected one's prompt columns given by the chosen one)."""
    pieces = []
    for r, units in enumerate(batch["attn_plan"].rows):
        for u in units:
            head = list(range(u.start, u.start + u.shared))
            chosen = list(range(u.start + u.shared, u.start + u.shared + u.chosen))
            pieces.append((r, head + chosen, 0))
            if u.rejected:
                start = u.start + u.shared + u.chosen
                pieces.append((r, head + list(range(start, start + u.rejected)), u.shared))
    return pieces


def decoder_tokens(model, batch: dict, by_sequence: bool | None = None) -> int:
    """Token positions the decoder runs for `batch` in `pair_logps` (what its activations scale with): the
    batch's own size, or, for a packed / prefix-shared batch computed sequence by sequence (`by_sequence`;
    None: when `window_binds`), its sequences right-padded to the longest: sequences x longest length, each
    prompt counted once per answer."""
    if "attn_segments" not in batch:
        return int(batch["input_ids"].numel())
    if not (window_binds(model, batch) if by_sequence is None else by_sequence):
        return int(batch["input_ids"].numel())
    pieces = _sequence_pieces(batch)
    return len(pieces) * max(len(cols) for _, cols, _ in pieces)


_warned_window: set[int] = set()


def _sequence_by_sequence(decoder, batch: dict) -> torch.Tensor:
    """Hidden states [R, L, d] of a packed / prefix-shared batch, computed as plain right-padded sequences
    through the model's own attention masks (which apply its sliding window per layer), then put where the
    layout has each token: a whole sequence as it is; a prefix-shared pair as prompt+chosen and
    prompt+rejected, the prompt's states taken from the first (the prompt sees only itself: they are equal).
    The result equals the padded layout's; it costs what the padded layout costs."""
    window = sliding_window(decoder)
    if window not in _warned_window:
        _warned_window.add(window)
        logger.warning("sequences longer than the model's sliding attention window (%d tokens): packed and "
                       "prefix-shared batches holding one are computed as plain padded sequences (the same "
                       "log-probs, without the layout's speed-up)", window)
    input_ids, positions = batch["input_ids"], batch["position_ids"]
    pieces = _sequence_pieces(batch)
    width = max(len(cols) for _, cols, _ in pieces)
    ids = input_ids.new_zeros(len(pieces), width)
    pos = positions.new_zeros(len(pieces), width)
    mask = input_ids.new_zeros(len(pieces), width)
    rows, cols, seq_index, seq_cols = [], [], [], []
    for i, (r, columns, skip) in enumerate(pieces):
        index = torch.tensor(columns, device=input_ids.device)
        n = len(columns)
        ids[i, :n], pos[i, :n], mask[i, :n] = input_ids[r, index], positions[r, index], 1
        rows += [r] * (n - skip)
        cols += columns[skip:]
        seq_index += [i] * (n - skip)
        seq_cols += range(skip, n)
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    device = out.device
    hidden = out.new_zeros(input_ids.shape[0], input_ids.shape[1], out.shape[-1])
    take = out[torch.tensor(seq_index, device=device), torch.tensor(seq_cols, device=device)]
    return hidden.index_put((torch.tensor(rows, device=device), torch.tensor(cols, device=device)), take)


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """Logits for the softmax in fp32 (bf16/fp16 upcast), fp64 kept as fp64 (the equality tests run in fp64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class _FrozenHeadLogps(torch.autograd.Function):
    """Token log-probs and logit sums of one chunk through a frozen linear head (no bias).

    Forward keeps only grad_h = (onehot - softmax) @ W [n, d] for backward (when h needs a grad),
    never the [n, vocab] logits.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, scale=1.0):
        logits = _at_least_fp32(F.linear(hidden, weight))
        if scale != 1.0:
            logits = logits.mul_(scale)
        lse = torch.logsumexp(logits, dim=-1)
        token_logps = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
        logit_sums = logits.sum(-1)
        if ctx.needs_input_grad[0]:
            # d log p(t) / d logits = onehot(t) - softmax, built in place in the logits' memory.
            grad_logits = logits.sub_(lse[:, None]).exp_().neg_()
            grad_logits.scatter_add_(-1, targets[:, None], torch.ones_like(token_logps)[:, None])
            if scale != 1.0:  # logits = scale * h W^T
                grad_logits.mul_(scale)
            # Under autocast this matmul runs in the autocast dtype, like the forward one.
            grad_hidden = grad_logits.to(weight.dtype) @ weight
            ctx.save_for_backward(grad_hidden.to(hidden.dtype))
        ctx.mark_non_differentiable(logit_sums)
        return token_logps, logit_sums

    @staticmethod
    def backward(ctx, grad_token_logps, _grad_logit_sums):
        (grad_hidden,) = ctx.saved_tensors
        return grad_token_logps.to(grad_hidden.dtype)[:, None] * grad_hidden, None, None, None


def _chunk_logps_module(head, softcap, hidden, targets, scale=1.0):
    logits = _at_least_fp32(head(hidden))
    if scale != 1.0:
        logits = logits * scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    lse = torch.logsumexp(logits, dim=-1)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - lse, logits.sum(-1).detach()


def _frozen_linear(head) -> bool:
    return (type(head) is torch.nn.Linear and not head.weight.requires_grad
            and (head.bias is None or not head.bias.requires_grad))


def _text_config(model):
    config = getattr(model, "config", None)
    get_text_config = getattr(config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else config


def logit_softcap(model) -> float | None:
    """The model's final logit soft-capping (Gemma 2: logits = tanh(logits / c) * c), or None."""
    return getattr(_text_config(model), "final_logit_softcapping", None)


def logit_scale(model) -> float:
    """The factor the model's forward multiplies its output head's logits by before the softmax (and before
    soft-capping), 1.0 for most models. `pair_logps` calls the head itself, so it applies the factor as the
    model's own forward does (and as TRL 1.16's fused head reads it from the config): Cohere's `logit_scale`,
    Falcon-H1's `lm_head_multiplier`, `output_multiplier`, and Granite's `logits_scaling`, which divides
    (HyperCLOVA X's multiplies). Without it the log-probs of these models are those of other logits."""
    config = _text_config(model)
    scale = getattr(config, "logit_scale", None)
    if scale is None:
        scale = getattr(config, "output_multiplier", None)
    if scale is None:
        scale = getattr(config, "lm_head_multiplier", None)
    if scale is None and getattr(config, "logits_scaling", None) is not None:
        scaling = config.logits_scaling
        scale = scaling if getattr(config, "model_type", None) == "hyperclovax" else 1 / scaling
    return 1.0 if scale is None else float(scale)


def fused_head(head, softcap: float | None = None) -> bool:
    """True when the head's log-probs take `_FrozenHeadLogps` (a frozen linear head without bias or
    logit soft-capping: one chunk of [rows, vocab] fp32 logits at a time, nothing of it saved); False
    when they take the checkpointed module path (a trainable head: about 2.5x that chunk's memory in
    its backward)."""
    return _frozen_linear(head) and head.bias is None and not softcap


def response_token_logps(head, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                         softcap: float | None = None, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target token and the sum of its logits over the vocabulary, [N] each, from
    hidden states [N, d] at the predicting positions, `chunk_size` rows at a time; the logits are
    the head's times `scale` (`logit_scale`), then soft-capped at `softcap` (`logit_softcap`)."""
    if chunk_size < 1:
        raise ValueError(f"logps_chunk_size must be a positive number of rows, got {chunk_size}")
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    with torch.profiler.record_function("prefloop::head_logps"):  # a range for bench/profile_train.py
        return _chunked_logps(head, hidden, targets, chunk_size, softcap, scale)


def _chunked_logps(head, hidden, targets, chunk_size, softcap, scale=1.0):
    fast = fused_head(head, softcap)
    logps, sums = [], []
    for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size)):
        if fast:
            lp, s = _FrozenHeadLogps.apply(h, head.weight, t, scale)
        elif torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in head.parameters())):
            lp, s = checkpoint(_chunk_logps_module, head, softcap, h, t, scale, use_reentrant=False)
        else:
            lp, s = _chunk_logps_module(head, softcap, h, t, scale)
        logps.append(lp)
        sums.append(s.detach())
    return torch.cat(logps), torch.cat(sums)


def _ld_weights(offsets: torch.Tensor, seqs: torch.Tensor, counts: torch.Tensor, batch_size: int,
                ld_alpha: float) -> torch.Tensor:
    """LD-DPO token weights: 1 within the shorter response's length of the pair, alpha beyond."""
    public = torch.minimum(counts[:batch_size], counts[batch_size:]).repeat(2)
    return torch.where(offsets < public[seqs], 1.0, float(ld_alpha))


def _per_sequence(token_values: torch.Tensor, seqs: torch.Tensor, num_seqs: int) -> torch.Tensor:
    return torch.zeros(num_seqs, dtype=token_values.dtype, device=token_values.device).index_add(0, seqs, token_values)


def pair_logps(model, batch: dict, chunk_size: int = DEFAULT_CHUNK_SIZE, ld_alpha: float | None = None,
               autocast_dtype: torch.dtype | None = None, by_sequence: bool | None = None) -> PairLogps:
    """Summed response log-probs of chosen and rejected for a batch from `collate_pairs` (any layout).

    `ld_alpha` (LD-DPO, Liu et al. 2024, "Length Desensitization in DPO"): response tokens beyond
    the shorter response's length in the pair count with weight alpha in the sum
    (log p = log p(y[:l_p]) + alpha * log p(y[l_p:])). The reference's log-probs get the same
    weighting (as in TRL 1.16, in the step and when precomputed): otherwise the implicit reward
    log pi/pi_ref of an untrained policy is not 0 but (alpha - 1) * log pi(y[l_p:]). Token counts
    are unweighted.

    `by_sequence`: how a packed / prefix-shared batch runs: None (always, for log-probs) sequence by sequence
    exactly when a sequence is longer than the sliding window (`window_binds`); True / False force one way
    for `train/memory.py`'s probes, which must take the path of the batch they plan for (False on a batch the
    window binds gives log-probs without the window: a memory probe's only).
    """
    decoder, head = decoder_and_head(model)
    batch_size = num_pairs(batch)
    seqs, offsets = batch["target_seqs"], batch["target_offsets"]
    softcap, scale = logit_softcap(model), logit_scale(model)
    with _autocast(batch["input_ids"].device, autocast_dtype):
        hidden = _hidden_states(decoder, batch, by_sequence)
        selected = hidden[batch["target_rows"], batch["target_cols"]]
        token_logps, logit_sums = response_token_logps(head, selected, batch["target_ids"], chunk_size, softcap,
                                                       scale)
    counts = torch.bincount(seqs, minlength=2 * batch_size).to(torch.float32)
    weighted = token_logps if ld_alpha is None else token_logps * _ld_weights(offsets, seqs, counts, batch_size, ld_alpha)
    sums = _per_sequence(weighted, seqs, 2 * batch_size)
    vocab = head.weight.shape[0]
    logits_mean = _per_sequence(logit_sums, seqs, 2 * batch_size) / (counts.clamp(min=1) * vocab)
    return PairLogps(
        seq=SequenceLogps(sums[:batch_size], sums[batch_size:], counts[:batch_size], counts[batch_size:]),
        chosen_logits_mean=logits_mean[:batch_size].detach(),
        rejected_logits_mean=logits_mean[batch_size:].detach(),
    )


def pair_logps_reference(model, batch: dict, ld_alpha: float | None = None,
                         autocast_dtype: torch.dtype | None = None) -> PairLogps:
    """The plain computation, as TRL / LLaMA-Factory do it: a padded batch through the whole model,
    full (2B, L, vocab) logits, log_softmax, gather at the labels. Ground truth for tests and benches;
    it does not use the target index of the batch, only `labels` and `attention_mask`."""
    if "labels" not in batch:
        raise ValueError("pair_logps_reference needs a batch collated with layout='padded'")
    batch_size = num_pairs(batch)
    with _autocast(batch["input_ids"].device, autocast_dtype):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logits = _at_least_fp32(logits[:, :-1])
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * mask
    counts = mask.sum(-1)
    if ld_alpha is not None:
        offsets = mask.cumsum(-1) - 1
        public = torch.minimum(counts[:batch_size], counts[batch_size:]).repeat(2)
        token_logps = token_logps * torch.where(offsets < public[:, None], 1.0, float(ld_alpha))
    sums = token_logps.sum(-1)
    counts = counts.to(torch.float32)
    logits_mean = (logits.detach() * mask[..., None]).sum((1, 2)) / (counts.clamp(min=1) * logits.shape[-1])
    return PairLogps(
        seq=SequenceLogps(sums[:batch_size], sums[batch_size:], counts[:batch_size], counts[batch_size:]),
        chosen_logits_mean=logits_mean[:batch_size],
        rejected_logits_mean=logits_mean[batch_size:],
    )
