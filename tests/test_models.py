"""Which weights train (LoRA / full / freeze), the reference model, gradient checkpointing, merging."""

import pytest
import torch

from prefloop.config import load_config
from prefloop.errors import ConfigError
from prefloop.models import (
    ModelLoadError,
    apply_finetuning,
    build_reference,
    load_causal_lm,
    load_tokenizer,
    lora_target_modules,
    merge_command,
)
from prefloop.testing import build_tiny_model, build_tiny_tokenizer, to_float64
from prefloop.train.collate import collate_pairs
from prefloop.train.logps import pair_logps


def _cfg(model_dir, tmp_path, **overrides):
    base = {"model_name_or_path": str(model_dir), "output_dir": str(tmp_path / "out"), "dataset": "x.jsonl",
            "lora_rank": 4}
    return load_config({**base, **overrides})


def _batch(tokenizer):
    texts = [("What is the capital of France?", "Paris is the capital.", "Rome."),
             ("Write python code", "def f(): return 1", "no")]
    features = [{"prompt_ids": tokenizer.encode(p), "chosen_ids": tokenizer.encode(c), "rejected_ids": tokenizer.encode(r)}
                for p, c, r in texts]
    return collate_pairs(features, "padded", tokenizer.pad_token_id)


def _randomize_lora(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


def test_lora_target_all_is_every_linear_but_the_head(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir))
    names = lora_target_modules(model, "all")
    assert set(names) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert "lm_head" not in names
    assert lora_target_modules(model, "q_proj, v_proj") == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="qq_proj is not a linear layer of this model; use 'all' or"):
        lora_target_modules(model, "qq_proj")


def test_lora_applies_to_the_targets_only(tiny_model_dir, tmp_path):
    model = apply_finetuning(load_causal_lm(str(tiny_model_dir)), _cfg(tiny_model_dir, tmp_path, lora_target="q_proj,v_proj"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in trainable)


def test_full_and_freeze(tiny_model_dir, tmp_path):
    full = apply_finetuning(load_causal_lm(str(tiny_model_dir)), _cfg(tiny_model_dir, tmp_path, finetuning_type="full"))
    assert all(p.requires_grad for p in full.parameters())
    frozen = apply_finetuning(load_causal_lm(str(tiny_model_dir)),
                              _cfg(tiny_model_dir, tmp_path, finetuning_type="freeze", freeze_trainable_layers=1))
    trainable = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.layers.1.") for n in trainable)
    with pytest.raises(ConfigError, match="more than the model's 2 layers"):
        apply_finetuning(load_causal_lm(str(tiny_model_dir)),
                         _cfg(tiny_model_dir, tmp_path, finetuning_type="freeze", freeze_trainable_layers=5))


def test_lora_reference_is_the_base_with_adapters_disabled(tiny_model_dir, tiny_tokenizer, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path, ref_model=str(tiny_model_dir))
    policy = apply_finetuning(load_causal_lm(str(tiny_model_dir)), cfg)
    _randomize_lora(policy)  # trained adapters: the policy now differs from its base
    reference = build_reference(cfg, policy, tiny_tokenizer)
    assert reference.kind == "adapters_disabled" and reference.model is policy  # no second copy
    batch = _batch(tiny_tokenizer)
    frozen_base = load_causal_lm(str(tiny_model_dir))
    with torch.no_grad():
        with reference.context():
            ref = pair_logps(reference.model, batch).seq
        base = pair_logps(frozen_base, batch).seq
        trained = pair_logps(policy, batch).seq
    # Adapters disabled run exactly the base layers: equal to the last bit, on any CPU.
    torch.testing.assert_close(ref.chosen, base.chosen, atol=0, rtol=0)
    torch.testing.assert_close(ref.rejected, base.rejected, atol=0, rtol=0)
    assert (trained.chosen - base.chosen).abs().max() > 1e-3  # the adapters were really switched off


def test_full_reference_is_a_frozen_copy_or_the_untrained_policy(tiny_model_dir, tiny_tokenizer, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path, finetuning_type="full")
    policy = apply_finetuning(load_causal_lm(str(tiny_model_dir)), cfg)
    copy = build_reference(cfg, policy, tiny_tokenizer)
    assert copy.kind == "frozen_copy" and copy.model is not policy
    assert not any(p.requires_grad for p in copy.model.parameters())
    assert build_reference(cfg, policy, tiny_tokenizer, before_training_only=True).model is policy


def test_reference_with_another_tokenizer_is_an_error(tiny_model_dir, tiny_tokenizer, tmp_path):
    other_tok = build_tiny_tokenizer(vocab_size=300)
    other = tmp_path / "other"
    build_tiny_model(other_tok).save_pretrained(other)
    other_tok.save_pretrained(other)
    cfg = _cfg(tiny_model_dir, tmp_path, ref_model=str(other))
    policy = apply_finetuning(load_causal_lm(str(tiny_model_dir)), cfg)
    with pytest.raises(ModelLoadError, match="different tokenizer"):
        build_reference(cfg, policy, tiny_tokenizer)


def test_separate_reference_model_with_the_same_tokenizer(tiny_model_dir, tiny_tokenizer, tmp_path):
    other = tmp_path / "other"
    build_tiny_model(tiny_tokenizer, seed=3).save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    cfg = _cfg(tiny_model_dir, tmp_path, ref_model=str(other))
    policy = apply_finetuning(load_causal_lm(str(tiny_model_dir)), cfg)
    reference = build_reference(cfg, policy, tiny_tokenizer)
    assert reference.kind == "separate" and reference.model is not policy


def test_gradient_checkpointing_with_lora_gives_lora_gradients(tiny_model_dir, tiny_tokenizer, tmp_path):
    batch = _batch(tiny_tokenizer)
    grads = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg = _cfg(tiny_model_dir, tmp_path, gradient_checkpointing=checkpointing)
        model = apply_finetuning(load_causal_lm(str(tiny_model_dir)), cfg)
        _randomize_lora(model)
        model.train()
        out = pair_logps(model, batch).seq
        (out.chosen - out.rejected).sum().backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for g in grads[True].values())
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, atol=0, rtol=0)  # the same ops recomputed: bitwise


def test_merge_makes_a_standalone_model(tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = _cfg(tiny_model_dir, tmp_path)
    policy = apply_finetuning(load_causal_lm(str(tiny_model_dir)), cfg)
    _randomize_lora(policy)
    adapter = tmp_path / "adapter"
    policy.save_pretrained(adapter)
    tiny_tokenizer.save_pretrained(adapter)
    assert merge_command(str(adapter), str(tmp_path / "merged")) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert load_tokenizer(str(tmp_path / "merged")).get_vocab() == tiny_tokenizer.get_vocab()
    ids = torch.tensor([tiny_tokenizer.encode("What is the capital of France?")])
    with torch.no_grad():
        # In float64 the two computations (W + BA stored in fp32, vs W x + B(A x)) differ only by the fp32
        # rounding of the merged weights, the same on every CPU (kernel rounding is ~1e-15 there).
        torch.testing.assert_close(to_float64(merged)(ids).logits, to_float64(policy.eval())(ids).logits,
                                   atol=1e-5, rtol=1e-4)
    with pytest.raises(ModelLoadError, match="holds no LoRA adapter"):
        merge_command(str(tmp_path), str(tmp_path / "m2"))


def test_hub_id_offline_fails_with_a_message_that_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="is not a local directory, and loading it as a hub id failed"):
        load_tokenizer("prefloop-test-org/no-such-model")


# --- issue 12 item 19: an adapter finds its base from anywhere -------------------------------------------


def _adapter_trained_from_a_relative_path(tmp_path, monkeypatch, tiny_model_dir, tiny_tokenizer):
    """A LoRA adapter saved the way `prefloop train` saves one, with the base given as a relative path
    (`models/base`, as in the demo config) from the project directory."""
    import shutil

    from prefloop.adapters import record_base

    project = tmp_path / "project"
    shutil.copytree(tiny_model_dir, project / "models" / "base")
    monkeypatch.chdir(project)
    cfg = _cfg("models/base", tmp_path)
    policy = apply_finetuning(load_causal_lm("models/base"), cfg)
    _randomize_lora(policy)
    adapter = project / "checkpoints" / "run"
    policy.save_pretrained(adapter)
    tiny_tokenizer.save_pretrained(adapter)
    record_base(adapter, "models/base")
    return project, adapter, policy


def test_an_adapter_records_its_base_as_an_absolute_path_with_a_fingerprint(tmp_path, monkeypatch, tiny_model_dir,
                                                                             tiny_tokenizer):
    import json

    from prefloop.adapters import BASE_FILE, base_fingerprint

    project, adapter, _ = _adapter_trained_from_a_relative_path(tmp_path, monkeypatch, tiny_model_dir, tiny_tokenizer)
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(project / "models" / "base")  # was "models/base"
    record = json.loads((adapter / BASE_FILE).read_text())
    assert record["fingerprint"] == base_fingerprint(str(project / "models" / "base")) and len(record["fingerprint"]) == 64
    assert record["given_as"] == "models/base"


def test_merge_works_after_the_adapter_is_moved(tmp_path, monkeypatch, tiny_model_dir, tiny_tokenizer):
    """Input: the adapter directory moved elsewhere and merge run from another directory. Right value:
    exit 0 and a merged model equal to the adapter applied to the base (it failed: relative base path)."""
    import shutil

    from transformers import AutoModelForCausalLM

    project, adapter, policy = _adapter_trained_from_a_relative_path(tmp_path, monkeypatch, tiny_model_dir,
                                                                     tiny_tokenizer)
    moved = tmp_path / "elsewhere" / "adapter"
    shutil.move(str(adapter), moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert merge_command(str(moved), str(tmp_path / "merged")) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([tiny_tokenizer.encode("What is the capital of France?")])
    with torch.no_grad():
        torch.testing.assert_close(to_float64(merged)(ids).logits, to_float64(policy.eval())(ids).logits,
                                   atol=1e-5, rtol=1e-4)
    # serve / generate load the moved adapter onto the base given on the command line
    served = load_causal_lm(str(project / "models" / "base"), adapter=str(moved))
    assert type(served).__name__ == "PeftModelForCausalLM"


def test_a_moved_base_is_an_error_naming_the_base_flag(tmp_path, monkeypatch, tiny_model_dir, tiny_tokenizer):
    import shutil

    project, adapter, _ = _adapter_trained_from_a_relative_path(tmp_path, monkeypatch, tiny_model_dir, tiny_tokenizer)
    shutil.move(str(project / "models" / "base"), tmp_path / "base-moved")
    with pytest.raises(ModelLoadError) as err:
        merge_command(str(adapter), str(tmp_path / "merged"))
    assert str(err.value) == (f"{adapter} was trained on the base model {project / 'models' / 'base'}, which is not on "
                              f"this machine (moved or deleted?); pass --base with the base model's directory")
    assert merge_command(str(adapter), str(tmp_path / "merged"), base=str(tmp_path / "base-moved")) == 0


def test_a_changed_base_is_an_error_and_a_warning_under_base(tmp_path, monkeypatch, tiny_model_dir, tiny_tokenizer,
                                                             capsys):
    project, adapter, _ = _adapter_trained_from_a_relative_path(tmp_path, monkeypatch, tiny_model_dir, tiny_tokenizer)
    other = build_tiny_model(tiny_tokenizer, seed=7)  # same shapes, other weights, saved over the base
    other.save_pretrained(project / "models" / "base")
    with pytest.raises(ModelLoadError, match=r"is not the one .* was trained on .*; pass --base with the base model"):
        merge_command(str(adapter), str(tmp_path / "merged"))
    assert merge_command(str(adapter), str(tmp_path / "merged"), base=str(project / "models" / "base")) == 0
    assert "using it because --base names it" in capsys.readouterr().err


def test_an_adapter_with_a_relative_base_from_before_says_to_pass_base(tmp_path, monkeypatch, tiny_model_dir,
                                                                       tiny_tokenizer):
    """Adapters saved before prefloop recorded bases hold only PEFT's relative path."""
    import json

    from prefloop.adapters import BASE_FILE

    project, adapter, _ = _adapter_trained_from_a_relative_path(tmp_path, monkeypatch, tiny_model_dir, tiny_tokenizer)
    (adapter / BASE_FILE).unlink()
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "models/base"}))
    monkeypatch.chdir(tmp_path)  # "models/base" means nothing from here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        merge_command(str(adapter), str(tmp_path / "merged"))
    assert "point --base at the local directory" in str(err.value) and "model_name_or_path" not in str(err.value)
