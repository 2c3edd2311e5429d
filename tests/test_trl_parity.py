"""Parity with TRL 1.16's DPO on the same inputs: token ids, truncation, label masking, log-probs.

These tests do not need TRL: each compares prefloop with hand-computed token ids or with the plain
masked computation (`pair_logps_reference`: the model's own forward, full logits, log_softmax), which
is what TRL's `DPOTrainer` computes. `bench/check_encode.py` runs the same cases against TRL's own code.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from prefloop.testing import FP64_EQUAL, build_tiny_tokenizer, to_float64
from prefloop.train.collate import LAYOUTS, collate_pairs
from prefloop.train.logps import logit_scale, pair_logps, pair_logps_reference
from prefloop.train.losses import LossSpec, SequenceLogps, preference_loss

FEATURES = [
    {"prompt_ids": [5, 6, 7, 8], "chosen_ids": [9, 10, 11], "rejected_ids": [12, 13]},
    {"prompt_ids": [15, 16], "chosen_ids": [18], "rejected_ids": [21, 22, 23, 24, 25]},
    {"prompt_ids": [30, 31, 32], "chosen_ids": [33, 34, 35, 36], "rejected_ids": [37, 38, 39, 40]},
]


def _scaled_model(kind: str, tokenizer):
    """A tiny random model of a family whose forward scales the head's logits (Granite divides them by
    `logits_scaling`, Cohere multiplies them by `logit_scale`)."""
    from transformers import CohereConfig, CohereForCausalLM, GraniteConfig, GraniteForCausalLM

    kwargs = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    if kind == "granite":
        config = GraniteConfig(**kwargs, logits_scaling=3.0, attention_multiplier=0.5, residual_multiplier=0.5,
                               embedding_multiplier=2.0, tie_word_embeddings=False)
        return GraniteForCausalLM(config).eval()
    return CohereForCausalLM(CohereConfig(**kwargs, logit_scale=0.3, tie_word_embeddings=False)).eval()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logps_of_a_model_that_scales_its_logits_equal_its_forward(layout):
    """Granite's `logits_scaling` and Cohere's `logit_scale` are applied by the model's forward; prefloop
    calls the head itself, so it must apply them too (TRL's fused head does). Before: 0.1-0.2 nats off."""
    tokenizer = build_tiny_tokenizer()
    for kind in ("granite", "cohere"):
        model = _scaled_model(kind, tokenizer)
        assert logit_scale(model) != 1.0
        with torch.no_grad():
            ref = pair_logps_reference(model, collate_pairs(FEATURES, "padded", tokenizer.pad_token_id))
            fast = pair_logps(model, collate_pairs(FEATURES, layout, tokenizer.pad_token_id), chunk_size=4)
        for got, want in ((fast.seq.chosen, ref.seq.chosen), (fast.seq.rejected, ref.seq.rejected),
                          (fast.chosen_logits_mean, ref.chosen_logits_mean)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=kind)


@pytest.mark.parametrize("head", ["frozen", "trained"])
def test_gradients_of_a_model_that_scales_its_logits_equal_its_forward(head):
    """The frozen-head fast path (LoRA) and the checkpointed path (a trained head) both carry the scale
    into the gradient."""
    tokenizer = build_tiny_tokenizer()
    model = to_float64(_scaled_model("granite", tokenizer))
    if head == "frozen":
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
        model = get_peft_model(model, config)

    def grads(fn, layout):
        model.zero_grad(set_to_none=True)
        out = fn(model, collate_pairs(FEATURES, layout, tokenizer.pad_token_id))
        zeros = torch.zeros_like(out.seq.chosen)
        reference = SequenceLogps(zeros - 30.0, zeros - 20.0, out.seq.chosen_tokens, out.seq.rejected_tokens)
        preference_loss(out.seq, reference, LossSpec(beta=0.1)).losses.mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ref = grads(pair_logps_reference, "padded")
    fast = grads(lambda m, b: pair_logps(m, b, chunk_size=5), "packed_prefix_shared")
    assert ref.keys() == fast.keys() and (head == "frozen" or any("lm_head" in n for n in ref))
    for name in ref:
        norm = ref[name].abs().max().clamp(min=1e-3)
        torch.testing.assert_close(fast[name] / norm, ref[name] / norm, rtol=0, atol=FP64_EQUAL["atol"], msg=name)
