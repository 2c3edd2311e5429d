"""Fused attention for packed and prefix-shared rows: one FlexAttention call per layer.

Segment attention (`train/attention.py`) issues one SDPA call per unit and per layer: cheap on a
CPU, but on a GPU a batch of short pairs becomes many small kernel launches. Here the whole batch
is one call of PyTorch's FlexAttention (`torch.nn.attention.flex_attention`; Dong et al. 2024,
"Flex Attention: A Programming Model for Generating Optimized Attention Kernels"), compiled by
`torch.compile` on CUDA, with a block mask built once per batch (`block_mask`) from the layout's
`attn_segments` / `attn_branches` [R, L]. The rule is `collate.attention_mask_4d`'s: token i may
attend to token j when j <= i, both are in the same unit, and j is in the shared branch (the
prompt, or a whole sequence) or in i's own branch -- so a rejected response sees the prompt and
itself, never the chosen response. Padding tokens attend only to themselves. Blocks of 128 x 128
that the rule leaves empty are skipped by the kernel, so a row costs what its units need, as with
segment attention, in one launch.

Grouped-query heads go to the kernel as they are (`enable_gqa`), without repeating keys/values.

On a CPU, `torch.nn.attention.flex_attention` has no backward (torch 2.11-2.13). There the same
operator (`torch.ops.higher_order.flex_attention`, with the same block mask) runs through torch's
own eager implementation, which has a backward: correct values and gradients (tested against the
masked computation in tests/test_attention.py), dense [L, L] memory, not fast. `attn_backend:
auto` therefore never picks flex on a CPU.

The block mask travels as the `BLOCK_MASK_KWARG` keyword argument from the decoder's forward to
`flex_attention_forward`; without one the function is exactly transformers' SDPA (generation,
padded batches). The batch's segment plan travels with it: if FlexAttention fails in forward (no
compiler for this GPU, a kernel that does not build), the layer runs segment attention instead, with
a warning naming the error, and so does every later call in this process (`fallback_reason`).
"""

from __future__ import annotations

import functools
import warnings

import torch

from prefloop.attention_names import FLEX as IMPLEMENTATION
BLOCK_MASK_KWARG = "prefloop_block_mask"
_FALLBACK: list[str] = []  # why FlexAttention failed in this process, if it did


def fallback_reason() -> str | None:
    """Why this process fell back from FlexAttention to segment attention; None when it did not."""
    return _FALLBACK[0] if _FALLBACK else None


def short_error(err: Exception) -> str:
    """`Type: first line of the message` (at most 300 characters): why a kernel could not run, for a warning."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


def available() -> bool:
    """True when this torch has FlexAttention (torch >= 2.5)."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def block_mask(segments: torch.Tensor, branches: torch.Tensor):
    """The `BlockMask` of a batch from `attn_segments` / `attn_branches` [R, L] (on the batch's
    device): shape (R, 1, L, L), 128 x 128 blocks, the rule of `collate.attention_mask_4d`."""
    from torch.nn.attention.flex_attention import create_block_mask

    segments, branches = segments.contiguous(), branches.contiguous()

    def may_attend(b, h, q, kv):
        seg_q, seg_kv = segments[b, q], segments[b, kv]
        br_q, br_kv = branches[b, q], branches[b, kv]
        allowed = (kv <= q) & (seg_q == seg_kv) & (seg_kv >= 0) & ((br_kv == 0) | (br_kv == br_q))
        return allowed | ((q == kv) & (seg_q < 0))

    rows, length = segments.shape
    return create_block_mask(may_attend, rows, None, length, length, device=segments.device)


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic=True: every batch has another row length; one compiled kernel serves them all.
    return torch.compile(flex_attention, dynamic=True)


def _eager_flex(query, key, value, mask, scale: float) -> torch.Tensor:
    """torch's eager implementation of the flex operator (has a backward on CPU)."""
    from torch._higher_order_ops.flex_attention import flex_attention as flex_op
    from torch.nn.attention.flex_attention import _apply_kernel_options, _identity

    options = _apply_kernel_options(query, key, value, False, None)  # (torch 2.5-2.13 all take these five)
    out, _lse, *_ = flex_op(query, key, value, _identity, mask.as_tuple(), scale, options)
    return out


def flex(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask, scale: float | None = None) -> torch.Tensor:
    """FlexAttention with a `block_mask(...)`: query [R, H, L, D], key/value [R, kv_heads, L, D]
    (H a multiple of kv_heads) -> [R, H, L, D]. Compiled on CUDA; torch's eager implementation on
    other devices (see the module docstring)."""
    if scale is None:
        scale = query.shape[-1] ** -0.5
    if query.device.type == "cuda":
        return _compiled_flex()(query, key, value, block_mask=mask, scale=scale, enable_gqa=True)
    return _eager_flex(query, key, value, mask, scale)


def flex_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, **kwargs):
    """transformers attention function: one FlexAttention call when a block mask is passed, else SDPA.

    query [B, H, L, D], key/value [B, kv_heads, L, D]; returns ([B, L, H, D], None).
    Raises ValueError for attention dropout (FlexAttention has none) or a mask of another shape."""
    mask = kwargs.pop(BLOCK_MASK_KWARG, None)
    plan = kwargs.pop("prefloop_segments", None)
    if plan is not None and (mask is None or _FALLBACK):
        from prefloop.train.attention import PLAN_KWARG, segment_attention_forward

        return segment_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                         scaling=scaling, **{PLAN_KWARG: plan}, **kwargs)
    if mask is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if dropout and module.training:
        raise ValueError("attn_backend flex has no attention dropout; set the model's attention_dropout to 0 "
                         "or use attn_backend: segments")
    rows, length = mask.shape[0], mask.shape[-1]
    if rows != query.shape[0] or length != query.shape[2]:
        raise ValueError(f"block mask for {rows} rows x {length} tokens does not match the attention input "
                         f"{tuple(query.shape)}")
    device = query.device.type
    # Like SDPA under autocast: attention in the autocast dtype (RoPE can leave q/k in fp32 and v in bf16).
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    try:
        out = flex(query, key, value, mask, scaling)
    except Exception as err:  # compiler or kernel failure: segment attention computes the same thing
        if plan is None:
            raise
        _FALLBACK.append(short_error(err))
        warnings.warn(f"FlexAttention failed ({_FALLBACK[0]}); this process uses segment attention instead "
                      f"(attn_backend: segments avoids trying)", RuntimeWarning, stacklevel=2)
        return flex_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      prefloop_segments=plan, **kwargs)
    return out.transpose(1, 2).contiguous(), None
