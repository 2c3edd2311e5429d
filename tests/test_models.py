"""Which weights train (LoRA / full / freeze), the reference model, gradient checkpointing, merging."""

import re

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


# --- audit: peers' LoRA / reference / merge reports ------------------------------------------------------------


def _tiny_config(tokenizer, **extra):
    from transformers import Qwen2Config

    kwargs = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    return Qwen2Config(**{**kwargs, **extra})


def _save_model(path, tokenizer, dtype=torch.float32, seed=0, **extra):
    """A tiny Qwen2 (config keys in `extra`: tie_word_embeddings, attention_dropout, ...) saved in `dtype`, with
    the tokenizer and a generation config of its own."""
    from transformers import GenerationConfig, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(_tiny_config(tokenizer, **extra)).to(dtype)
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8,
                                               eos_token_id=[tokenizer.eos_token_id])
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _adapter(tmp_path, base, tokenizer, name="adapter", **overrides):
    from prefloop.adapters import record_base

    cfg = _cfg(base, tmp_path, **overrides)
    policy = apply_finetuning(load_causal_lm(str(base)), cfg)
    _randomize_lora(policy)
    out = tmp_path / name
    policy.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record_base(out, str(base))
    return out, policy


def _ids(tokenizer):
    return torch.tensor([tokenizer.encode("What is the capital of France? Paris is.")])


def test_lora_target_all_on_tied_embeddings_leaves_the_head_and_the_tie_alone(tiny_tokenizer, tmp_path):
    """lora_target: all on a model whose lm_head is tied to embed_tokens (Qwen2.5-0.5B, Llama-3.2-1B): LoRA on
    every linear layer but the head, the tie kept."""
    base = _save_model(tmp_path / "tied", tiny_tokenizer, tie_word_embeddings=True)
    model = load_causal_lm(str(base))
    assert set(lora_target_modules(model, "all")) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                      "down_proj"}
    with pytest.raises(ConfigError, match="lora_target: lm_head is the output head"):
        lora_target_modules(model, "q_proj,lm_head")
    policy = apply_finetuning(model, _cfg(base, tmp_path))
    wrapped = {n.rsplit(".", 1)[0] for n, _ in policy.named_parameters() if "lora_" in n}
    assert wrapped and not any("lm_head" in n or "embed_tokens" in n for n in wrapped)
    assert policy.get_output_embeddings().weight is policy.get_input_embeddings().weight


def test_lora_target_all_finds_gpt2_conv1d_layers(tiny_tokenizer, tmp_path):
    """GPT-2's projections are transformers' Conv1D, not nn.Linear: `all` found nothing but the head."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2))
    assert set(lora_target_modules(model, "all")) == {"c_attn", "c_proj", "c_fc"}
    policy = apply_finetuning(model, _cfg(tmp_path, tmp_path))
    assert any("c_attn.lora_A" in n for n, p in policy.named_parameters() if p.requires_grad)


def test_lora_target_all_never_matches_the_head_through_a_shared_name():
    """PEFT matches target names by suffix: an inner layer named like the head would make it wrap the head."""

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.block = torch.nn.ModuleDict({"lm_head": torch.nn.Linear(4, 4), "proj": torch.nn.Linear(4, 4)})
            self.lm_head = torch.nn.Linear(4, 10)

        def get_output_embeddings(self):
            return self.lm_head

        def get_input_embeddings(self):
            return self.embed

    assert lora_target_modules(Toy(), "all") == ["block.lm_head", "block.proj"]


def test_rslora_and_dora_reach_peft(tiny_model_dir, tmp_path):
    model = apply_finetuning(load_causal_lm(str(tiny_model_dir)), _cfg(tiny_model_dir, tmp_path, use_rslora=True,
                                                                        use_dora=True, lora_rank=4))
    config = model.peft_config["default"]
    assert config.use_rslora and config.use_dora and config.lora_alpha == 8  # default alpha: 2 * rank
    assert any("lora_magnitude_vector" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("layers, modules, extra, expected", [
    (1, "all", None, {"model.layers.1."}),
    (-1, "all", None, {"model.layers.0."}),
    (2, "mlp", None, {"model.layers.0.mlp.", "model.layers.1.mlp."}),
    (-1, "self_attn,mlp", "embed_tokens", {"model.layers.0.self_attn.", "model.layers.0.mlp.", "model.embed_tokens."}),
])
def test_freeze_follows_llama_factorys_rule(tiny_model_dir, tmp_path, layers, modules, extra, expected):
    """LLaMA-Factory: freeze_trainable_layers N > 0 the last N layers, N < 0 the first -N; freeze_trainable_modules
    within them; freeze_extra_modules outside them. Negative counts and modules were refused."""
    cfg = _cfg(tiny_model_dir, tmp_path, finetuning_type="freeze", freeze_trainable_layers=layers,
               freeze_trainable_modules=modules, freeze_extra_modules=extra)
    model = apply_finetuning(load_causal_lm(str(tiny_model_dir)), cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(any(n.startswith(e) for e in expected) for n in trainable)
    assert all(any(n.startswith(e) for n in trainable) for e in expected)


def test_freeze_errors_list_what_the_model_has(tiny_model_dir, tmp_path):
    for overrides, message in (({"freeze_trainable_layers": -3}, "more than the model's 2 layers"),
                               ({"freeze_trainable_modules": "ffn"}, "'ffn' is not a module of a decoder layer; use all "
                                                                     "or a comma list of: input_layernorm, mlp"),
                               ({"freeze_extra_modules": "wte"}, "'wte' is not a module outside the decoder layers")):
        cfg = _cfg(tiny_model_dir, tmp_path, finetuning_type="freeze", **overrides)
        with pytest.raises(ConfigError, match=re.escape(message)):
            apply_finetuning(load_causal_lm(str(tiny_model_dir)), cfg)


def test_disable_dropout_switches_off_every_dropout_but_keeps_the_config(tiny_tokenizer, tmp_path):
    """TRL and LLaMA-Factory disable dropout in DPO (module and functional attention dropout, LoRA's too):
    with it on, the policy's log-probs are noisy and an untrained policy does not tie with its reference."""
    from prefloop.models import disable_dropout

    base = _save_model(tmp_path / "drop", tiny_tokenizer, attention_dropout=0.5)
    cfg = _cfg(base, tmp_path, lora_dropout=0.3)
    policy = apply_finetuning(load_causal_lm(str(base)), cfg).train()
    batch = _batch(tiny_tokenizer)
    with torch.no_grad():
        noisy = [pair_logps(policy, batch).seq.chosen for _ in range(2)]
    assert not torch.equal(noisy[0], noisy[1])  # dropout on in train mode
    assert disable_dropout(policy) > 0
    with torch.no_grad():
        train_mode = pair_logps(policy, batch).seq.chosen
        policy.eval()
        eval_mode = pair_logps(policy, batch).seq.chosen
    torch.testing.assert_close(train_mode, eval_mode, atol=0, rtol=0)
    assert policy.config.attention_dropout == 0.5  # a saved model keeps its family's setting
    assert all(isinstance(d, torch.nn.Identity) for m in policy.modules() if hasattr(m, "lora_dropout")
               and isinstance(m.lora_dropout, torch.nn.ModuleDict) for d in m.lora_dropout.values())


def test_the_reference_runs_in_eval_mode_even_when_it_is_the_training_policy(tiny_tokenizer, tmp_path):
    """TRL computed the adapter-disabled reference with the policy in train mode (dropout on). Right value: the
    reference's log-probs equal the base's in eval mode exactly, and the policy's mode is restored."""
    base = _save_model(tmp_path / "drop", tiny_tokenizer, attention_dropout=0.5)
    cfg = _cfg(base, tmp_path, disable_dropout=False)
    policy = apply_finetuning(load_causal_lm(str(base)), cfg)
    _randomize_lora(policy)
    reference = build_reference(cfg, policy, tiny_tokenizer)
    assert reference.kind == "adapters_disabled"
    batch = _batch(tiny_tokenizer)
    policy.train()
    with torch.no_grad():
        with reference.context():
            assert not policy.training
            ref = [pair_logps(reference.model, batch).seq.chosen for _ in range(2)]
        assert policy.training
        frozen = pair_logps(load_causal_lm(str(base)), batch).seq.chosen
    torch.testing.assert_close(ref[0], frozen, atol=0, rtol=0)
    torch.testing.assert_close(ref[1], frozen, atol=0, rtol=0)


def test_a_separate_reference_is_frozen_in_eval_mode_without_dropout(tiny_tokenizer, tmp_path):
    other = _save_model(tmp_path / "other", tiny_tokenizer, seed=3, attention_dropout=0.5)
    base = _save_model(tmp_path / "base", tiny_tokenizer)
    cfg = _cfg(base, tmp_path, ref_model=str(other))
    reference = build_reference(cfg, apply_finetuning(load_causal_lm(str(base)), cfg), tiny_tokenizer)
    assert reference.kind == "separate" and not reference.model.training
    assert not any(p.requires_grad for p in reference.model.parameters())
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in reference.model.modules())


def test_continuing_an_adapter_the_reference_is_the_adapters_model(tiny_model_dir, tiny_tokenizer, tmp_path):
    """LLaMA-Factory issue 8459: DPO on top of an SFT LoRA adapter (adapter_name_or_path, no ref_model) used the
    bare base as the reference, so the first step did not tie (loss far from ln 2). Right value: the reference
    is base + that adapter, the policy's starting point; ref_model naming the base keeps the base."""
    sft, sft_policy = _adapter(tmp_path, tiny_model_dir, tiny_tokenizer, "sft")
    cfg = _cfg(tiny_model_dir, tmp_path, adapter_name_or_path=str(sft))
    policy = apply_finetuning(load_causal_lm(str(tiny_model_dir)), cfg)
    batch = _batch(tiny_tokenizer)
    with torch.no_grad():
        start = pair_logps(policy.eval(), batch).seq
        for before_training_only in (True, False):
            reference = build_reference(cfg, policy, tiny_tokenizer, before_training_only=before_training_only)
            assert reference.kind == ("policy_start" if before_training_only else "separate")
            with reference.context():
                ref = pair_logps(reference.model, batch).seq
            torch.testing.assert_close(ref.chosen, start.chosen, atol=1e-6, rtol=0)
            torch.testing.assert_close(ref.rejected, start.rejected, atol=1e-6, rtol=0)
    explicit = _cfg(tiny_model_dir, tmp_path, adapter_name_or_path=str(sft), ref_model=str(tiny_model_dir))
    assert build_reference(explicit, policy, tiny_tokenizer).kind == "adapters_disabled"


def test_merge_saves_in_the_base_dtype_with_ties_tokenizer_and_generation_config(tiny_tokenizer, tmp_path):
    """A bf16 base merged into an fp32 model twice its size (LLaMA-Factory 7998, ms-swift 841, axolotl 902).
    Right value: merged in fp32, saved in bf16; tied embeddings stored once and still tied; the base's
    generation config and the tokenizer's chat template beside it; logits equal base + adapter (to bf16
    rounding of the merged weights)."""
    import json

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, GenerationConfig

    base = _save_model(tmp_path / "base", tiny_tokenizer, dtype=torch.bfloat16, tie_word_embeddings=True)
    adapter, policy = _adapter(tmp_path, base, tiny_tokenizer)
    out = tmp_path / "merged"
    assert merge_command(str(adapter), str(out)) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is True
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"BF16"}
    assert "lm_head.weight" not in keys and not any("lora" in k for k in keys)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert merged.dtype == torch.bfloat16 and merged.lm_head.weight is merged.model.embed_tokens.weight
    assert GenerationConfig.from_pretrained(out).to_dict() == GenerationConfig.from_pretrained(base).to_dict()
    assert load_tokenizer(str(out)).chat_template == tiny_tokenizer.chat_template
    # policy: bf16 base weights + fp32 adapter, computed unmerged; merged: the same sum rounded once to bf16
    with torch.no_grad():
        expected = policy.eval().float()(_ids(tiny_tokenizer)).logits
        got = merged.float()(_ids(tiny_tokenizer)).logits
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()
    # merged in fp32: each LoRA weight is W + scale * B @ A computed in fp32 and rounded once to bf16 (1 ulp for
    # the matmul's summation order); a merge done in bf16 rounds twice and is further off
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    base_weights, merged_weights = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    in_bf16_off = checked = 0
    for name, module in policy.named_modules():
        if not (isinstance(module, LoraLayer) and "default" in module.lora_A):
            continue
        key = name.removeprefix("base_model.model.") + ".weight"
        weight = base_weights[key]
        lora_b, lora_a = module.lora_B["default"].weight.detach(), module.lora_A["default"].weight.detach()
        delta = (lora_b.float() @ lora_a.float()) * module.scaling["default"]
        expected = (weight.float() + delta).to(torch.bfloat16)
        ulps = (merged_weights[key].view(torch.int16).int() - expected.view(torch.int16).int()).abs()
        assert ulps.max() <= 1, (key, ulps.max())
        in_bf16 = weight + (lora_b.bfloat16() @ lora_a.bfloat16()) * module.scaling["default"]
        in_bf16_off += int(((in_bf16.view(torch.int16).int() - expected.view(torch.int16).int()).abs() > 1).sum())
        checked += 1
    assert checked and in_bf16_off, (checked, in_bf16_off)  # the check tells an fp32 merge from a bf16 one
    fp32_base = _save_model(tmp_path / "base32", tiny_tokenizer)  # an fp32 base stays fp32
    adapter32, _ = _adapter(tmp_path, fp32_base, tiny_tokenizer, "adapter32")
    merge_command(str(adapter32), str(tmp_path / "merged32"))
    assert json.loads((tmp_path / "merged32" / "config.json").read_text())["dtype"] == "float32"


def test_merge_unties_an_adapter_that_trained_the_tied_head(tiny_tokenizer, tmp_path):
    """An adapter with `modules_to_save: [lm_head]` on a tied model (LLaMA-Factory additional_target): merged
    and saved with tie_word_embeddings still true, reloading overwrote the trained head with the embeddings
    (transformers 45127, LLaMA-Factory PR 10832). Right value: untied, logits equal base + adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from prefloop.adapters import record_base

    base = _save_model(tmp_path / "tied", tiny_tokenizer, tie_word_embeddings=True)
    model = get_peft_model(load_causal_lm(str(base)), LoraConfig(r=4, target_modules=["q_proj"],
                                                                 modules_to_save=["lm_head"]))
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.add_(0.5)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    record_base(adapter, str(base))
    assert merge_command(str(adapter), str(tmp_path / "merged")) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.tie_word_embeddings is False
    with torch.no_grad():
        torch.testing.assert_close(merged(_ids(tiny_tokenizer)).logits, model.eval()(_ids(tiny_tokenizer)).logits,
                                   atol=1e-4, rtol=1e-4)


def test_merge_refuses_to_overwrite_its_inputs(tiny_model_dir, tiny_tokenizer, tmp_path):
    adapter, _ = _adapter(tmp_path, tiny_model_dir, tiny_tokenizer)
    with pytest.raises(ModelLoadError, match="is the adapter itself"):
        merge_command(str(adapter), str(adapter))
    with pytest.raises(ModelLoadError, match="is the base model itself"):
        merge_command(str(adapter), str(tiny_model_dir))


def test_merge_saves_the_chat_template_the_adapter_was_trained_with(tiny_model_dir, tiny_tokenizer, tmp_path):
    """Trained with a built-in `template:` (the seed config's `template: qwen`) while the tokenizer has another:
    the merged model was served with the tokenizer's template. Right value: the training template, and its
    end-of-turn token among the generation config's eos ids."""
    import yaml

    from transformers import GenerationConfig

    from prefloop.data.template import get_template

    adapter, _ = _adapter(tmp_path, tiny_model_dir, tiny_tokenizer)
    (adapter / "prefloop_config.yaml").write_text(yaml.safe_dump({"template": "qwen"}))
    merge_command(str(adapter), str(tmp_path / "merged"))
    qwen = get_template("qwen", tiny_tokenizer)
    assert load_tokenizer(str(tmp_path / "merged")).chat_template == qwen.source != tiny_tokenizer.chat_template
    eos = GenerationConfig.from_pretrained(tmp_path / "merged").eos_token_id
    assert set(qwen.stop_token_ids(tiny_tokenizer)) <= set(eos if isinstance(eos, list) else [eos])
