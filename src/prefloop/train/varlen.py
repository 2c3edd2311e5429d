"""Variable-length attention for packed and prefix-shared rows: one FlashAttention call per layer.

The batch's units are laid out as independent causal sequences and attended in one call of
PyTorch's variable-length FlashAttention (`torch.nn.attention.varlen.varlen_attn`, FlashAttention-2:
Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning"), the
path OpenRLHF's packed DPO takes through `flash_attn_varlen_func`. No compilation, no mask: the
kernel gets the tokens of all sequences end to end and their cumulative lengths (`cu_seqlens`).

The rule is `collate.attention_mask_4d`'s (a rejected response sees its prompt and itself, never the
chosen response). Each unit of the `SegmentPlan` becomes one or two causal sequences:
- a whole sequence, or a pair's ``[prompt, chosen]``: its own tokens;
- a pair's rejected response: ``[prompt, rejected]`` -- the prompt's queries, keys and values are
  gathered a second time, so the rejected queries see the prompt through an ordinary causal mask.
  The duplicated prompt queries' outputs are dropped (their gradient is zero); the duplicated keys'
  and values' gradients flow back to the one prompt through the gather (`index_select`'s backward
  adds them up). The wasted work is the prompt's causal attention once more per pair: small next to
  the decoder's matmuls, and it keeps the kernel on its most common path (equal query and key
  lengths, top-left and bottom-right causal alignment agree).
Padding at the end of a row gets zero output, as with segment attention (nothing reads it).

`layout(plan)` builds the gather / scatter indices once per batch (all layers share them);
`varlen_attention_forward` is the transformers attention function. On CUDA with bf16 / fp16 inputs
the FlashAttention kernel runs; elsewhere (CPU, fp32) the same sequences go one by one through
causal SDPA (`_sequence_attention`): correct (tested against the masked computation in
tests/test_attention.py), not fast. `attn_backend: auto` picks varlen only where the kernel runs and
passes `kernel_ok` (a one-time check on the device: values and gradients against causal SDPA on a
small grouped-query case), so a torch whose kernel is missing, differs in signature or aligns its
causal mask otherwise falls back to flex / segments before training starts. A kernel failure during
a run switches the process to segment attention with a warning (`fallback_reason`).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefloop.attention_names import VARLEN as IMPLEMENTATION
from prefloop.train.flex import short_error

LAYOUT_KWARG = "prefloop_varlen"
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
_FALLBACK: list[str] = []  # why the varlen kernel failed in this process, if it did


def fallback_reason() -> str | None:
    """Why this process fell back from the varlen kernel to segment attention; None when it did not."""
    return _FALLBACK[0] if _FALLBACK else None


@dataclass(frozen=True)
class VarlenLayout:
    """A batch of R rows x `width` tokens as independent causal sequences.

    gather [T] (long): for each token of the sequences, end to end, its flat index row * width + col;
    cu_seqlens [S + 1] (int32): where each of the S sequences starts in the T tokens (last entry T);
    scatter [R * width] (long): for each row position, the index in the T outputs that holds its
    attention output (T for padding: a zero row appended by `attend`); max_len: the longest sequence."""

    gather: torch.Tensor
    cu_seqlens: torch.Tensor
    scatter: torch.Tensor
    max_len: int
    rows: int
    width: int
    padded: bool  # some row position is padding (reads the zero row)


def layout(plan, device: torch.device | str | None = None) -> VarlenLayout:
    """The `VarlenLayout` of a `SegmentPlan` (train/attention.py), on `device`."""
    gather: list[torch.Tensor] = []
    scatter = torch.full((len(plan.rows) * plan.width,), -1, dtype=torch.long)
    lengths: list[int] = []
    total = 0
    for r, units in enumerate(plan.rows):
        base = r * plan.width
        for u in units:
            first = u.shared + u.chosen
            own = torch.arange(base + u.start, base + u.start + first)
            gather.append(own)
            scatter[own] = torch.arange(total, total + first)
            lengths.append(first)
            total += first
            if u.rejected:
                prompt = torch.arange(base + u.start, base + u.start + u.shared)
                rejected = torch.arange(base + u.start + first, base + u.start + first + u.rejected)
                gather += [prompt, rejected]
                scatter[rejected] = torch.arange(total + u.shared, total + u.shared + u.rejected)
                lengths.append(u.shared + u.rejected)
                total += u.shared + u.rejected
    padding = scatter < 0
    scatter[padding] = total  # padding -> the zero row
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    if lengths:
        cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    index = torch.cat(gather) if gather else torch.zeros(0, dtype=torch.long)
    move = _mover(device)
    return VarlenLayout(move(index), move(cu), move(scatter), max(lengths, default=0), len(plan.rows), plan.width,
                        bool(padding.any()))


def _mover(device):
    """Host tensor -> `device`; to a GPU from pinned memory without blocking the host (a plain copy from
    pageable memory waits for the GPU to finish the work queued before it)."""
    if device is None or torch.device(device).type != "cuda":
        return lambda t: t.to(device) if device is not None else t
    return lambda t: t.pin_memory().to(device, non_blocking=True)


def _sequence_attention(q, k, v, cu_seqlens: torch.Tensor, scale: float) -> torch.Tensor:
    """The varlen computation one sequence at a time through causal SDPA: q [T, H, D], k/v [T, kv, D]."""
    bounds = cu_seqlens.tolist()
    gqa = q.shape[1] != k.shape[1]
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
        pieces.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                                     enable_gqa=gqa)[0].transpose(0, 1))
    return torch.cat(pieces) if pieces else q.new_zeros(q.shape)


@functools.lru_cache(maxsize=None)
def _kernel_call():
    """A caller of this torch's `varlen_attn` (its keyword names changed between releases)."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters

    def call(q, k, v, cu_seqlens, max_len, scale):
        kwargs = {}
        if "window_size" in params:
            kwargs["window_size"] = (-1, 0)  # causal
        elif "is_causal" in params:
            kwargs["is_causal"] = True
        else:
            raise RuntimeError("torch.nn.attention.varlen.varlen_attn takes neither window_size nor is_causal")
        if "scale" in params:
            kwargs["scale"] = scale
        elif abs(scale - q.shape[-1] ** -0.5) > 1e-12:
            q = q * (scale * q.shape[-1] ** 0.5)  # the kernel's own scale is D^-0.5
        if k.shape[1] != q.shape[1]:
            if "enable_gqa" in params:
                kwargs["enable_gqa"] = True
            else:
                group = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **kwargs)

    return call


def kernel_available() -> bool:
    """True when this torch has `torch.nn.attention.varlen.varlen_attn` and a CUDA GPU is visible."""
    try:
        import torch.nn.attention.varlen  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def kernel_ok(device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> str | None:
    """None when the varlen kernel runs on `device` in `dtype` and equals causal SDPA (values and
    gradients, grouped-query heads, head size 64, two sequences); else why not. Run once per process,
    with gradients on and autocast off, whatever the caller's mode. A kernel that fails only for other head sizes or
    in backward is not caught here; `varlen_attention_forward` falls back on a forward failure only."""
    if not kernel_available():
        return "torch.nn.attention.varlen is not in this torch or no CUDA GPU is visible"
    if dtype not in KERNEL_DTYPES:
        return f"the FlashAttention kernel takes bf16 or fp16, not {dtype}"
    try:
        with torch.enable_grad(), torch.autocast("cuda", enabled=False):  # whatever mode the caller is in
            return _compare_with_sdpa(device, dtype)
    except Exception as err:  # no kernel for this GPU, another signature, no backward
        return short_error(err)


def _compare_with_sdpa(device: str, dtype: torch.dtype) -> str | None:
    """`kernel_ok`'s check: None, or how the kernel's values / gradients differ from causal SDPA."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    make = lambda heads: torch.randn(37, heads, 64, generator=gen).to(device, dtype).requires_grad_()  # noqa: E731
    q, k, v = make(4), make(2), make(2)
    cu = torch.tensor([0, 21, 37], dtype=torch.int32, device=device)
    fast = _kernel_call()(q, k, v, cu, 21, 0.125)
    grads = torch.autograd.grad(fast.float().square().sum(), (q, k, v))
    slow = _sequence_attention(q.float(), k.float(), v.float(), cu, 0.125)
    slow_grads = torch.autograd.grad(slow.square().sum(), (q, k, v))
    for name, a, b in [("values", fast, slow)] + list(zip(("dq", "dk", "dv"), grads, slow_grads)):
        error = (a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-6)
        if not error < 0.05:
            return f"the varlen kernel's {name} differ from causal SDPA by {error:.2e} (relative)"
    return None


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lay: VarlenLayout,
           scale: float | None = None) -> torch.Tensor:
    """query [R, H, L, D], key/value [R, kv_heads, L, D] -> [R, L, H, D] (H a multiple of kv_heads):
    the FlashAttention varlen kernel on CUDA in bf16 / fp16, per-sequence causal SDPA otherwise."""
    rows, heads, width, dim = query.shape
    if scale is None:
        scale = dim ** -0.5

    def flat(t):  # [R, h, L, D] -> the sequences' tokens [T, h, D]: one gather (a packed batch is one row)
        tokens = t[0].transpose(0, 1) if rows == 1 else t.transpose(1, 2).reshape(rows * width, t.shape[1], dim)
        return tokens.index_select(0, lay.gather)

    q, k, v = flat(query), flat(key), flat(value)
    if query.device.type == "cuda" and query.dtype in KERNEL_DTYPES and not _FALLBACK:
        out = _kernel_call()(q, k, v, lay.cu_seqlens, lay.max_len, scale)
    else:
        out = _sequence_attention(q, k, v, lay.cu_seqlens, scale)
    if lay.padded:
        out = torch.cat([out, out.new_zeros(1, heads, dim)])
    return out.index_select(0, lay.scatter).view(rows, width, heads, dim)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """transformers attention function: one varlen call when a `VarlenLayout` is passed, else SDPA.

    query [B, H, L, D], key/value [B, kv_heads, L, D]; returns ([B, L, H, D], None).
    Raises ValueError for attention dropout or a layout of another shape."""
    lay = kwargs.pop(LAYOUT_KWARG, None)
    plan = kwargs.pop("prefloop_segments", None)
    if lay is None or (_FALLBACK and plan is not None):
        if plan is not None:
            from prefloop.train.attention import PLAN_KWARG, segment_attention_forward

            return segment_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                             scaling=scaling, **{PLAN_KWARG: plan}, **kwargs)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if dropout and module.training:
        raise ValueError("attn_backend varlen has no attention dropout; set the model's attention_dropout to 0 "
                         "or use attn_backend: segments")
    if lay.rows != query.shape[0] or lay.width != query.shape[2]:
        raise ValueError(f"varlen layout for {lay.rows} rows x {lay.width} tokens does not match the attention "
                         f"input {tuple(query.shape)}")
    device = query.device.type
    # Like SDPA under autocast: attention in the autocast dtype (RoPE can leave q/k in fp32 and v in bf16).
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    with torch.profiler.record_function("prefloop::attention"):
        try:
            return attend(query, key, value, lay, scaling), None
        except Exception as err:  # a kernel failure: segment attention computes the same thing
            if plan is None or device != "cuda":
                raise
            _FALLBACK.append(short_error(err))
            warnings.warn(f"the varlen attention kernel failed ({_FALLBACK[0]}); this process uses segment attention "
                          f"instead (attn_backend: segments or flex avoids trying)", RuntimeWarning, stacklevel=2)
            return varlen_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                            scaling=scaling, prefloop_segments=plan, **kwargs)
