"""Segment attention (train/attention.py) equals SDPA with the explicit block mask it replaces.

tests/test_logps.py already checks every layout end to end against the plain padded computation;
these tests pin the pieces: the plan read from a batch, hidden states and gradients against the
masked computation (grouped-query heads, several units per row, padding), and that a model
switched to segment attention behaves exactly like SDPA everywhere else and saves no trace of it.
"""

import json

import pytest
import torch

from prefloop.testing import FP64_EQUAL, build_tiny_model, to_float64
from prefloop.train import flex
from prefloop.train.attention import (IMPLEMENTATION, PLAN_KWARG, Unit, resolve_backend, segment_plan,
                                      use_attention_backend, use_segment_attention)
from prefloop.train.collate import attention_mask_4d, collate_pairs


def _pair(p, c, r, base=10):
    return {"prompt_ids": list(range(base, base + p)), "chosen_ids": list(range(base + 100, base + 100 + c)),
            "rejected_ids": list(range(base + 200, base + 200 + r))}


PAIRS = [_pair(5, 3, 4), _pair(2, 6, 1, base=20), _pair(7, 1, 9, base=30), _pair(3, 4, 4, base=40)]


def test_plan_of_prefix_shared_rows_lists_prompt_chosen_rejected():
    batch = collate_pairs(PAIRS[:2], "prefix_shared", pad_token_id=0)
    plan = segment_plan(batch["attn_segments"], batch["attn_branches"])
    assert plan.width == 12
    assert plan.rows == ((Unit(0, 5, 3, 4),), (Unit(0, 2, 6, 1),))  # row 2 ends in 3 padding tokens


def test_plan_of_packed_rows_lists_each_sequence():
    batch = collate_pairs(PAIRS[:2], "packed", pad_token_id=0, row_tokens=100)
    plan = segment_plan(batch["attn_segments"], batch["attn_branches"])
    lengths = sorted(u.shared for row in plan.rows for u in row)
    assert lengths == sorted([8, 9, 8, 3]) and all(u.chosen == u.rejected == 0 for row in plan.rows for u in row)
    starts = [u.start for u in plan.rows[0]]
    assert starts == sorted(starts) and starts[0] == 0


def test_plan_rejects_a_response_without_its_prompt():
    segments = torch.tensor([[0, 0, 0]])
    branches = torch.tensor([[1, 1, 1]])
    with pytest.raises(ValueError, match="does not follow"):
        segment_plan(segments, branches)


def _hidden(decoder, batch, backend: str | None):
    """Hidden states through `backend` (as `pair_logps` runs it), or with the explicit mask (None)."""
    if backend == "segments":
        assert use_segment_attention(decoder)
        plan = segment_plan(batch["attn_segments"], batch["attn_branches"])
        kwargs = {"attention_mask": None, PLAN_KWARG: plan}
    elif backend is not None:
        from prefloop.train.logps import _hidden_states

        assert use_attention_backend(decoder, backend) == backend
        hidden = _hidden_states(decoder, batch)
        assert flex.fallback_reason() is None  # flex really ran, not its segment-attention fallback
        return hidden
    else:
        kwargs = {"attention_mask": attention_mask_4d(batch["attn_segments"], batch["attn_branches"])}
    out = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, **kwargs)
    return out.last_hidden_state


@pytest.mark.parametrize("backend", ["segments", "varlen", "flex", "sdpa_mask"])
@pytest.mark.parametrize("layout", ["packed", "prefix_shared", "packed_prefix_shared"])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_hidden_states_and_gradients_equal_the_masked_computation(tiny_tokenizer, layout, arch, backend):
    batch = collate_pairs(PAIRS, layout, pad_token_id=0, row_tokens=30)
    real = batch["attn_segments"] >= 0
    results = []
    for path in (None, backend):
        # grouped-query heads; float64 so that the two summation orders agree on any CPU (see FP64_EQUAL)
        model = to_float64(build_tiny_model(tiny_tokenizer, arch=arch, num_heads=4, num_kv_heads=2))
        model.config._attn_implementation = "sdpa"
        hidden = _hidden(model.model, batch, path)
        (hidden[real] ** 2).sum().backward()
        results.append((hidden[real].detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                if p.grad is not None}))
    (masked, masked_grads), (segmented, segmented_grads) = results
    assert batch["input_ids"].shape[0] > 1 or layout == "packed_prefix_shared"
    assert segmented.dtype == torch.float64
    torch.testing.assert_close(segmented, masked, **FP64_EQUAL)
    assert masked_grads.keys() == segmented_grads.keys() and len(masked_grads) > 10
    for name, expected in masked_grads.items():
        # Summation order differs (per-unit vs whole-row kernels): float64 rounding, relative to the largest entry.
        error = (segmented_grads[name] - expected).abs().max() / expected.abs().max()
        assert error < FP64_EQUAL["rtol"], f"{name}: max error {error:.2e} of the largest gradient"


def test_without_a_plan_the_switched_model_is_plain_sdpa(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    model.config._attn_implementation = "sdpa"
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        generated = model.generate(ids[:1], max_new_tokens=5, do_sample=False)
        assert use_segment_attention(model) and model.config._attn_implementation == IMPLEMENTATION
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, before, rtol=0, atol=0)
        assert torch.equal(model.generate(ids[:1], max_new_tokens=5, do_sample=False), generated)


def test_the_saved_config_does_not_name_segment_attention(tiny_tokenizer, tmp_path):
    model = build_tiny_model(tiny_tokenizer)
    model.config._attn_implementation = "sdpa"
    assert use_segment_attention(model)
    model.save_pretrained(tmp_path)
    assert IMPLEMENTATION not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


def test_eager_models_are_left_alone(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    model.config._attn_implementation = "eager"
    assert not use_segment_attention(model)
    assert model.config._attn_implementation == "eager"


def test_pair_logps_switches_an_sdpa_model_to_segment_attention(tiny_tokenizer):
    from prefloop.train.logps import pair_logps

    model = build_tiny_model(tiny_tokenizer)
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():
        pair_logps(model, collate_pairs(PAIRS, "padded", pad_token_id=0))
        assert model.config._attn_implementation == "sdpa"  # padded batches need no plan
        pair_logps(model, collate_pairs(PAIRS, "packed_prefix_shared", pad_token_id=0))
    assert model.config._attn_implementation == IMPLEMENTATION


def test_segment_attention_packs_a_batch_into_one_row_and_a_dense_mask_does_not(tiny_tokenizer):
    from prefloop.train.dataset import PairCollator
    from prefloop.train.logps import packed_row_tokens

    model = build_tiny_model(tiny_tokenizer)
    model.config._attn_implementation = "eager"
    assert packed_row_tokens(model) is None  # an L x L mask: rows no longer than the longest unit
    assert PairCollator("packed_prefix_shared", 0, packed_row_tokens(model))(PAIRS)["input_ids"].shape[0] > 1
    model.config._attn_implementation = "sdpa"
    batch = PairCollator("packed_prefix_shared", 0, packed_row_tokens(model))(PAIRS)
    assert batch["input_ids"].shape == (1, sum(len(p["prompt_ids"] + p["chosen_ids"] + p["rejected_ids"]) for p in PAIRS))


def test_flex_falls_back_to_segment_attention_when_it_fails(tiny_tokenizer, monkeypatch):
    """A FlexAttention failure (no compiler, a kernel that does not build) costs speed, not the run."""
    from prefloop.train.logps import _hidden_states

    batch = collate_pairs(PAIRS, "packed_prefix_shared", pad_token_id=0, row_tokens=100)
    model = build_tiny_model(tiny_tokenizer, arch="llama")
    model.config._attn_implementation = "sdpa"
    assert use_attention_backend(model.model, "segments") == "segments"
    expected = _hidden_states(model.model, batch)

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(flex, "flex", broken)
    monkeypatch.setattr(flex, "_FALLBACK", [])
    assert use_attention_backend(model.model, "flex") == "flex"
    with pytest.warns(RuntimeWarning, match="no kernel for this device"):
        got = _hidden_states(model.model, batch)
    assert flex.fallback_reason() == "RuntimeError: no kernel for this device"
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(_hidden_states(model.model, batch), expected, rtol=0, atol=0)  # no second try


def test_varlen_layout_lays_out_each_unit_as_causal_sequences():
    """[prompt, chosen] is one sequence, [prompt, rejected] another (the prompt gathered twice); each row
    position reads its output from the sequence it belongs to; padding reads the zero row."""
    from prefloop.train.varlen import layout

    batch = collate_pairs(PAIRS[:2], "prefix_shared", pad_token_id=0)  # rows of 12: (5,3,4) and (2,6,1) + 3 pads
    lay = layout(segment_plan(batch["attn_segments"], batch["attn_branches"]))
    assert lay.cu_seqlens.tolist() == [0, 8, 17, 25, 28] and lay.max_len == 9
    row0 = list(range(0, 8)) + list(range(0, 5)) + list(range(8, 12))
    row1 = [12 + i for i in list(range(0, 8)) + [0, 1, 8]]
    assert lay.gather.tolist() == row0 + row1
    total = 28
    assert lay.scatter.tolist() == (list(range(0, 8)) + list(range(13, 17))  # row 0: prompt+chosen, rejected
                                    + list(range(17, 25)) + [27] + [total] * 3)  # row 1, then padding


def test_varlen_on_cuda_in_fp32_or_without_a_kernel_is_a_clear_error():
    from prefloop.train.varlen import kernel_ok

    with pytest.raises(ValueError, match="attn_backend: varlen cannot run here"):
        resolve_backend("varlen", "cuda", torch.float32)
    assert kernel_ok("cuda", torch.float32) is not None
    assert resolve_backend("varlen", "cpu") == "varlen"  # per-sequence SDPA there: correct, not fast
    assert resolve_backend("auto", "cpu", torch.bfloat16) == "segments"


def test_varlen_failure_off_cuda_is_raised_not_hidden(tiny_tokenizer, monkeypatch):
    """Only the CUDA kernel may fail over to segment attention (tests/test_gpu.py); the per-sequence path
    elsewhere is plain SDPA, so an error there is a bug to see, not to hide."""
    from prefloop.train import varlen
    from prefloop.train.logps import _hidden_states

    batch = collate_pairs(PAIRS, "packed_prefix_shared", pad_token_id=0, row_tokens=100)
    model = build_tiny_model(tiny_tokenizer, arch="llama")
    model.config._attn_implementation = "sdpa"

    def broken(*args, **kwargs):
        raise RuntimeError("broken")

    monkeypatch.setattr(varlen, "attend", broken)
    monkeypatch.setattr(varlen, "_FALLBACK", [])
    assert use_attention_backend(model.model, "varlen") == "varlen"
    with pytest.raises(RuntimeError, match="broken"):
        _hidden_states(model.model, batch)
    assert varlen.fallback_reason() is None
