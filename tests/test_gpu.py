"""Checks that need a CUDA GPU (run by bench/gpu_check.sh; skipped on a machine without one).

The attention backends on CUDA against the masked computation (one SDPA call with the explicit
[L, L] mask of `collate.attention_mask_4d`), values and gradients, for Llama and Qwen2 with
grouped-query heads: in fp32 (TF32 off) with the CPU tests' tolerances, and in bf16 (autocast, as
training runs) with a bf16 tolerance (varlen: bf16 only, FlashAttention has no fp32 kernel). Plus:
the compiled FlexAttention serves batches of other lengths (no recompilation per batch); `attn_backend:
auto` picks varlen here in bf16 and flex in fp32; a failing varlen kernel falls back to segment attention.
"""

import pytest
import torch

from prefloop.testing import build_tiny_model
from prefloop.train import flex, varlen
from prefloop.train.attention import resolve_backend, use_attention_backend
from prefloop.train.collate import collate_pairs
from prefloop.train.logps import _hidden_states, pair_logps, pair_logps_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _pair(p, c, r, base=10):
    return {"prompt_ids": list(range(base, base + p)), "chosen_ids": list(range(base + 100, base + 100 + c)),
            "rejected_ids": list(range(base + 200, base + 200 + r))}


# Units longer than FlexAttention's 128-token blocks, so blocks are partly masked, skipped and full.
PAIRS = [_pair(150, 40, 90), _pair(3, 200, 7, base=20), _pair(70, 1, 130, base=30), _pair(20, 60, 60, base=40)]


@pytest.fixture(autouse=True)
def _no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _run(tokenizer, arch, backend, batch, dtype):
    """Hidden states at real tokens and parameter gradients through `backend` (None = masked SDPA)."""
    model = build_tiny_model(tokenizer, arch=arch, hidden_size=128, num_heads=8, num_kv_heads=2).cuda()
    model.config._attn_implementation = "sdpa"
    assert use_attention_backend(model, backend or "sdpa_mask", dtype=dtype) == (backend or "sdpa_mask")
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    real = batch["attn_segments"] >= 0
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        hidden = _hidden_states(model.model, batch)
    assert flex.fallback_reason() is None, f"FlexAttention failed on this GPU: {flex.fallback_reason()}"
    assert varlen.fallback_reason() is None, f"the varlen kernel failed on this GPU: {varlen.fallback_reason()}"
    (hidden[real].float() ** 2).mean().backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    return hidden[real].float().detach(), grads


# fp32: TF32 is off here, but a Triton kernel may still round its dots to TF32 (10-bit mantissa, ~1e-3);
# the exact fp32 equality is the CPU tests' (tests/test_attention.py, tests/test_logps.py).
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-3), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["packed", "packed_prefix_shared", "prefix_shared"])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("backend", ["varlen", "flex", "segments"])
def test_backend_equals_the_masked_computation_on_cuda(tiny_tokenizer, backend, arch, layout, dtype, tolerance):
    if backend == "varlen" and dtype == torch.float32:
        with pytest.raises(ValueError, match="bf16 or fp16"):
            resolve_backend("varlen", "cuda", dtype)
        return
    batch = collate_pairs(PAIRS, layout, pad_token_id=0, row_tokens=1 << 20 if layout.startswith("packed") else None)
    masked, masked_grads = _run(tiny_tokenizer, arch, None, batch, dtype)
    fast, fast_grads = _run(tiny_tokenizer, arch, backend, batch, dtype)
    # relative to the largest entry: bf16 keeps 8 bits of mantissa, fp32 differs only in summation order
    error = (fast - masked).abs().max() / masked.abs().max()
    assert error < tolerance, f"hidden states: max error {error:.2e} of the largest entry"
    assert masked_grads.keys() == fast_grads.keys() and len(masked_grads) > 10
    for name, expected in masked_grads.items():
        error = (fast_grads[name] - expected).abs().max() / expected.abs().max().clamp(min=1e-12)
        assert error < tolerance * 10, f"{name}: max error {error:.2e} of the largest gradient"


def test_pair_logps_with_flex_equal_the_plain_computation_on_cuda(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, arch="qwen2").cuda()
    model.config._attn_implementation = "sdpa"
    move = lambda b: {k: v.cuda() if torch.is_tensor(v) else v for k, v in b.items()}  # noqa: E731
    with torch.no_grad():
        ref = pair_logps_reference(model, move(collate_pairs(PAIRS, "padded", 0)))
        assert use_attention_backend(model, "flex") == "flex"
        fast = pair_logps(model, move(collate_pairs(PAIRS, "packed_prefix_shared", 0, row_tokens=1 << 20)))
    assert flex.fallback_reason() is None, f"FlexAttention failed on this GPU: {flex.fallback_reason()}"
    torch.testing.assert_close(fast.seq.chosen, ref.seq.chosen, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(fast.seq.rejected, ref.seq.rejected, rtol=1e-4, atol=1e-3)


def test_compiled_flex_serves_batches_of_other_lengths(tiny_tokenizer):
    import torch._dynamo.utils as dynamo_utils

    model = build_tiny_model(tiny_tokenizer, arch="llama").cuda()
    model.config._attn_implementation = "sdpa"
    assert resolve_backend("auto", "cuda") == "flex" and use_attention_backend(model) == "flex"
    counts = []
    for n in range(1, 5):  # four batches, four row lengths
        batch = collate_pairs(PAIRS[:n] + [_pair(5 * n, 3 * n, 2 * n)], "packed_prefix_shared", 0, row_tokens=1 << 20)
        out = pair_logps(model, {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()})
        (out.seq.chosen.sum() - out.seq.rejected.sum()).backward()
        counts.append(dynamo_utils.counters["stats"]["unique_graphs"])
    assert flex.fallback_reason() is None, f"FlexAttention failed on this GPU: {flex.fallback_reason()}"
    assert counts[-1] == counts[1], f"compiled graphs after each batch: {counts} (a recompilation per length)"


def test_auto_picks_varlen_in_bf16_and_flex_in_fp32_on_cuda():
    assert varlen.kernel_ok("cuda", torch.bfloat16) is None, varlen.kernel_ok("cuda", torch.bfloat16)
    assert resolve_backend("auto", "cuda", torch.bfloat16) == "varlen"
    assert resolve_backend("auto", "cuda", torch.float32) == "flex"


def test_varlen_kernel_failure_falls_back_to_segment_attention(tiny_tokenizer, monkeypatch):
    batch = collate_pairs(PAIRS, "packed_prefix_shared", pad_token_id=0, row_tokens=1 << 20)
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    model = build_tiny_model(tiny_tokenizer, arch="qwen2", hidden_size=128, num_heads=8, num_kv_heads=2).cuda()
    model.config._attn_implementation = "sdpa"
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert use_attention_backend(model, "segments") == "segments"
        expected = _hidden_states(model.model, batch)

        def broken(*args, **kwargs):
            raise RuntimeError("no kernel for this GPU")

        assert varlen.kernel_ok("cuda", torch.bfloat16) is None  # checked (and cached) before the kernel breaks
        monkeypatch.setattr(varlen, "_kernel_call", lambda: broken)
        monkeypatch.setattr(varlen, "_FALLBACK", [])
        assert use_attention_backend(model, "varlen", dtype=torch.bfloat16) == "varlen"
        with pytest.warns(RuntimeWarning, match="no kernel for this GPU"):
            got = _hidden_states(model.model, batch)
    assert varlen.fallback_reason() == "RuntimeError: no kernel for this GPU"
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
