"""MODPO (Zhou et al. 2023, arXiv 2310.03708): the loss against the paper's formula on hand values, the
reduction to DPO, and training on a tiny model with an implicit-reward margin model (a LoRA adapter) and
a sequence-classification reward model, margin rewards cached like the reference log-probs."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import prefloop
from prefloop.config import load_config
from prefloop.errors import ConfigError
from prefloop.models import Reference, load_causal_lm, load_tokenizer
from prefloop.train.losses import SequenceLogps, build_loss_spec, modpo_loss, preference_loss, sigmoid_loss
from prefloop.train.reference import compute_reference_logps
from prefloop.train.run import load_data

ROOT = Path(__file__).resolve().parents[1]
HELPFUL = str(ROOT / "examples" / "data" / "rounds" / "helpfulness.jsonl")
SAFETY = str(ROOT / "examples" / "data" / "rounds" / "safety.jsonl")


def seq(chosen, rejected):
    return SequenceLogps(torch.tensor(chosen), torch.tensor(rejected), torch.tensor([5.0, 5.0]),
                         torch.tensor([5.0, 5.0]))


def test_modpo_loss_equals_the_paper_formula_on_hand_values():
    # Pair 1: h = (-10 + 12) - (-15 + 14) = 3; pair 2: h = (-8 + 7) - (-9 + 10) = -2.
    policy, reference = seq([-10.0, -8.0], [-15.0, -9.0]), seq([-12.0, -7.0], [-14.0, -10.0])
    gaps = torch.tensor([[0.5, -0.2], [-1.0, 0.3]])
    spec = build_loss_spec(SimpleNamespace(pref_loss="modpo", pref_beta=0.1, modpo_weights=[0.5, 1.0, 2.0]))
    out = preference_loss(policy, reference, spec, margin_rewards=gaps)
    # z = (1/w0) * (beta*h - w1*gap1 - w2*gap2):  (0.3 - 0.5 + 0.4) / 0.5 = 0.4;  (-0.2 + 1.0 - 0.6) / 0.5 = 0.4
    expected = [math.log1p(math.exp(-0.4)), math.log1p(math.exp(-0.4))]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.2, -0.1], abs=1e-6)  # beta * log-ratio, as DPO logs
    assert modpo_loss(torch.tensor([3.0]), torch.tensor([[0.5, -0.2]]), 0.1, [0.5, 1.0, 2.0]).item() == \
        pytest.approx(math.log1p(math.exp(-0.4)), abs=1e-6)


def test_modpo_reduces_to_dpo_when_the_other_weights_are_zero():
    h = torch.tensor([3.0, -2.0, 0.0, 10.0])
    gaps = torch.tensor([[5.0], [-3.0], [1.0], [0.0]])
    assert torch.allclose(modpo_loss(h, gaps, 0.1, [1.0, 0.0]), sigmoid_loss(h, 0.1), atol=1e-7)
    # w0 alone scales beta: beta / w0
    assert torch.allclose(modpo_loss(h, gaps, 0.1, [0.5, 0.0]), sigmoid_loss(h, 0.2), atol=1e-7)
    with pytest.raises(ValueError, match="2 margin rewards per pair but 1 margin weights"):
        modpo_loss(h, torch.zeros(4, 2), 0.1, [1.0, 0.5])


BASE = dict(stage="dpo", finetuning_type="lora", lora_target="all", lora_rank=4, pref_beta=0.1, cutoff_len=256,
            learning_rate=5e-3, val_size=3, report_to="none", sample_prompts=0, logging_steps=1, save_strategy="no")


@pytest.fixture(scope="module")
def margin_adapter(tmp_path_factory, tiny_model_dir):
    """A DPO adapter trained on helpfulness: the margin model of the 'other objective'."""
    out = tmp_path_factory.mktemp("modpo") / "helpful"
    prefloop.train(dict(BASE, model_name_or_path=str(tiny_model_dir), dataset=HELPFUL, output_dir=str(out),
                        max_steps=3, per_device_train_batch_size=4))
    return out


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_config(config)
    path = tmp_path_factory.mktemp("rm") / "rm"
    model.save_pretrained(path)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(path)
    return path


def modpo_config(tiny_model_dir, out, models, weights) -> dict:
    # One batch of all 9 training pairs, so the first logged loss is the mean over every pair.
    return dict(BASE, model_name_or_path=str(tiny_model_dir), dataset=SAFETY, output_dir=str(out), pref_loss="modpo",
                modpo_margin_models=[str(m) for m in models], modpo_weights=weights, max_steps=1,
                per_device_train_batch_size=9)


def implicit_gap(cfg, tiny_model_dir, margin_adapter):
    """(m_c - ref_c) - (m_r - ref_r) per training pair of `cfg`: the margin adapter's log-ratio gap against the
    starting model (tiny_model_dir), computed directly with plain padded forward passes (shape (pairs,))."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = load_data(cfg, tokenizer, lambda *a, **k: None)

    def logps(model):
        return compute_reference_logps(Reference(model, "separate", "direct"), data.train, "padded",
                                       tokenizer.pad_token_id, 4, 4096)

    ref_c, ref_r = logps(load_causal_lm(str(tiny_model_dir)))
    m_c, m_r = logps(load_causal_lm(str(tiny_model_dir), adapter=str(margin_adapter)))
    return (m_c - ref_c) - (m_r - ref_r)


def expected_first_loss(cfg_dict, tiny_model_dir, margin_adapter, reward_model_dir=None) -> float:
    """-log sigmoid((1/w0) * (0 - sum_k w_k gap_k)) averaged over the training pairs: at step 1 the policy
    equals the reference, so h = 0; gaps computed here directly from the margin models."""
    cfg = load_config(cfg_dict)
    gaps = [cfg.pref_beta * implicit_gap(cfg, tiny_model_dir, margin_adapter)]
    if reward_model_dir is not None:
        from prefloop.judge.reward import RewardModel

        rm = RewardModel(str(reward_model_dir))
        pairs = load_data(cfg, load_tokenizer(str(tiny_model_dir)), lambda *a, **k: None).split_pairs["train"]
        chosen = torch.tensor(rm.score([(p.prompt_messages(), p.chosen) for p in pairs]))
        rejected = torch.tensor(rm.score([(p.prompt_messages(), p.rejected) for p in pairs]))
        gaps.append(chosen - rejected)
    w = cfg.modpo_weights
    z = -sum(wk * g for wk, g in zip(w[1:], gaps)) / w[0]
    return float(torch.nn.functional.softplus(-z).mean())


def first_loss(out: Path) -> float:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return next(h["loss"] for h in history if "loss" in h)


def test_modpo_trains_with_an_adapter_margin_model_cached_once(tmp_path, tiny_model_dir, margin_adapter, capsys):
    config = modpo_config(tiny_model_dir, tmp_path / "a", [margin_adapter], [0.5, 0.5])
    metrics = prefloop.train(config)
    assert first_loss(tmp_path / "a") == pytest.approx(expected_first_loss(config, tiny_model_dir, margin_adapter),
                                                       abs=1e-4)
    assert metrics["cache/margin_computed"] == 2 and "cache/margin_reused" not in metrics  # train + validation
    # Same data, same models, shared cache directory: nothing recomputed.
    again = dict(config, output_dir=str(tmp_path / "b"), ref_cache_dir=str(tmp_path / "a" / "ref_cache"))
    metrics = prefloop.train(again)
    assert metrics["cache/margin_reused"] == 2 and metrics["cache/reference_reused"] == 2
    assert "cache/margin_computed" not in metrics
    assert first_loss(tmp_path / "b") == pytest.approx(first_loss(tmp_path / "a"), abs=1e-6)


def test_modpo_with_a_reward_model_as_second_margin(tmp_path, tiny_model_dir, margin_adapter, reward_model_dir):
    config = modpo_config(tiny_model_dir, tmp_path / "rm", [margin_adapter, reward_model_dir], [1.0, 0.5, 0.25])
    prefloop.train(config)
    expected = expected_first_loss(config, tiny_model_dir, margin_adapter, reward_model_dir)
    assert first_loss(tmp_path / "rm") == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("extra, message", [
    (dict(modpo_weights=[1.0]), "modpo_weights needs 2 values"),
    (dict(modpo_weights=[0.0, 1.0]), "w0 = 0.0 is not allowed"),
    (dict(modpo_margin_models=[]), "needs modpo_margin_models"),
    (dict(modpo_margin_models=["/nonexistent/model"]), "does not exist"),
    (dict(precompute_ref=False), "needs precompute_ref: true"),
    (dict(ref_update="sync"), "needs a fixed reference"),
    (dict(pref_loss="sigmoid"), "pref_loss is not modpo"),
])
def test_modpo_config_errors(tmp_path, tiny_model_dir, margin_adapter, extra, message):
    config = modpo_config(tiny_model_dir, tmp_path / "x", [margin_adapter], [1.0, 0.5])
    with pytest.raises(ConfigError, match=message):
        load_config(dict(config, **extra))


def test_modpo_example_runs(tmp_path, tiny_model_dir, margin_adapter, monkeypatch):
    monkeypatch.chdir(ROOT)
    metrics = prefloop.train(str(ROOT / "examples" / "modpo.yaml"), model_name_or_path=str(tiny_model_dir),
                             modpo_margin_models=[str(margin_adapter)], output_dir=str(tmp_path / "ex"), max_steps=2)
    assert metrics["cache/margin_computed"] == 2 and metrics["train_loss"] > 0
    assert "eval_rewards/accuracies" in metrics


def test_a_reward_model_margin_refuses_pairs_whose_answers_carry_more_than_text():
    """A sequence-classification margin model scores answer texts: a pair whose answers carry tool calls
    would be scored without them, so it is refused (before loading the model) with its place and field."""
    from prefloop.data.schema import Message, PreferencePair
    from prefloop.train.modpo import _reward_model_gaps

    call = [{"type": "function", "function": {"name": "w", "arguments": "{}"}}]
    pairs = {"a": PreferencePair([Message("user", "q")], "x", "y", id="a", source="d.jsonl:1"),
             "b": PreferencePair([Message("user", "q")], "", "y", id="b", source="d.jsonl:2",
                                 chosen_fields={"tool_calls": call})}
    cfg = SimpleNamespace(per_device_eval_batch_size=2, reference_cache_dir="unused")
    with pytest.raises(ConfigError, match=r"1 pair\(s\).*d\.jsonl:2: field\(s\) chosen\.tool_calls"):
        _reward_model_gaps("no-such-rm", 2, cfg, {"train": [{"id": "a"}, {"id": "b"}]},
                           {"train": [pairs["a"], pairs["b"]]}, print)
