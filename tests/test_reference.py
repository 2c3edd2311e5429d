"""Reference log-probs cache: equals a recomputation, reused, invalidated by any change."""

import pytest
import torch

from prefloop.config import load_config
from prefloop.models import apply_finetuning, build_reference, load_causal_lm, weights_dtype
from prefloop.train.reference import compute_reference_logps, precompute_reference


def _features(tokenizer, n=6):
    return [{"prompt_ids": tokenizer.encode(f"What is {i} plus {i}?"), "chosen_ids": tokenizer.encode(f"It is {2 * i}."),
             "rejected_ids": tokenizer.encode("no"), "weight": 1.0, "margin": 0.0, "id": f"p{i}"} for i in range(n)]


def _setup(tiny_model_dir, tiny_tokenizer, tmp_path, **overrides):
    cfg = load_config({"model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "out"),
                       "dataset": "x.jsonl", "lora_rank": 4, "per_device_eval_batch_size": 4, **overrides})
    policy = apply_finetuning(load_causal_lm(str(tiny_model_dir), dtype=weights_dtype(cfg)), cfg)
    return cfg, build_reference(cfg, policy, tiny_tokenizer, before_training_only=True)


def _run(cfg, reference, tokenizer, features, template="chatml"):
    return precompute_reference(reference, {"train": features}, cfg, tokenizer, template, log=lambda *_: None)["train"]


def test_cache_is_reused_and_equals_a_recomputation(tiny_model_dir, tiny_tokenizer, tmp_path):
    cfg, reference = _setup(tiny_model_dir, tiny_tokenizer, tmp_path)
    features = _features(tiny_tokenizer)
    assert _run(cfg, reference, tiny_tokenizer, features) == "computed"
    again = _features(tiny_tokenizer)
    assert _run(cfg, reference, tiny_tokenizer, again) == "cached"
    # The same computation (layout, batch size, chunks) as the cache's: equal to the last bit on any CPU.
    # (That other layouts give the same numbers is tests/test_logps.py's job, in float64.)
    recomputed = compute_reference_logps(reference, _features(tiny_tokenizer), cfg.layout, tiny_tokenizer.pad_token_id,
                                         batch_size=cfg.per_device_eval_batch_size, chunk_size=cfg.logps_chunk_size)
    cached = torch.tensor([f["ref_chosen_logps"] for f in again]), torch.tensor([f["ref_rejected_logps"] for f in again])
    torch.testing.assert_close(cached[0], recomputed[0], atol=0, rtol=0)
    torch.testing.assert_close(cached[1], recomputed[1], atol=0, rtol=0)
    # A later run (a fresh model load, a new process in real life) finds the same cache.
    cfg2, reference2 = _setup(tiny_model_dir, tiny_tokenizer, tmp_path)
    assert _run(cfg2, reference2, tiny_tokenizer, _features(tiny_tokenizer)) == "cached"


def test_lora_adapters_do_not_change_the_reference_key(tiny_model_dir, tiny_tokenizer, tmp_path):
    cfg, reference = _setup(tiny_model_dir, tiny_tokenizer, tmp_path)
    assert _run(cfg, reference, tiny_tokenizer, _features(tiny_tokenizer)) == "computed"
    with torch.no_grad():
        for name, param in reference.model.named_parameters():
            if "lora_B" in name:
                param.add_(1.0)  # trained adapters; the reference (adapters disabled) is unchanged
    assert _run(cfg, reference, tiny_tokenizer, _features(tiny_tokenizer)) == "cached"


@pytest.mark.parametrize("change", ["weights", "data", "cutoff_len", "template", "precision", "ld_alpha"])
def test_any_change_invalidates_the_cache(tiny_model_dir, tiny_tokenizer, tmp_path, change):
    cfg, reference = _setup(tiny_model_dir, tiny_tokenizer, tmp_path)
    assert _run(cfg, reference, tiny_tokenizer, _features(tiny_tokenizer)) == "computed"
    features, template = _features(tiny_tokenizer), "chatml"
    if change == "weights":
        with torch.no_grad():
            reference.model.get_base_model().model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    elif change == "data":
        features[3]["chosen_ids"] = features[3]["chosen_ids"] + [tiny_tokenizer.eos_token_id]
    elif change == "cutoff_len":
        cfg, reference = _setup(tiny_model_dir, tiny_tokenizer, tmp_path, cutoff_len=512)
    elif change == "template":
        template = "qwen"
    elif change == "ld_alpha":  # LD-DPO weights the reference's log-probs too: another number, another key
        cfg, reference = _setup(tiny_model_dir, tiny_tokenizer, tmp_path, ld_alpha=0.5)
    if change == "precision":
        status = precompute_reference(reference, {"train": features}, cfg, tiny_tokenizer, template,
                                      autocast_dtype=torch.bfloat16, log=lambda *_: None)["train"]
    else:
        status = _run(cfg, reference, tiny_tokenizer, features, template)
    assert status == "computed"


@pytest.mark.parametrize("change", ["ref_model", "pure_bf16", "continued_adapter", "ref_model_adapters"])
def test_another_reference_model_or_weight_precision_invalidates_the_cache(tiny_model_dir, tiny_tokenizer, tmp_path,
                                                                          change):
    """The cache key covers the reference itself: another ref_model, the weights stored in bf16 (pure_bf16),
    the SFT adapter a run continues (the reference is base + adapter then) or a reference adapter."""
    from prefloop.testing import build_tiny_model

    cfg, reference = _setup(tiny_model_dir, tiny_tokenizer, tmp_path)
    assert _run(cfg, reference, tiny_tokenizer, _features(tiny_tokenizer)) == "computed"
    if change == "ref_model":
        other = tmp_path / "other"
        build_tiny_model(tiny_tokenizer, seed=5).save_pretrained(other)
        tiny_tokenizer.save_pretrained(other)
        cfg, reference = _setup(tiny_model_dir, tiny_tokenizer, tmp_path, ref_model=str(other))
    elif change == "pure_bf16":
        cfg, reference = _setup(tiny_model_dir, tiny_tokenizer, tmp_path, pure_bf16=True)
    else:
        policy = apply_finetuning(load_causal_lm(str(tiny_model_dir)), cfg)
        with torch.no_grad():
            for name, param in policy.named_parameters():
                if "lora_B" in name:
                    param.add_(0.5)
        policy.save_pretrained(tmp_path / "sft")
        key = "adapter_name_or_path" if change == "continued_adapter" else "ref_model_adapters"
        cfg, reference = _setup(tiny_model_dir, tiny_tokenizer, tmp_path, **{key: str(tmp_path / "sft")})
    assert _run(cfg, reference, tiny_tokenizer, _features(tiny_tokenizer)) == "computed"
    assert _run(cfg, reference, tiny_tokenizer, _features(tiny_tokenizer)) == "cached"
