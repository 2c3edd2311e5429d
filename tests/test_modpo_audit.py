"""MODPO audit against the paper (Zhou et al. 2023, arXiv 2310.03708, eq. 9) and its reference code
(ZHZisZZ/modpo, MODPOTrainer.modpo_loss): the loss and its gradient computed here independently from
log-probs, weights that do not sum to 1, and the margin rewards of a MODPO round whose policy reference
moved (ref_update: previous) -- the margin model's reward r_k does not depend on the policy's reference."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import prefloop
from prefloop.config import load_config, round_configs
from prefloop.models import load_tokenizer
from prefloop.train.losses import SequenceLogps, build_loss_spec, modpo_loss, preference_loss
from prefloop.train.run import load_data
from test_modpo import implicit_gap, margin_adapter  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[1]
HELPFUL = str(ROOT / "examples" / "data" / "rounds" / "helpfulness.jsonl")
SAFETY = str(ROOT / "examples" / "data" / "rounds" / "safety.jsonl")


def by_hand(pi_c, pi_r, ref_c, ref_r, margin_c, margin_r, beta, w):
    """The reference code's formula, written out scalar by scalar: per pair
    chosen = (1/w0) * (beta * (pi_c - ref_c) - sum_k w_k * R_k(chosen)), rejected alike,
    loss = -log sigmoid(chosen - rejected) = log(1 + exp(-(chosen - rejected)))."""
    losses = []
    for i in range(len(pi_c)):
        chosen = (beta * (pi_c[i] - ref_c[i]) - sum(w[k + 1] * margin_c[i][k] for k in range(len(w) - 1))) / w[0]
        rejected = (beta * (pi_r[i] - ref_r[i]) - sum(w[k + 1] * margin_r[i][k] for k in range(len(w) - 1))) / w[0]
        losses.append(math.log1p(math.exp(-(chosen - rejected))))
    return losses


def test_modpo_loss_and_gradient_match_the_reference_formula_computed_by_hand():
    pi_c, pi_r = [-10.0, -8.0, -20.0], [-15.0, -9.0, -18.0]
    ref_c, ref_r = [-12.0, -7.0, -19.0], [-14.0, -10.0, -21.0]
    margin_c, margin_r = [[0.7, -0.1], [0.2, 0.4], [-1.0, 2.0]], [[0.2, 0.1], [1.2, 0.1], [0.5, -1.0]]
    beta, w = 0.1, [0.3, 0.5, 0.2]
    expected = by_hand(pi_c, pi_r, ref_c, ref_r, margin_c, margin_r, beta, w)

    policy_c = torch.tensor(pi_c, dtype=torch.float64, requires_grad=True)
    policy_r = torch.tensor(pi_r, dtype=torch.float64, requires_grad=True)
    n = torch.full((3,), 5.0, dtype=torch.float64)
    policy = SequenceLogps(policy_c, policy_r, n, n)
    reference = SequenceLogps(torch.tensor(ref_c, dtype=torch.float64), torch.tensor(ref_r, dtype=torch.float64), n, n)
    gaps = torch.tensor(margin_c, dtype=torch.float64) - torch.tensor(margin_r, dtype=torch.float64)
    spec = build_loss_spec(SimpleNamespace(pref_loss="modpo", pref_beta=beta, modpo_weights=w))
    out = preference_loss(policy, reference, spec, margin_rewards=gaps)
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-12)

    # d loss_i / d pi_c_i = -(beta / w0) * sigmoid(-z_i), d loss_i / d pi_r_i = +(beta / w0) * sigmoid(-z_i):
    # a larger chosen log-prob lowers the loss, a larger rejected one raises it, scaled by beta / w0.
    out.losses.sum().backward()
    z = [-math.log(math.expm1(loss)) for loss in expected]  # loss = log(1 + e^-z)
    sig = [1 / (1 + math.exp(zi)) for zi in z]
    assert policy_c.grad.tolist() == pytest.approx([-beta / w[0] * s for s in sig], abs=1e-12)
    assert policy_r.grad.tolist() == pytest.approx([beta / w[0] * s for s in sig], abs=1e-12)
    # finite differences on the first pair's chosen log-prob, from the scalar formula alone
    eps = 1e-6
    up = by_hand([pi_c[0] + eps], pi_r[:1], ref_c[:1], ref_r[:1], margin_c[:1], margin_r[:1], beta, w)[0]
    down = by_hand([pi_c[0] - eps], pi_r[:1], ref_c[:1], ref_r[:1], margin_c[:1], margin_r[:1], beta, w)[0]
    assert policy_c.grad[0].item() == pytest.approx((up - down) / (2 * eps), abs=1e-7)


def test_weights_that_do_not_sum_to_one_scale_beta_as_the_paper_normalisation_shows():
    # The paper's weights lie on the simplex (the reference code passes w = (w, 1 - w)). Scaling every
    # weight by c leaves the margin term's w_k / w0 alone but divides beta / w0 by c: [1, 1] is the
    # simplex weight [0.5, 0.5] with pref_beta halved, not the same loss.
    h, gaps = torch.tensor([3.0, -2.0, 0.5]), torch.tensor([[0.4], [-1.0], [2.0]])
    assert torch.allclose(modpo_loss(h, gaps, 0.1, [1.0, 1.0]), modpo_loss(h, gaps, 0.05, [0.5, 0.5]), atol=1e-7)
    assert torch.allclose(modpo_loss(h, gaps, 0.1, [3.0, 1.0]), modpo_loss(h, gaps, 0.025, [0.75, 0.25]), atol=1e-7)
    assert not torch.allclose(modpo_loss(h, gaps, 0.1, [1.0, 1.0]), modpo_loss(h, gaps, 0.1, [0.5, 0.5]))


BASE = dict(stage="dpo", finetuning_type="lora", lora_target="all", lora_rank=4, pref_beta=0.1, cutoff_len=256,
            learning_rate=5e-3, val_size=3, report_to="none", sample_prompts=0, logging_steps=1, save_strategy="no",
            plot_loss=False)


def test_a_modpo_round_keeps_the_margin_reward_of_the_margin_model_when_its_reference_moves(
        tmp_path, tiny_model_dir, margin_adapter):
    """Round 2 with ref_update: previous has round 1's policy as its reference, but the margin model's
    reward stays beta * log(pi_margin / pi_start): the starting model is what the margin adapter was
    trained against. Round 2 starts as a tie with its reference (h = 0), so its first loss is
    mean softplus((1/w0) * w1 * gap) with the gap against the starting model, computed here directly."""
    out = tmp_path / "rounds"
    weights = [0.5, 0.5]
    config = dict(BASE, model_name_or_path=str(tiny_model_dir), output_dir=str(out), pref_loss="modpo",
                  modpo_margin_models=[str(margin_adapter)], modpo_weights=weights, max_steps=1,
                  per_device_train_batch_size=9, ref_update="previous",
                  rounds=[{"name": "one", "dataset": SAFETY}, {"name": "two", "dataset": SAFETY}])
    prefloop.train(config)

    rcfg = round_configs(load_config(config))[1]
    gap = rcfg.pref_beta * implicit_gap(rcfg, tiny_model_dir, margin_adapter)  # against the starting model
    expected = float(torch.nn.functional.softplus(weights[1] * gap / weights[0]).mean())
    history = json.loads((out / "round-2" / "trainer_state.json").read_text())["log_history"]
    first = next(h["loss"] for h in history if "loss" in h)
    assert first == pytest.approx(expected, abs=1e-4)


def test_weights_off_the_simplex_are_trained_as_written_and_said_so():
    from prefloop.train.modpo import weights_note

    assert weights_note([0.5, 0.5], 0.1) is None and weights_note([0.2, 0.3, 0.5], 0.1) is None
    note = weights_note([1.0, 1.0], 0.1)
    assert "sum to 2, not 1" in note and "modpo_weights [0.5, 0.5] with pref_beta 0.05" in note
    assert "beta / w0 = 0.1" in note


@pytest.mark.parametrize("weights, index", [([float("inf"), 1.0], 0), ([0.5, float("inf")], 1)])
def test_an_infinite_weight_is_a_config_error_before_training(tmp_path, tiny_model_dir, margin_adapter, weights, index):
    # w0 = inf: z = 0 for every pair, a constant loss log 2 without gradient (nothing would train, silently);
    # w1 = inf: an infinite or NaN loss.
    from prefloop.errors import ConfigError

    config = dict(BASE, model_name_or_path=str(tiny_model_dir), dataset=SAFETY, output_dir=str(tmp_path / "x"),
                  pref_loss="modpo", modpo_margin_models=[str(margin_adapter)], modpo_weights=weights, max_steps=1)
    with pytest.raises(ConfigError, match=rf"modpo_weights .*: weight {index} \(inf\) is not a finite number"):
        prefloop.train(config)
    assert not (tmp_path / "x" / "trainer_state.json").exists()


def test_a_margin_model_runs_in_the_precision_of_the_reference_it_is_compared_with(tmp_path, tiny_model_dir):
    """pure_bf16: the reference's log-probs come from bf16 weights, so the margin model's must too. With the
    starting model itself as the margin model every gap is exactly 0 and the first loss is log 2 (h = 0);
    a margin model left in fp32 gave gaps of rounding noise (the first loss was 0.69321, not 0.69315)."""
    out = tmp_path / "bf16"
    prefloop.train(dict(BASE, model_name_or_path=str(tiny_model_dir), dataset=SAFETY, output_dir=str(out),
                        pref_loss="modpo", modpo_margin_models=[str(tiny_model_dir)], modpo_weights=[0.5, 0.5],
                        max_steps=1, per_device_train_batch_size=9, pure_bf16=True, bf16=True))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    first = next(h["loss"] for h in history if "loss" in h)
    assert first == pytest.approx(math.log(2), abs=2e-6)


def same_ids(tmp_path, source: str) -> Path:
    """`source` with every pair's id the same ("dup"): ids come from the data and need not be unique (two
    files numbering their rows alike, a copied id)."""
    rows = [json.loads(line) for line in Path(source).read_text().splitlines() if line.strip()]
    path = tmp_path / "same_ids.jsonl"
    path.write_text("".join(json.dumps(dict(row, id="dup")) + "\n" for row in rows))
    return path


def test_reward_model_margins_are_each_pairs_own_when_ids_repeat(tmp_path, tiny_model_dir):
    """The reward-model margin of a pair is scored on that pair's texts; with repeated ids every pair got the
    texts of the last pair with that id."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from prefloop.judge.reward import RewardModel

    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)
    torch.manual_seed(3)
    rm_dir = tmp_path / "rm"
    AutoModelForSequenceClassification.from_config(config).save_pretrained(rm_dir)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(rm_dir)
    dataset = same_ids(tmp_path, SAFETY)
    cfg_dict = dict(BASE, model_name_or_path=str(tiny_model_dir), dataset=str(dataset), output_dir=str(tmp_path / "o"),
                    pref_loss="modpo", modpo_margin_models=[str(rm_dir)], modpo_weights=[0.5, 0.5], max_steps=1,
                    per_device_train_batch_size=9)
    prefloop.train(cfg_dict)
    from prefloop.data.loader import load_pairs, split_validation

    cfg = load_config(cfg_dict)
    pairs = split_validation(load_pairs(str(dataset)).pairs, 3, cfg.seed)[0]
    rm = RewardModel(str(rm_dir))
    gap = (torch.tensor(rm.score([(p.prompt_messages(), p.chosen) for p in pairs]))
           - torch.tensor(rm.score([(p.prompt_messages(), p.rejected) for p in pairs])))
    expected = float(torch.nn.functional.softplus(gap).mean())  # h = 0, z = -(w1/w0) gap
    history = json.loads((tmp_path / "o" / "trainer_state.json").read_text())["log_history"]
    assert next(h["loss"] for h in history if "loss" in h) == pytest.approx(expected, abs=1e-4)


def test_per_dimension_agreement_is_each_pairs_own_when_ids_repeat(tmp_path, tiny_model_dir):
    from prefloop.data.dimensions import agreement, dimension_names
    from prefloop.data.loader import load_pairs

    dataset = same_ids(tmp_path, str(ROOT / "examples" / "data" / "multiobjective.jsonl"))
    cfg = load_config(dict(BASE, model_name_or_path=str(tiny_model_dir), dataset=str(dataset), val_size=0,
                           output_dir=str(tmp_path / "o")))
    data = load_data(cfg, load_tokenizer(str(tiny_model_dir)), lambda *a, **k: None)
    pairs = load_pairs(str(dataset)).pairs
    names = dimension_names(pairs)
    assert len(data.train) == len(pairs)  # nothing dropped: features in the pairs' order
    expected = [agreement(p, names) for p in pairs]
    assert len({tuple(e) for e in expected}) > 1  # the pairs differ, so a mix-up shows
    assert [f["dimension_agree"] for f in data.train] == expected


def test_an_implicit_margin_reward_uses_the_beta_its_model_was_trained_with(tmp_path, tiny_model_dir, capsys):
    """A DPO model trained with beta_k has the implicit reward r_k = beta_k * log(pi_k / ref) (Zhou et al. 2023,
    sec. 4; Rafailov et al. 2023). A margin adapter trained by prefloop with pref_beta 0.5 enters a MODPO
    run with pref_beta 0.1 at its own beta 0.5 (read from its prefloop_config.yaml), not the run's."""
    margin = tmp_path / "helpful-beta-0.5"
    prefloop.train(dict(BASE, model_name_or_path=str(tiny_model_dir), dataset=HELPFUL, output_dir=str(margin),
                        max_steps=3, per_device_train_batch_size=4, pref_beta=0.5))
    out = tmp_path / "modpo"
    config = dict(BASE, model_name_or_path=str(tiny_model_dir), dataset=SAFETY, output_dir=str(out), pref_loss="modpo",
                  modpo_margin_models=[str(margin)], modpo_weights=[0.5, 0.5], max_steps=1, per_device_train_batch_size=9)
    capsys.readouterr()
    prefloop.train(config)
    assert "beta 0.5 (its own pref_beta" in capsys.readouterr().out
    gap = 0.5 * implicit_gap(load_config(config), tiny_model_dir, margin)
    expected = float(torch.nn.functional.softplus(gap).mean())  # h = 0: z = -(w1/w0) gap, w1/w0 = 1
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert next(h["loss"] for h in history if "loss" in h) == pytest.approx(expected, abs=1e-4)
