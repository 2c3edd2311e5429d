"""Segment attention: packed and prefix-shared rows cost what their sequences need, not L².

A packed or prefix-shared row (`train/collate.py`) holds several units end to end. With one
explicit [L, L] mask, SDPA computes every query against every key of the row and masks most of
them away: on a 2-core CPU that was 28% of a training step for the benchmark workload. Here each
unit is attended on its own:
- a whole sequence, or a pair's ``[prompt, chosen]``: causal SDPA on that slice (`is_causal`, so the
  kernels skip the blocks above the diagonal);
- a pair's rejected response: its queries against ``[prompt keys, rejected keys]`` with the
  prompt fully visible and the rejected part causal (a small [r, p + r] mask).
Padding at the end of a row gets zero output (nothing reads it).

The row structure travels as the `SegmentPlan` keyword argument that transformers passes from the
decoder's forward down to the attention function; without one the function is exactly
transformers' SDPA, so generation and padded batches are unchanged. `use_segment_attention(model)`
registers the function and switches a model from ``sdpa`` to it (the attention implementation is
not saved with the config, so saved models and adapters still say nothing about prefloop).
Equality with the masked computation, values and gradients, is tested in tests/test_attention.py.

Backends (`attn_backend` in the config; `use_attention_backend`): ``segments`` (this module),
``varlen`` (`train/varlen.py`: one FlashAttention varlen call per layer, the units as independent
causal sequences), ``flex`` (`train/flex.py`: one fused FlexAttention call per layer with a block
mask), ``sdpa_mask`` (one SDPA call with the explicit [L, L] mask: the plain computation, rows no
longer than the longest unit) and ``auto``: varlen on CUDA in bf16/fp16, flex on CUDA in fp32,
segments elsewhere (what the benchmark measured fastest there; `resolve_backend`).
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from prefloop import attention_names
from prefloop.train import flex, varlen

IMPLEMENTATION = attention_names.SEGMENTS
PLAN_KWARG = "prefloop_segments"
SDPA_MASK_IMPLEMENTATION = attention_names.SDPA_MASK
PROFILE_SCOPE = "prefloop::attention"  # a torch.profiler range around the per-unit calls
BACKENDS = ("auto", "segments", "varlen", "flex", "sdpa_mask")
_IMPLEMENTATIONS = attention_names.IMPLEMENTATIONS


@dataclass(frozen=True)
class Unit:
    """One unit of a row: `shared` tokens (a whole sequence, or a pair's prompt) from `start`, then
    `chosen` and `rejected` tokens (0 for a whole sequence)."""

    start: int
    shared: int
    chosen: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class SegmentPlan:
    """The units of each row, in order, and the row width."""

    rows: tuple[tuple[Unit, ...], ...]
    width: int


def segment_plan(segments: torch.Tensor, branches: torch.Tensor) -> SegmentPlan:
    """The plan from a batch's `attn_segments` / `attn_branches` [R, L] (see `collate.py`)."""
    keys = (segments * 3 + branches).cpu()
    rows = []
    for row_keys in keys:
        values, counts = torch.unique_consecutive(row_keys, return_counts=True)
        units: list[Unit] = []
        start = 0
        for value, count in zip(values.tolist(), counts.tolist()):
            segment, branch = divmod(value, 3) if value >= 0 else (-1, 0)
            if segment < 0:  # padding: the rest of the row
                break
            if branch == 0:
                units.append(Unit(start, count))
            elif not units or start != units[-1].start + units[-1].shared + units[-1].chosen:
                raise ValueError("attn_branches: a response does not follow its unit's shared prompt")
            else:
                units[-1] = replace(units[-1], **{"chosen" if branch == 1 else "rejected": count})
            start += count
        rows.append(tuple(units))
    return SegmentPlan(tuple(rows), int(segments.shape[-1]))


@functools.lru_cache(maxsize=64)
def _rejected_mask(prompt: int, rejected: int, device: torch.device) -> torch.Tensor:
    """[rejected, prompt + rejected]: the prompt is visible to every rejected query, the rest causal.
    Cached: every layer of a forward asks for the same few masks (at most 64 kept, each under 1 MB)."""
    mask = torch.ones(rejected, prompt + rejected, dtype=torch.bool, device=device)
    mask[:, prompt:] = torch.ones(rejected, rejected, dtype=torch.bool, device=device).tril()
    return mask


def _pieces(units: tuple[Unit, ...], width: int) -> list[int]:
    """Lengths along the row: per unit [shared + chosen, rejected], then the padding (units are contiguous
    from position 0, `segment_plan`)."""
    sizes = [n for u in units for n in (u.shared + u.chosen, u.rejected)]
    return sizes + [width - sum(sizes)]


def _row_attention(q, k, v, units: tuple[Unit, ...], width: int, dropout: float, scale) -> torch.Tensor:
    """Attention output [1, H, width, D] of one row; q [1, H, width, D], k/v [1, kv_heads, width, D].

    The row is split once into its pieces (`Tensor.split`: backward concatenates the pieces' gradients
    once, where per-piece slicing would build a row-sized zero gradient for every piece), and grouped
    keys/values go to SDPA as they are (`enable_gqa`) instead of being copied per query head."""
    gqa = q.shape[1] != k.shape[1]
    sizes = _pieces(units, width)
    qs, ks, vs = q.split(sizes, dim=2), k.split(sizes, dim=2), v.split(sizes, dim=2)
    pieces = []
    for i, u in enumerate(units):
        qh, kh, vh = qs[2 * i], ks[2 * i], vs[2 * i]
        pieces.append(F.scaled_dot_product_attention(qh, kh, vh, dropout_p=dropout, scale=scale, is_causal=True,
                                                     enable_gqa=gqa))
        if u.rejected:
            keys = torch.cat([kh[:, :, :u.shared], ks[2 * i + 1]], dim=2)
            values = torch.cat([vh[:, :, :u.shared], vs[2 * i + 1]], dim=2)
            pieces.append(F.scaled_dot_product_attention(
                qs[2 * i + 1], keys, values, attn_mask=_rejected_mask(u.shared, u.rejected, q.device),
                dropout_p=dropout, scale=scale, enable_gqa=gqa))
    if sizes[-1]:
        pieces.append(q.new_zeros(q.shape[0], q.shape[1], sizes[-1], v.shape[-1]))
    return torch.cat(pieces, dim=2)


def segment_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                              scaling: float | None = None, **kwargs):
    """transformers attention function: per-unit SDPA when a `SegmentPlan` is passed, else SDPA.

    query [B, H, L, D], key/value [B, kv_heads, L, D]; returns ([B, L, H, D], None)."""
    plan = kwargs.pop(PLAN_KWARG, None)
    if plan is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if len(plan.rows) != query.shape[0] or plan.width != query.shape[2]:
        raise ValueError(f"segment plan for {len(plan.rows)} rows x {plan.width} tokens does not match "
                         f"the attention input {tuple(query.shape)}")
    with torch.profiler.record_function(PROFILE_SCOPE):  # bench/profile_train.py's "attention" row
        if len(plan.rows) == 1:
            out = _row_attention(query, key, value, plan.rows[0], plan.width, dropout, scaling)
        else:
            out = torch.cat([_row_attention(q, k, v, units, plan.width, dropout, scaling) for q, k, v, units in
                             zip(query.split(1), key.split(1), value.split(1), plan.rows)], dim=0)
        return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    functions = {IMPLEMENTATION: segment_attention_forward, flex.IMPLEMENTATION: flex.flex_attention_forward,
                 varlen.IMPLEMENTATION: varlen.varlen_attention_forward, SDPA_MASK_IMPLEMENTATION: sdpa_attention_forward}
    for name, function in functions.items():
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, function)
            # Calls without a plan (generation, padded batches) build SDPA's masks and run SDPA.
            ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)


def _set_implementation(model, implementation: str) -> None:
    _register()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:
        model.config._attn_implementation = implementation


def use_segment_attention(model) -> bool:
    """Switch a model whose attention is ``sdpa`` to segment attention; True when the model uses it."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current == IMPLEMENTATION:
        return True
    if current != "sdpa":
        return False
    _set_implementation(model, IMPLEMENTATION)
    return config._attn_implementation == IMPLEMENTATION


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The concrete backend for `backend` on `device` when attention runs in `dtype` (None: fp32).

    ``auto``: on CUDA, varlen when attention runs in bf16 / fp16 and the FlashAttention varlen kernel
    passes its one-time check (`varlen.kernel_ok`), else flex (torch >= 2.5), else segments; segments on
    any other device. Raises ValueError for an unknown name, and for varlen on CUDA in fp32 or with a
    kernel that fails its check (the error says why and what to use instead)."""
    if backend not in BACKENDS:
        raise ValueError(f"attn_backend: {backend!r} is not known; choose from {', '.join(BACKENDS)}")
    on_cuda = torch.device(device).type == "cuda"
    dtype = dtype or torch.float32
    if backend == "varlen" and on_cuda:
        why = varlen.kernel_ok("cuda", dtype)
        if why is not None:
            fix = ("train in bf16 (bf16: true) or use attn_backend: flex or segments" if dtype not in
                   varlen.KERNEL_DTYPES else "use attn_backend: flex or segments")
            raise ValueError(f"attn_backend: varlen cannot run here: {why}; {fix}")
    if backend != "auto":
        return backend
    if not on_cuda:
        return "segments"
    if dtype in varlen.KERNEL_DTYPES and varlen.kernel_ok("cuda", dtype) is None:
        return "varlen"
    return "flex" if flex.available() else "segments"


def attention_backend(model) -> str | None:
    """The prefloop backend a model runs (segments / flex / sdpa_mask), None for any other attention."""
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return next((name for name, impl in _IMPLEMENTATIONS.items() if impl == current), None)


def use_attention_backend(model, backend: str = "auto", device: torch.device | str | None = None,
                          dtype: torch.dtype | None = None) -> str | None:
    """Switch a model whose attention is ``sdpa`` (or already one of prefloop's) to `backend`
    (resolved for `device`, default: where the model's weights are, and `dtype`, the precision attention
    runs in, default: the autocast dtype when autocast is on there, else the weights' dtype); returns
    the backend in use, or None for a model with other attention (eager, flash), which then gets the
    explicit mask. The implementation is not saved with the config: saved models say nothing about prefloop."""
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if current != "sdpa" and attention_backend(model) is None:
        return None
    weight = next(model.parameters())
    if device is None:
        device = weight.device
    if dtype is None:
        kind = torch.device(device).type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype
    name = resolve_backend(backend, device, dtype)
    if name == "flex" and not flex.available():
        raise ValueError(f"attn_backend: flex needs torch >= 2.5 (FlexAttention); this is torch {torch.__version__}")
    if current != _IMPLEMENTATIONS[name]:
        _set_implementation(model, _IMPLEMENTATIONS[name])
    return name
