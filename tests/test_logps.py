"""Every fast log-prob path equals the plain computation (padded, full logits, log_softmax, gather).

float64, tiny random Qwen2 and Llama models, pairs of varied lengths with single- and multi-turn
prompts. Values and gradients (LoRA and full fine-tuning, tied embeddings, gradient checkpointing,
adapters disabled) are compared within `prefloop.testing.FP64_EQUAL` (1e-9): in float64 the fast
paths' other summation order costs ~1e-13 on any CPU and thread count, where fp32 rounding would make
the bound depend on the machine's kernels. Only the bf16 test runs the model in fp32.
"""

import random

import pytest
import torch
from peft import LoraConfig, get_peft_model

from prefloop.testing import FP64_EQUAL, build_tiny_model, to_float64
from prefloop.train.attention import use_attention_backend
from prefloop.train.collate import LAYOUTS, collate_pairs
from prefloop.train.logps import pair_logps, pair_logps_reference
from prefloop.train.losses import SequenceLogps, preference_loss, LossSpec

WORDS = "the capital of france is paris and the sun is a star please explain why water is wet".split()


def _text(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def features(tiny_tokenizer):
    """Six pairs: single- and multi-turn prompts, responses from 1 to ~70 tokens, one pair with
    chosen much longer than rejected and one the other way round."""
    rng = random.Random(0)
    end = tiny_tokenizer.eos_token
    out = []
    for i in range(6):
        turns = [{"role": "user", "content": _text(rng, rng.randint(2, 25))}]
        if i % 2:
            turns += [{"role": "assistant", "content": _text(rng, rng.randint(2, 10))},
                      {"role": "user", "content": _text(rng, rng.randint(2, 10))}]
        prompt = tiny_tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False)
        lengths = [(0, 30), (30, 2), (12, 12)][i % 3]  # 0 words: just the end-of-turn token
        chosen, rejected = (tiny_tokenizer(_text(rng, n) + end, add_special_tokens=False)["input_ids"]
                            for n in lengths)
        out.append({"prompt_ids": list(prompt), "chosen_ids": chosen, "rejected_ids": rejected})
    return out


def _model(tokenizer, arch="qwen2", backend="auto", dtype=torch.float64, **kwargs):
    """A tiny model on SDPA in `dtype` (float64: see FP64_EQUAL), switched to the attention `backend`
    (train/attention.py)."""
    model = build_tiny_model(tokenizer, arch=arch, **kwargs)
    model = to_float64(model) if dtype == torch.float64 else model.to(dtype)
    model.config._attn_implementation = "sdpa"
    if backend != "auto":
        assert use_attention_backend(model, backend) == backend
    return model


BACKENDS = ["segments", "varlen", "flex", "sdpa_mask"]


def _assert_equal_logps(fast, ref, tolerance=FP64_EQUAL):
    torch.testing.assert_close(fast.seq.chosen_tokens, ref.seq.chosen_tokens, rtol=0, atol=0)
    torch.testing.assert_close(fast.seq.rejected_tokens, ref.seq.rejected_tokens, rtol=0, atol=0)
    assert fast.seq.chosen.dtype == ref.seq.chosen.dtype == torch.float64
    for a, b in ((fast.seq.chosen, ref.seq.chosen), (fast.seq.rejected, ref.seq.rejected)):
        torch.testing.assert_close(a, b, **tolerance)
    torch.testing.assert_close(fast.seq.chosen_mean, ref.seq.chosen_mean, **tolerance)
    torch.testing.assert_close(fast.seq.rejected_mean, ref.seq.rejected_mean, **tolerance)
    torch.testing.assert_close(fast.chosen_logits_mean, ref.chosen_logits_mean, **tolerance)
    torch.testing.assert_close(fast.rejected_logits_mean, ref.rejected_logits_mean, **tolerance)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("layout", LAYOUTS)
# Chunking is independent of the attention backend: every chunk size with one backend, one size with the others.
@pytest.mark.parametrize("chunk_size, backend", [(1, "segments"), (7, "segments"), (4096, "segments"),
                                                 (7, "varlen"), (7, "flex"), (7, "sdpa_mask")])
def test_every_layout_and_chunk_size_equals_the_plain_computation(tiny_tokenizer, features, arch, layout, chunk_size,
                                                                   backend):
    model = _model(tiny_tokenizer, arch, backend)
    pad = tiny_tokenizer.pad_token_id
    with torch.no_grad():
        ref = pair_logps_reference(model, collate_pairs(features, "padded", pad))
        fast = pair_logps(model, collate_pairs(features, layout, pad), chunk_size=chunk_size)
    assert (ref.seq.chosen < 0).all() and ref.seq.chosen_tokens.min() == 1 and ref.seq.rejected_tokens.max() > 7
    _assert_equal_logps(fast, ref)


def test_everything_in_one_packed_row(tiny_tokenizer, features):
    model = _model(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    batch = collate_pairs(features, "packed_prefix_shared", pad, row_tokens=100_000)
    assert batch["input_ids"].shape[0] == 1
    with torch.no_grad():
        _assert_equal_logps(pair_logps(model, batch, chunk_size=5),
                            pair_logps_reference(model, collate_pairs(features, "padded", pad)))


def test_eager_attention_gets_an_additive_mask(tiny_tokenizer, features):
    model = _model(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    with torch.no_grad():
        ref = pair_logps_reference(model, collate_pairs(features, "padded", pad))
        model.config._attn_implementation = "eager"
        fast = pair_logps(model, collate_pairs(features, "packed_prefix_shared", pad))
    # transformers' eager attention takes its softmax in float32 even for a float64 model: the bound is
    # float32's (eps 1.2e-7; measured 1.6e-9 on the per-token means), still far below what a wrong
    # additive mask changes (1e-2 and more).
    _assert_equal_logps(fast, ref, tolerance={"rtol": 1e-6, "atol": 1e-6})


def _loss(out):
    zeros = torch.zeros_like(out.seq.chosen)
    reference = SequenceLogps(zeros - 30.0, zeros - 20.0, out.seq.chosen_tokens, out.seq.rejected_tokens)
    return preference_loss(out.seq, reference, LossSpec(beta=0.1)).losses.mean()


def _grads(model, fn, batch, **kwargs):
    model.zero_grad(set_to_none=True)
    _loss(fn(model, batch, **kwargs)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_equal_grads(fast, ref):
    assert fast.keys() == ref.keys() and fast
    for name in ref:
        scale = ref[name].abs().max().clamp(min=1e-3)
        assert fast[name].dtype == torch.float64, name
        torch.testing.assert_close(fast[name] / scale, ref[name] / scale, rtol=0, atol=FP64_EQUAL["atol"], msg=name)
    assert any(g.abs().max() > 0 for g in ref.values())


def _lora(model):
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
    return get_peft_model(model, config)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lora_gradients_equal_the_plain_computation(tiny_tokenizer, features, arch, layout, backend):
    model = _lora(_model(tiny_tokenizer, arch, backend))
    pad = tiny_tokenizer.pad_token_id
    ref = _grads(model, pair_logps_reference, collate_pairs(features, "padded", pad))
    fast = _grads(model, pair_logps, collate_pairs(features, layout, pad), chunk_size=7)
    assert all("lora_" in name for name in ref)
    _assert_equal_grads(fast, ref)


@pytest.mark.parametrize("tied", [False, True])
def test_full_model_gradients_including_the_output_head(tiny_tokenizer, features, tied):
    model = _model(tiny_tokenizer, "llama")
    if tied:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    pad = tiny_tokenizer.pad_token_id
    ref = _grads(model, pair_logps_reference, collate_pairs(features, "padded", pad))
    fast = _grads(model, pair_logps, collate_pairs(features, "packed_prefix_shared", pad), chunk_size=9)
    assert any("embed_tokens" in n for n in ref) and (tied or any("lm_head" in n for n in ref))
    _assert_equal_grads(fast, ref)


def test_gradient_checkpointing_with_lora(tiny_tokenizer, features):
    model = _lora(_model(tiny_tokenizer))
    pad = tiny_tokenizer.pad_token_id
    ref = _grads(model, pair_logps_reference, collate_pairs(features, "padded", pad))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    fast = _grads(model, pair_logps, collate_pairs(features, "prefix_shared", pad), chunk_size=16)
    _assert_equal_grads(fast, ref)


def test_adapters_disabled_give_the_base_model(tiny_tokenizer, features):
    base_copy = _model(tiny_tokenizer)
    model = _lora(_model(tiny_tokenizer))
    pad = tiny_tokenizer.pad_token_id
    batch = collate_pairs(features, "packed_prefix_shared", pad)
    with torch.no_grad():
        ref = pair_logps_reference(base_copy, collate_pairs(features, "padded", pad))
        with model.disable_adapter():
            disabled = pair_logps(model, batch)
        enabled = pair_logps(model, batch)
    _assert_equal_logps(disabled, ref)
    assert (enabled.seq.chosen - ref.seq.chosen).abs().max() > 1e-3  # the adapter does change the model


def test_ld_alpha_weights_tokens_beyond_the_shorter_response(tiny_tokenizer):
    """Hand check: chosen has 5 tokens, rejected 3; chosen = sum(first 3) + alpha * sum(last 2)."""
    model = _model(tiny_tokenizer)
    pair = {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9, 10, 11, 12], "rejected_ids": [13, 14, 15]}
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])).logits[0].log_softmax(-1)
        chosen_tokens = [logits[2 + k, t].item() for k, t in enumerate(pair["chosen_ids"])]
        logits = model(input_ids=torch.tensor([[5, 6, 7, 13, 14, 15]])).logits[0].log_softmax(-1)
        rejected_tokens = [logits[2 + k, t].item() for k, t in enumerate(pair["rejected_ids"])]
        alpha = 0.25
        expected_chosen = sum(chosen_tokens[:3]) + alpha * sum(chosen_tokens[3:])
        pad = tiny_tokenizer.pad_token_id
        for out in (pair_logps(model, collate_pairs([pair], "prefix_shared", pad), ld_alpha=alpha, chunk_size=2),
                    pair_logps_reference(model, collate_pairs([pair], "padded", pad), ld_alpha=alpha)):
            assert out.seq.chosen.item() == pytest.approx(expected_chosen, rel=1e-9)
            assert out.seq.rejected.item() == pytest.approx(sum(rejected_tokens), rel=1e-9)
            assert out.seq.chosen_tokens.item() == 5  # counts stay unweighted
        plain = pair_logps(model, collate_pairs([pair], "packed", pad))
        assert plain.seq.chosen.item() == pytest.approx(sum(chosen_tokens), rel=1e-9)


def test_full_logits_are_never_kept_for_backward(tiny_tokenizer, features):
    """No tensor saved for backward has a vocabulary-sized last dimension (the plain path does)."""
    vocab = len(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id

    def saved_vocab_tensors(model, fn, batch):
        shapes = []

        def pack(t):
            shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _loss(fn(model, batch))
        return [s for s in shapes if s and s[-1] == vocab]

    padded = collate_pairs(features, "padded", pad)
    for model in (_lora(_model(tiny_tokenizer)), _model(tiny_tokenizer)):  # frozen head, trainable head
        assert saved_vocab_tensors(model, pair_logps, collate_pairs(features, "packed_prefix_shared", pad)) == []
        assert saved_vocab_tensors(model, pair_logps_reference, padded)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_autocast_stays_close_to_fp32(tiny_tokenizer, features, backend):
    model = _lora(_model(tiny_tokenizer, backend=backend, dtype=torch.float32))
    pad = tiny_tokenizer.pad_token_id
    batch = collate_pairs(features, "packed_prefix_shared", pad)
    with torch.no_grad():
        full = pair_logps(model, batch)
        half = pair_logps(model, batch, autocast_dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert half.seq.chosen.dtype == torch.float32
    torch.testing.assert_close(half.seq.chosen_mean, full.seq.chosen_mean, rtol=0, atol=0.05)
    assert not torch.equal(half.seq.chosen, full.seq.chosen)  # bf16 matmuls did run
    grads = _grads(model, pair_logps, batch, autocast_dtype=torch.bfloat16)
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # qwen2: q/k/v biases; both: tied or untied heads
def test_frozen_linears_in_bf16_give_the_same_logps_and_gradients_under_autocast(tiny_tokenizer, features, arch):
    """`models.frozen_linears_to`: autocast casts a frozen fp32 weight to bf16 in every call, rounding it the
    same way every time, so storing it cast changes no number (a LoRA run's base; the adapter stays fp32)."""
    from peft import LoraConfig, get_peft_model

    from prefloop.models import COMPUTE_DTYPE_ATTR, autocast_for, frozen_linears_to

    results = []
    for cast in (False, True):
        torch.manual_seed(0)
        base = build_tiny_model(tiny_tokenizer, arch=arch)
        base.config._attn_implementation = "sdpa"
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                                init_lora_weights=False))
        if cast:
            assert frozen_linears_to(model, torch.bfloat16) > 0
            dtypes = {n: p.dtype for n, p in model.named_parameters()}
            assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n or "embed" in n or "norm" in n)
            assert any(d == torch.bfloat16 for n, d in dtypes.items() if "base_layer" in n)
            assert getattr(model, COMPUTE_DTYPE_ATTR) == torch.bfloat16
            lora_layers = [m for m in model.modules() if hasattr(m, "lora_A")]
            assert lora_layers and not any(m.cast_input_dtype_enabled for m in lora_layers)
            with_dropout = get_peft_model(build_tiny_model(tiny_tokenizer, arch=arch),
                                          LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.1))
            frozen_linears_to(with_dropout, torch.bfloat16)  # dropout would round 1/(1-p) to bf16: keep the cast
            assert all(m.cast_input_dtype_enabled for m in with_dropout.modules() if hasattr(m, "lora_A"))
        batch = collate_pairs(features, "packed_prefix_shared", tiny_tokenizer.pad_token_id)
        out = pair_logps(model, batch, chunk_size=7, autocast_dtype=torch.bfloat16)
        (out.seq.chosen - out.seq.rejected).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        prompt = batch["input_ids"][:, :5]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            generated = model.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)
        with torch.no_grad(), autocast_for(model):  # what sample answers use: autocast only for the cast model
            assert torch.equal(model.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)[:, :5], prompt)
        results.append((out.seq.chosen.detach(), out.seq.rejected.detach(), grads, generated))
    (c0, r0, g0, gen0), (c1, r1, g1, gen1) = results
    assert torch.equal(c0, c1) and torch.equal(r0, r1) and torch.equal(gen0, gen1)
    assert g0.keys() == g1.keys() and len(g0) > 4
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name
