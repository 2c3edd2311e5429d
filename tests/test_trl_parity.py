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


# ------------------------------------------------------------------------------------------------
# Label masking: only answer tokens count, each answer's end of turn once
# ------------------------------------------------------------------------------------------------


def _encoded(records, tokenizer=None, template=None, cutoff=None):
    from prefloop.data.encode import encode_pairs
    from prefloop.data.formats import record_to_pair
    from prefloop.data.template import get_template

    tokenizer = tokenizer or build_tiny_tokenizer()
    pairs = [record_to_pair(r)[1] for r in records]
    return encode_pairs(pairs, tokenizer, get_template(template, tokenizer), cutoff)


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


MASKING_RECORDS = [
    {"prompt": [{"role": "system", "content": "Be brief."}, _user("What is two plus two?")],
     "chosen": [_assistant("Four.")], "rejected": [_assistant("It is five, because I cannot count.")]},
    {"prompt": [_user("hi"), _assistant("Hello! How can I help?"), _user("Name a city in Japan.")],
     "chosen": [_assistant("Tokyo is a city in Japan.")], "rejected": [_assistant("Paris.")]},
]


def test_only_answer_tokens_count_and_the_end_of_turn_once():
    """The system prompt, the multi-turn history (its earlier assistant reply included) and the padding are
    masked; each answer's tokens are exactly its ids, ending with one end-of-turn token (TRL's completion
    mask, without the template's trailing newline: README, "Parity with TRL"). TRL issue 4481 / PR 4908: an
    EOS appended to conversational answers trained "<|im_end|>\n<|im_end|>"."""
    tokenizer = build_tiny_tokenizer()
    encoded, report = _encoded(MASKING_RECORDS, tokenizer)
    assert report.kept == 2
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    features = [{"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids, "rejected_ids": e.rejected_ids}
                for e in encoded]
    batch = collate_pairs(features, "padded", tokenizer.pad_token_id)
    for row, (f, side) in enumerate([(f, "chosen_ids") for f in features] + [(f, "rejected_ids") for f in features]):
        labels = [t for t in batch["labels"][row].tolist() if t != -100]
        assert labels == f[side] and labels.count(eot) == 1 and labels[-1] == eot
        assert tokenizer.decode(f[side]) in ("Four.<|im_end|>", "It is five, because I cannot count.<|im_end|>",
                                             "Tokyo is a city in Japan.<|im_end|>", "Paris.<|im_end|>")
        # The earlier assistant reply and the system prompt are in the prompt, never in the labels.
        prompt_text = tokenizer.decode(f["prompt_ids"])
        assert prompt_text.endswith("<|im_start|>assistant\n")
        assert ("Be brief." in prompt_text) or ("Hello! How can I help?" in prompt_text)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_summed_logps_equal_the_plain_masked_computation_per_sequence(layout):
    """Each answer's summed log-prob in every layout equals the plain computation on that sequence alone
    (no batch, no padding): sum over the answer's tokens of log_softmax(logits at the previous position)."""
    from prefloop.testing import build_tiny_model

    tokenizer = build_tiny_tokenizer()
    encoded, _ = _encoded(MASKING_RECORDS, tokenizer)
    model = to_float64(build_tiny_model(tokenizer, arch="llama", seed=1))
    features = [{"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids, "rejected_ids": e.rejected_ids}
                for e in encoded]
    with torch.no_grad():
        out = pair_logps(model, collate_pairs(features, layout, tokenizer.pad_token_id), chunk_size=3)
        for i, f in enumerate(features):
            for side, got in (("chosen_ids", out.seq.chosen[i]), ("rejected_ids", out.seq.rejected[i])):
                ids = torch.tensor([f["prompt_ids"] + f[side]])
                logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                p = len(f["prompt_ids"])
                want = sum(float(logps[p - 1 + k, t]) for k, t in enumerate(f[side]))
                assert abs(float(got) - want) < 1e-9
                assert (out.seq.chosen_tokens if side == "chosen_ids" else out.seq.rejected_tokens)[i] == len(f[side])


def test_an_empty_answer_never_reaches_training():
    """A batch with an answer of no tokens is an error naming the pair (it would train nothing and count a
    log-prob of 0); encoding never makes one."""
    features = [{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [], "id": "row-7"}]
    for layout in LAYOUTS:
        with pytest.raises(ValueError, match=r"row-7.*empty rejected answer"):
            collate_pairs(features, layout, 0)


# ------------------------------------------------------------------------------------------------
# Truncation: the public bug reports, replayed
# ------------------------------------------------------------------------------------------------


def _words(n, seed):
    import random

    rng = random.Random(seed)
    return " ".join(rng.choice(["water", "fire", "earth", "river", "mountain", "planet", "bread", "coffee"])
                    for _ in range(n))


def test_the_longer_answer_bounds_both_sequences():
    """LLaMA-Factory issue 4402: the cutoff was applied to prompt+chosen only, so prompt+rejected exceeded it.
    Here the longer answer decides: both sequences fit, the short chosen stays whole (with its end of turn)."""
    record = {"prompt": [_user("Tell me.")], "chosen": [_assistant("Short.")],
              "rejected": [_assistant(_words(120, 1))]}
    (full,), _ = _encoded([record])
    (cut,), report = _encoded([record], cutoff=96)
    assert len(full.prompt_ids) <= 48 and len(full.prompt_ids) + len(full.rejected_ids) > 96
    assert len(cut.prompt_ids) + len(cut.rejected_ids) <= 96 and len(cut.prompt_ids) + len(cut.chosen_ids) <= 96
    assert cut.prompt_ids == full.prompt_ids and cut.chosen_ids == full.chosen_ids
    # The prompt takes under half the cutoff: the answers keep cutoff - prompt tokens, as TRL's keep_start.
    assert cut.rejected_ids == full.rejected_ids[: 96 - len(full.prompt_ids)]
    assert report.response_truncated == 1 and report.prompt_truncated == 0


def test_a_long_prompt_is_cut_keeping_markup_and_answers():
    """TRL's keep_end (issue 3382: whole samples zeroed out) cut the sequence's start, and LLaMA-Factory cut
    the prompt's end, generation prompt included (issue 3143). Here the prompt loses its oldest text only:
    the system prompt, the chat markup and the generation prompt stay, the short answers stay whole."""
    tokenizer = build_tiny_tokenizer()
    record = {"prompt": [{"role": "system", "content": "Be brief."}, _user(_words(300, 2) + " Question?")],
              "chosen": [_assistant("Yes.")], "rejected": [_assistant("No.")]}
    (full,), _ = _encoded([record], tokenizer)
    (cut,), report = _encoded([record], tokenizer, cutoff=96)
    assert len(cut.prompt_ids) + max(len(cut.chosen_ids), len(cut.rejected_ids)) == 96
    assert (cut.chosen_ids, cut.rejected_ids) == (full.chosen_ids, full.rejected_ids)
    text = tokenizer.decode(cut.prompt_ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith(" Question?<|im_end|>\n<|im_start|>assistant\n")
    assert report.prompt_truncated == 1 and report.dropped == []


def test_a_pair_with_no_room_for_an_answer_is_dropped_and_counted():
    """Where nothing of an answer would be left (TRL drops such rows without a count), the pair is dropped
    and reported with its reason; no pair is ever trained with an empty answer."""
    record = {"id": "tiny-cutoff", "prompt": [{"role": "system", "content": _words(40, 3)}, _user("Hi?")],
              "chosen": [_assistant("Yes.")], "rejected": [_assistant("No.")]}
    encoded, report = _encoded([record], cutoff=12)
    assert encoded == [] and report.total == 1 and len(report.dropped) == 1
    assert report.dropped[0].id == "tiny-cutoff" and "cutoff_len" in report.dropped[0].reason
    assert "Dropped 1" in report.summary()


def test_answers_equal_trls_when_only_they_are_too_long():
    """When the prompt takes at most half of cutoff_len, both answers are cut at cutoff_len - prompt, the ids
    TRL 1.16 trains with max_length = cutoff_len (keep_start); a cut answer has no end-of-turn token."""
    tokenizer = build_tiny_tokenizer()
    record = {"prompt": [_user("Write a long story.")], "chosen": [_assistant(_words(200, 4))],
              "rejected": [_assistant(_words(150, 5))]}
    (full,), _ = _encoded([record], tokenizer)
    (cut,), report = _encoded([record], tokenizer, cutoff=100)
    room = 100 - len(full.prompt_ids)
    assert len(full.prompt_ids) <= 50
    assert cut.prompt_ids == full.prompt_ids
    assert (cut.chosen_ids, cut.rejected_ids) == (full.chosen_ids[:room], full.rejected_ids[:room])
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in cut.chosen_ids + cut.rejected_ids
    assert report.response_truncated == 1


# ------------------------------------------------------------------------------------------------
# Sliding-window attention in packed and prefix-shared batches
# ------------------------------------------------------------------------------------------------


def _sliding_model(kind: str, tokenizer, window: int = 4):
    """A tiny random model whose layers attend within `window` positions: Mistral (every layer), Qwen2 with
    `use_sliding_window`, Gemma 2 (sliding and full layers alternating, eager attention)."""
    from transformers import (Gemma2Config, Gemma2ForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    kwargs = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=None, eos_token_id=tokenizer.eos_token_id, sliding_window=window)
    torch.manual_seed(0)
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**kwargs)).eval()
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**kwargs, use_sliding_window=True, max_window_layers=0)).eval()
    return Gemma2ForCausalLM(Gemma2Config(**kwargs, head_dim=16)).eval()


LONG_FEATURES = [
    {"prompt_ids": list(range(5, 14)), "chosen_ids": list(range(20, 28)), "rejected_ids": [11, 12]},
    {"prompt_ids": [15, 16], "chosen_ids": [18], "rejected_ids": list(range(30, 40))},
]


@pytest.mark.parametrize("kind", ["mistral", "qwen2", "gemma2"])
def test_packed_and_prefix_shared_logps_keep_the_sliding_window(kind):
    """Sequences longer than the window: the layouts' attention saw keys beyond the window (0.2-0.5 nats off
    the model's own forward); they now equal the padded computation."""
    from prefloop.train.logps import window_binds

    tokenizer = build_tiny_tokenizer()
    model = _sliding_model(kind, tokenizer)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        ref = pair_logps_reference(model, collate_pairs(LONG_FEATURES, "padded", pad)).seq
        for layout in LAYOUTS:
            batch = collate_pairs(LONG_FEATURES, layout, pad)
            assert layout == "padded" or window_binds(model, batch)
            got = pair_logps(model, batch, chunk_size=4).seq
            torch.testing.assert_close(got.chosen, ref.chosen, rtol=1e-5, atol=1e-5, msg=layout)
            torch.testing.assert_close(got.rejected, ref.rejected, rtol=1e-5, atol=1e-5, msg=layout)
            assert got.chosen_tokens.tolist() == [8, 1] and got.rejected_tokens.tolist() == [2, 10]


def test_sliding_window_gradients_equal_the_padded_computation():
    from prefloop.train.logps import window_binds

    tokenizer = build_tiny_tokenizer()
    model = to_float64(_sliding_model("mistral", tokenizer))
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
    model = get_peft_model(model, config)

    def grads(fn, layout):
        model.zero_grad(set_to_none=True)
        out = fn(model, collate_pairs(LONG_FEATURES, layout, tokenizer.pad_token_id))
        (out.seq.chosen.sum() - 0.5 * out.seq.rejected.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ref = grads(pair_logps_reference, "padded")
    for layout in ("packed", "prefix_shared", "packed_prefix_shared"):
        # the window binds: these gradients are those of the sequence-by-sequence fallback
        assert window_binds(model, collate_pairs(LONG_FEATURES, layout, tokenizer.pad_token_id)), layout
        fast = grads(lambda m, b: pair_logps(m, b, chunk_size=5), layout)
        for name in ref:
            norm = ref[name].abs().max().clamp(min=1e-3)
            torch.testing.assert_close(fast[name] / norm, ref[name] / norm, rtol=0, atol=FP64_EQUAL["atol"],
                                       msg=f"{layout} {name}")


def test_a_window_wider_than_every_sequence_keeps_the_fast_attention():
    from prefloop.train.logps import sliding_window, window_binds

    tokenizer = build_tiny_tokenizer()
    model = _sliding_model("mistral", tokenizer, window=64)
    assert sliding_window(model) == 64
    assert not window_binds(model, collate_pairs(LONG_FEATURES, "packed_prefix_shared", tokenizer.pad_token_id))
    from prefloop.testing import build_tiny_model

    assert sliding_window(build_tiny_model(tokenizer)) is None  # Qwen2 without use_sliding_window
