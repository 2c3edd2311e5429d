"""Each preference loss against values computed by hand from its paper's formula.

The expected values are written with math.log / math.exp from the formula in each docstring,
never by calling another implementation.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from prefloop.errors import ConfigError
from prefloop.train.losses import (
    BCOState,
    KNOWN_LOSSES,
    LossSpec,
    SequenceLogps,
    build_loss_spec,
    preference_loss,
)

BETA = 0.1


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def seq(chosen, rejected, chosen_tokens=(4.0, 5.0), rejected_tokens=(2.0, 8.0)):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return SequenceLogps(t(chosen), t(rejected), t(chosen_tokens), t(rejected_tokens))


# Two pairs. r_c = [1, -1], r_r = [-0.5, 0.5], h = [1.5, -1.5].
POLICY = seq([-10.0, -20.0], [-12.0, -18.0])
REFERENCE = seq([-11.0, -19.0], [-11.5, -18.5])
R_C = [1.0, -1.0]
R_R = [-0.5, 0.5]
H = [1.5, -1.5]
LEN_C = [4.0, 5.0]
LEN_R = [2.0, 8.0]
PI_C = [-10.0, -20.0]
PI_R = [-12.0, -18.0]


def run(names, reference=REFERENCE, policy=POLICY, **kw):
    names = [names] if isinstance(names, str) else names
    spec = LossSpec(names=names, weights=kw.pop("weights", [1.0] * len(names)), beta=kw.pop("beta", BETA), **kw)
    return preference_loss(policy, reference, spec)


def check(names, expected, **kw):
    out = run(names, **kw)
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    return out


# --- at policy == reference (the first step) ---------------------------------------------------------


@pytest.mark.parametrize("name, value", [
    ("sigmoid", math.log(2)),
    ("hinge", 1.0),
    ("ipo", (1 / (2 * BETA)) ** 2),
    ("sigmoid_norm", math.log(2)),
    ("nca_pair", 2 * math.log(2)),
    ("bco_pair", 2 * math.log(2)),
    ("sppo_hard", 2 * (1 / (2 * BETA)) ** 2),
    ("apo_zero", 1.0),
    ("apo_down", 1.0),
    ("kto_pair", 0.5),
    ("discopop", (math.log(2) + 1) / 2),
    ("aot", math.log(2)),
    ("aot_unpaired", math.log(2)),
])
def test_loss_at_policy_equal_reference(name, value):
    out = run(name, policy=REFERENCE)
    assert out.losses.tolist() == pytest.approx([value, value], rel=1e-12)
    assert out.chosen_rewards.tolist() == [0.0, 0.0]


def test_sigmoid_hinge_ipo_differ_at_first_step():
    values = {n: run(n, policy=REFERENCE).losses.mean().item() for n in ("sigmoid", "hinge", "ipo")}
    assert values == pytest.approx({"sigmoid": math.log(2), "hinge": 1.0, "ipo": 25.0})


# --- each loss at h != 0 -------------------------------------------------------------------------


def test_sigmoid():
    check("sigmoid", [-logsig(BETA * h) for h in H])


def test_sigmoid_label_smoothing_cdpo():
    eps = 0.2
    check("sigmoid", [-(1 - eps) * logsig(BETA * h) - eps * logsig(-BETA * h) for h in H], label_smoothing=eps)


def test_hinge():
    check("hinge", [max(0.0, 1 - BETA * h) for h in H])
    check("hinge", [max(0.0, 1 - 2.0 * h) for h in H], beta=2.0)  # second pair saturates at 0


def test_ipo_uses_per_token_log_ratios():
    hn = [R_C[i] / LEN_C[i] - R_R[i] / LEN_R[i] for i in range(2)]
    check("ipo", [(x - 1 / (2 * BETA)) ** 2 for x in hn])


def test_sigmoid_norm():
    hn = [R_C[i] / LEN_C[i] - R_R[i] / LEN_R[i] for i in range(2)]
    check("sigmoid_norm", [-logsig(BETA * x) for x in hn])


def test_robust():
    eps = 0.1
    check("robust", [((1 - eps) * -logsig(BETA * h) - eps * -logsig(-BETA * h)) / (1 - 2 * eps) for h in H],
          label_smoothing=eps)


def test_exo_pair_default_and_explicit_eps():
    def exo(h, eps):
        q = sig(BETA * h)
        return q * (math.log(q) - math.log(1 - eps)) + (1 - q) * (math.log(1 - q) - math.log(eps))
    check("exo_pair", [exo(h, 1e-3) for h in H])
    check("exo_pair", [exo(h, 0.05) for h in H], label_smoothing=0.05)


def test_nca_pair():
    check("nca_pair", [-logsig(BETA * c) - 0.5 * logsig(-BETA * c) - 0.5 * logsig(-BETA * r) for c, r in zip(R_C, R_R)])


def test_bco_pair_running_delta_is_passed_in_and_out():
    rewards = [BETA * x for x in R_C + R_R]  # this batch: mean 0
    prior = BCOState(mean=0.3, count=4)
    delta = (0.3 * 4 + sum(rewards)) / 8
    spec = LossSpec(names=["bco_pair"], weights=[1.0], beta=BETA)
    out = preference_loss(POLICY, REFERENCE, spec, bco_state=prior)
    expected = [-logsig(BETA * c - delta) - logsig(-(BETA * r - delta)) for c, r in zip(R_C, R_R)]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-9)
    assert out.bco_state == BCOState(mean=pytest.approx(delta), count=8)
    assert prior == BCOState(0.3, 4)  # the state passed in is not changed
    # a fresh run starts from delta = mean of this batch
    assert run("bco_pair").bco_state.mean == pytest.approx(sum(rewards) / 4)


def test_sppo_hard():
    check("sppo_hard", [(c - 0.5 / BETA) ** 2 + (r + 0.5 / BETA) ** 2 for c, r in zip(R_C, R_R)])


def test_aot_sorts_margins_over_the_batch():
    # policy margins pi_c - pi_r = [2, -2] -> sorted [-2, 2]; reference [0.5, -0.5] -> [-0.5, 0.5]
    deltas = [-2 - -0.5, 2 - 0.5]
    check("aot", [-logsig(BETA * d) for d in deltas])


def test_aot_unpaired_sorts_log_ratios():
    # r_c sorted [-1, 1], r_r sorted [-0.5, 0.5]
    deltas = [-1 - -0.5, 1 - 0.5]
    eps = 0.1
    check("aot_unpaired", [-(1 - eps) * logsig(BETA * d) - eps * logsig(-BETA * d) for d in deltas],
          label_smoothing=eps)


def test_apo_zero_and_down():
    check("apo_zero", [1 - sig(BETA * c) + sig(BETA * r) for c, r in zip(R_C, R_R)])
    check("apo_down", [sig(BETA * c) + 1 - sig(BETA * (c - r)) for c, r in zip(R_C, R_R)])


def test_discopop():
    tau = 0.05

    def f(h):
        z = BETA * h
        s = sig(z / tau)
        return (1 - s) * -logsig(z) + s * math.exp(-z)
    check("discopop", [f(h) for h in H])


def test_kto_pair_uses_detached_batch_kl_reference_points():
    z_c = max(0.0, sum(R_R) / 2)  # 0
    z_r = max(0.0, sum(R_C) / 2)  # 0
    expected = [0.5 * ((1 - sig(BETA * (c - z_c))) + (1 - sig(BETA * (z_r - r)))) for c, r in zip(R_C, R_R)]
    check("kto_pair", expected)
    # with positive mean log-ratios the reference points are active
    policy = seq([-9.0, -18.0], [-10.0, -17.0])  # r_c = [2, 1], r_r = [1.5, 1.5]
    rc, rr = [2.0, 1.0], [1.5, 1.5]
    zc, zr = 1.5, 1.5
    out = check("kto_pair", [0.5 * ((1 - sig(BETA * (c - zc))) + (1 - sig(BETA * (zr - r)))) for c, r in zip(rc, rr)],
                policy=policy)
    # z is not differentiated: d loss_0 / d pi_r[1] is zero (pi_r[1] enters only through z_r)
    pol = seq([-9.0, -18.0], [-10.0, -17.0])
    pol.rejected.requires_grad_(True)
    pol.chosen.requires_grad_(True)
    preference_loss(pol, REFERENCE, LossSpec(["kto_pair"], [1.0], BETA)).losses[0].backward()
    assert pol.chosen.grad[1].item() == 0.0 and pol.rejected.grad[1].item() == 0.0
    assert out.losses.shape == (2,)


def test_simpo_is_reference_free_and_uses_gamma():
    gamma = 0.8
    lp_c = [PI_C[i] / LEN_C[i] for i in range(2)]
    lp_r = [PI_R[i] / LEN_R[i] for i in range(2)]
    out = check("simpo", [-logsig(2.0 * (c - r) - gamma) for c, r in zip(lp_c, lp_r)],
                reference=None, beta=2.0, simpo_gamma=gamma)
    assert out.chosen_rewards.tolist() == pytest.approx([2.0 * c for c in lp_c])


def test_orpo_is_reference_free_with_its_sft_term():
    lam = 0.25
    lp_c = [PI_C[i] / LEN_C[i] for i in range(2)]
    lp_r = [PI_R[i] / LEN_R[i] for i in range(2)]

    def log_odds(lp):
        return lp - math.log(1 - math.exp(lp))
    check("orpo", [-c + lam * -logsig(log_odds(c) - log_odds(r)) for c, r in zip(lp_c, lp_r)],
          reference=None, beta=lam)


def test_reference_free_losses_need_no_reference():
    assert not LossSpec(["simpo"]).needs_reference
    assert not LossSpec(["orpo", "simpo"], [1.0, 1.0]).needs_reference
    assert LossSpec(["simpo", "sigmoid"], [1.0, 1.0]).needs_reference
    with pytest.raises(ValueError, match="needs reference"):
        run("sigmoid", reference=None)


# --- combinations, SFT term, per-pair weight and margin ------------------------------------------


def test_loss_list_with_weights_and_components():
    sigm = [-logsig(BETA * h) for h in H]
    nca = [-logsig(BETA * c) - 0.5 * logsig(-BETA * c) - 0.5 * logsig(-BETA * r) for c, r in zip(R_C, R_R)]
    out = check(["sigmoid", "nca_pair"], [0.8 * s + 0.2 * n for s, n in zip(sigm, nca)], weights=[0.8, 0.2])
    assert out.components["sigmoid"].tolist() == pytest.approx(sigm)
    assert out.components["nca_pair"].tolist() == pytest.approx(nca)


def test_pref_ftx_adds_mean_nll_of_chosen():
    ftx = 0.5
    check("sigmoid", [-logsig(BETA * h) + ftx * -(PI_C[i] / LEN_C[i]) for i, h in enumerate(H)], ftx=ftx)


def test_per_pair_weight_scales_whole_pair_loss():
    spec = LossSpec(["sigmoid"], [1.0], BETA, ftx=1.0)
    out = preference_loss(POLICY, REFERENCE, spec, weight=torch.tensor([2.0, 0.5], dtype=torch.float64))
    expected = [w * (-logsig(BETA * h) - PI_C[i] / LEN_C[i]) for i, (w, h) in enumerate(zip([2.0, 0.5], H))]
    assert out.losses.tolist() == pytest.approx(expected)


@pytest.mark.parametrize("name, formula", [
    ("sigmoid", lambda h, m: -logsig(BETA * h - m)),
    ("hinge", lambda h, m: max(0.0, 1 - (BETA * h - m))),
    ("robust", lambda h, m: (0.9 * -logsig(BETA * h - m) - 0.1 * -logsig(-(BETA * h - m))) / 0.8),
])
def test_per_pair_margin_shifts_reward_margin(name, formula):
    margin = torch.tensor([0.3, 0.0], dtype=torch.float64)
    kw = {"label_smoothing": 0.1} if name == "robust" else {}
    spec = LossSpec([name], [1.0], BETA, **kw)
    out = preference_loss(POLICY, REFERENCE, spec, margin=margin)
    assert out.losses.tolist() == pytest.approx([formula(h, m) for h, m in zip(H, [0.3, 0.0])])


def test_ipo_margin_moves_the_target():
    hn = [R_C[i] / LEN_C[i] - R_R[i] / LEN_R[i] for i in range(2)]
    out = preference_loss(POLICY, REFERENCE, LossSpec(["ipo"], [1.0], BETA),
                          margin=torch.tensor([0.2, 0.2], dtype=torch.float64))
    assert out.losses.tolist() == pytest.approx([((BETA * x - 0.2) - 0.5) ** 2 / BETA ** 2 for x in hn])


def test_margin_or_weight_that_cannot_apply_is_an_error():
    with pytest.raises(ValueError, match="margins"):
        preference_loss(POLICY, REFERENCE, LossSpec(["nca_pair"], [1.0], BETA), margin=torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="quantiles"):
        preference_loss(POLICY, REFERENCE, LossSpec(["aot"], [1.0], BETA), weight=torch.tensor([2.0, 1.0]))
    # neutral values (what a trainer passes when the data has none) are fine
    preference_loss(POLICY, REFERENCE, LossSpec(["aot"], [1.0], BETA), weight=torch.ones(2, dtype=torch.float64),
                    margin=None)


# --- config -------------------------------------------------------------------------------------------


def cfg(**kw):
    base = {"pref_loss": "sigmoid", "pref_beta": 0.1}
    base.update(kw)
    return SimpleNamespace(**base)


def test_build_spec_defaults_and_lists():
    spec = build_loss_spec(cfg())
    assert spec.names == ["sigmoid"] and spec.weights == [1.0] and spec.needs_reference
    spec = build_loss_spec(cfg(pref_loss=["sigmoid", "bco_pair"], pref_loss_weights=[0.8, 0.2]))
    assert spec.names == ["sigmoid", "bco_pair"] and spec.weights == [0.8, 0.2]
    assert build_loss_spec(cfg(pref_loss="sigmoid, hinge")).names == ["sigmoid", "hinge"]
    spec = build_loss_spec(cfg(pref_loss="simpo", simpo_gamma=1.0, pref_beta=2.0, ld_alpha=0.5))
    assert not spec.needs_reference and spec.simpo_gamma == 1.0 and spec.ld_alpha == 0.5
    assert build_loss_spec(cfg(pref_loss="simpo")).simpo_gamma == 0.5
    assert build_loss_spec(cfg(pref_loss="robust", dpo_label_smoothing=0.1)).label_smoothing == 0.1


@pytest.mark.parametrize("name", KNOWN_LOSSES)
def test_every_known_loss_builds_and_runs(name):
    extra = {"dpo_label_smoothing": 0.1} if name == "robust" else {"modpo_weights": [1.0, 0.5]} if name == "modpo" else {}
    spec = build_loss_spec(cfg(pref_loss=name, **extra))
    margin_rewards = torch.tensor([[0.2], [-0.1]]) if name == "modpo" else None  # one margin model (tests/test_modpo.py)
    out = preference_loss(POLICY, REFERENCE if spec.needs_reference else None, spec, margin_rewards=margin_rewards)
    assert out.losses.shape == (2,) and torch.isfinite(out.losses).all()


@pytest.mark.parametrize("kw, message", [
    ({"pref_loss": "dpo"}, "not a known loss"),
    ({"pref_loss": []}, "empty"),
    ({"pref_loss": ["sigmoid", "sigmoid"]}, "twice"),
    ({"pref_loss": ["sigmoid", "hinge"], "pref_loss_weights": [1.0]}, "one weight per loss"),
    ({"pref_loss_weights": [-1.0]}, ">= 0"),
    ({"pref_beta": 0.0}, "pref_beta"),
    ({"pref_loss": "hinge", "dpo_label_smoothing": 0.1}, "does not apply"),
    ({"pref_loss": "ipo", "dpo_label_smoothing": 0.1}, "does not apply"),
    ({"dpo_label_smoothing": 0.6}, r"\(0, 0.5\)"),
    ({"pref_loss": "robust"}, "needs dpo_label_smoothing"),
    ({"simpo_gamma": 1.0}, "only to pref_loss: simpo"),
    ({"discopop_tau": 0.05}, "only to pref_loss: discopop"),
    ({"pref_loss": "discopop", "discopop_tau": 0.0}, "discopop_tau: 0.0 is not allowed; it must be > 0"),
    ({"pref_ftx": -1.0}, "pref_ftx"),
    ({"ld_alpha": 1.5}, "ld_alpha"),
])
def test_options_that_do_not_apply_are_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        build_loss_spec(cfg(**kw))


def test_config_defaults_leave_loss_options_unset():
    from prefloop.config import Config

    defaults = Config()
    assert defaults.simpo_gamma is None and defaults.discopop_tau is None
    assert build_loss_spec(cfg(simpo_gamma=None)).names == ["sigmoid"]


def test_exo_eps_may_exceed_half():
    assert build_loss_spec(cfg(pref_loss="exo_pair", dpo_label_smoothing=0.7)).label_smoothing == 0.7


@pytest.mark.parametrize("pref_loss, smoothing, allowed", [
    ("exo_pair", 0.7, True),  # EXO's eps: any rate in (0, 1); the config refused >= 0.5 before (item 12)
    ("exo_pair", 0.5, True),
    ("exo_pair", 1.0, False),
    ("sigmoid", 0.49, True),
    ("sigmoid", 0.5, False),  # cDPO: a flip rate of 0.5 makes chosen and rejected the same
    ("robust", 0.6, False),
    ("sigmoid", -0.1, False),
])
def test_label_smoothing_bounds_are_the_same_in_the_config_and_the_loss(tmp_path, pref_loss, smoothing, allowed):
    """Issue 12 item 12: one check, in build_loss_spec, used by config.load_config too."""
    from prefloop.config import load_config

    (tmp_path / "model").mkdir()
    values = {"model_name_or_path": str(tmp_path / "model"), "output_dir": str(tmp_path / "out"),
              "dataset": "x.jsonl", "pref_loss": pref_loss, "dpo_label_smoothing": smoothing}
    if allowed:
        assert load_config(values).dpo_label_smoothing == smoothing
        assert build_loss_spec(cfg(pref_loss=pref_loss, dpo_label_smoothing=smoothing)).label_smoothing == smoothing
    else:
        with pytest.raises(ConfigError) as from_config:
            load_config(values)
        with pytest.raises(ConfigError) as from_loss:
            build_loss_spec(cfg(pref_loss=pref_loss, dpo_label_smoothing=smoothing))
        assert str(from_config.value) == str(from_loss.value)
        assert str(from_loss.value).startswith(f"dpo_label_smoothing: {smoothing} is not allowed")


# --- through the whole training pipeline: config -> data -> LoRA policy/reference -> trainer ------------


@pytest.mark.parametrize("pref_loss, expected", [
    ("sigmoid", math.log(2)),
    ("hinge", 1.0),
    ("ipo", (1 / (2 * BETA)) ** 2),
])
def test_first_training_step_loss_follows_each_formula(tmp_path, tiny_model_dir, pref_loss, expected):
    """At the first step LoRA's policy equals the reference, so the logged loss is the formula's value at
    h = 0: each pref_loss must reach the trainer as itself (not silently as sigmoid)."""
    import json as _json

    from prefloop.train.run import train

    data = tmp_path / "pairs.jsonl"
    rows = [{"conversations": [{"from": "user", "value": f"what is {i} plus {i}?"}],
             "chosen": f"It is {2 * i}.", "rejected": f"Maybe {i + 3}, or something else entirely."} for i in range(4)]
    data.write_text("\n".join(_json.dumps(r) for r in rows) + "\n")
    metrics = train({"model_name_or_path": str(tiny_model_dir), "dataset": str(data), "output_dir": str(tmp_path / "out"),
                     "finetuning_type": "lora", "pref_loss": pref_loss, "pref_beta": BETA, "max_steps": 1,
                     "per_device_train_batch_size": 2, "logging_steps": 1, "report_to": "none",
                     "save_strategy": "no", "sample_prompts": 0, "learning_rate": 1e-4})
    assert metrics["train_loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("precompute_ref", [True, False])
@pytest.mark.parametrize("ld_alpha", [0.0, 0.5, 1.0])
def test_ld_alpha_leaves_the_first_step_at_ln2_with_zero_rewards(tmp_path, tiny_model_dir, ld_alpha, precompute_ref):
    """Issue 12 item 2. Input: ld_alpha 0.5 (and 0, 1), pairs whose chosen is much longer than rejected,
    policy = reference at step 1. Right value: loss ln 2, rewards/chosen = rewards/rejected = 0, accuracy
    0.5 (all ties): LD-DPO weights the reference's log-probs like the policy's, in the step
    (precompute_ref false) and in the cache (true). Before the fix: loss 8.08, rewards/chosen 12.5."""
    import json as _json

    from prefloop.train.run import train

    data = tmp_path / "pairs.jsonl"
    rows = [{"conversations": [{"from": "user", "value": f"what is {i} plus {i}?"}],
             "chosen": f"It is {2 * i}, because adding {i} to {i} gives {2 * i}; here is why, step by step.",
             "rejected": "No."} for i in range(4)]
    data.write_text("\n".join(_json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    metrics = train({"model_name_or_path": str(tiny_model_dir), "dataset": str(data), "output_dir": str(out),
                     "finetuning_type": "lora", "pref_beta": BETA, "ld_alpha": ld_alpha, "max_steps": 1,
                     "precompute_ref": precompute_ref, "per_device_train_batch_size": 4, "logging_steps": 1,
                     "report_to": "none", "save_strategy": "no", "sample_prompts": 0, "learning_rate": 1e-4})
    step1 = next(h for h in _json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h)
    assert metrics["train_loss"] == pytest.approx(math.log(2), rel=1e-5)
    assert step1["rewards/chosen"] == 0.0 and step1["rewards/rejected"] == 0.0
    assert step1["rewards/accuracies"] == 0.5
    if ld_alpha == 1.0:  # unweighted: the long chosen answer really has the lower log-prob
        assert step1["logps/chosen"] < step1["logps/rejected"] - 5


# --- values and gradients of every loss, against the formulas written out here ---------------------------------
#
# Each formula below is the loss's paper formula in plain Python floats (the same ones as in the tests above),
# written as a function of the policy's summed log-probs pi_c, pi_r so its derivative can be taken by central
# differences: autograd through `preference_loss(...).losses.mean()` (what the trainer backpropagates: the mean
# over the batch) must give the loss and d loss / d pi of that formula.

def logsig_stable(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig_stable(x: float) -> float:
    return math.exp(logsig_stable(x))


# A batch of 3 pairs with distinct margins and lengths (aot's sorts are then unambiguous).
G_PI_C = [-10.0, -20.0, -7.0]
G_PI_R = [-12.0, -18.0, -9.5]
G_REF_C = [-11.0, -19.0, -8.2]
G_REF_R = [-11.5, -18.5, -8.8]
G_LEN_C = [4.0, 5.0, 3.0]
G_LEN_R = [2.0, 8.0, 6.0]


def _cdpo(z: float, eps: float) -> float:
    return -(1 - eps) * logsig_stable(z) - eps * logsig_stable(-z)


def formula(name: str, beta: float, eps: float, pc, pr, delta: float = 0.0, z_kto=(0.0, 0.0), tau: float = 0.05):
    """Per-pair loss of `name` by its paper formula (see each loss's docstring). `delta` (bco_pair) and
    `z_kto` (kto_pair's reference points) are taken as given: the implementation does not differentiate them."""
    rc = [p - r for p, r in zip(pc, G_REF_C)]
    rr = [p - r for p, r in zip(pr, G_REF_R)]
    h = [c - r for c, r in zip(rc, rr)]
    hn = [rc[i] / G_LEN_C[i] - rr[i] / G_LEN_R[i] for i in range(len(pc))]
    if name == "sigmoid":
        return [_cdpo(beta * x, eps) for x in h]
    if name == "sigmoid_norm":
        return [_cdpo(beta * x, eps) for x in hn]
    if name == "hinge":
        return [max(0.0, 1 - beta * x) for x in h]
    if name == "ipo":
        return [(x - 1 / (2 * beta)) ** 2 for x in hn]
    if name == "robust":
        return [((1 - eps) * -logsig_stable(beta * x) - eps * -logsig_stable(-beta * x)) / (1 - 2 * eps) for x in h]
    if name == "exo_pair":
        e = eps or 1e-3
        out = []
        for x in h:
            q = sig_stable(beta * x)
            out.append(q * (logsig_stable(beta * x) - math.log(1 - e)) + (1 - q) * (logsig_stable(-beta * x) - math.log(e)))
        return out
    if name == "discopop":
        out = []
        for x in h:
            z = beta * x
            s = sig_stable(z / tau)
            out.append((1 - s) * -logsig_stable(z) + s * math.exp(-z))
        return out
    if name == "nca_pair":
        return [-logsig_stable(beta * c) - 0.5 * logsig_stable(-beta * c) - 0.5 * logsig_stable(-beta * r)
                for c, r in zip(rc, rr)]
    if name == "bco_pair":
        return [-logsig_stable(beta * c - delta) - logsig_stable(-(beta * r - delta)) for c, r in zip(rc, rr)]
    if name == "sppo_hard":
        return [(c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2 for c, r in zip(rc, rr)]
    if name == "apo_zero":
        return [1 - sig_stable(beta * c) + sig_stable(beta * r) for c, r in zip(rc, rr)]
    if name == "apo_down":
        return [sig_stable(beta * c) + 1 - sig_stable(beta * (c - r)) for c, r in zip(rc, rr)]
    if name == "kto_pair":
        zc, zr = z_kto
        return [0.5 * ((1 - sig_stable(beta * (c - zc))) + (1 - sig_stable(beta * (zr - r)))) for c, r in zip(rc, rr)]
    if name == "aot":
        u = sorted(c - r for c, r in zip(pc, pr))
        v = sorted(c - r for c, r in zip(G_REF_C, G_REF_R))
        return [_cdpo(beta * (a - b), eps) for a, b in zip(u, v)]
    if name == "aot_unpaired":
        return [_cdpo(beta * (a - b), eps) for a, b in zip(sorted(rc), sorted(rr))]
    if name == "simpo":
        lc = [p / n for p, n in zip(pc, G_LEN_C)]
        lr = [p / n for p, n in zip(pr, G_LEN_R)]
        return [_cdpo(beta * (c - r) - 0.5, eps) for c, r in zip(lc, lr)]
    if name == "orpo":
        lc = [p / n for p, n in zip(pc, G_LEN_C)]
        lr = [p / n for p, n in zip(pr, G_LEN_R)]
        odds = [(c - math.log(1 - math.exp(c))) - (r - math.log(1 - math.exp(r))) for c, r in zip(lc, lr)]
        return [-c + beta * -logsig_stable(o) for c, o in zip(lc, odds)]
    if name == "sft":  # TRL's: -sum(pc) / sum(|y_c|), the NLL per chosen token of the batch; pair i's share
        return [len(pc) * -p / sum(G_LEN_C) for p in pc]  # B * (-pc_i) / sum(|y_c|) has that mean
    raise AssertionError(name)


GRAD_CASES = [(n, eps) for n in ("sigmoid", "sigmoid_norm", "hinge", "ipo", "nca_pair", "sppo_hard", "apo_zero",
                                 "apo_down", "discopop", "kto_pair", "orpo", "sft") for eps in (0.0,)]
GRAD_CASES += [("sigmoid", 0.2), ("sigmoid_norm", 0.1), ("robust", 0.1), ("robust", 0.4), ("exo_pair", 0.0),
               ("exo_pair", 0.3), ("bco_pair", 0.0), ("aot", 0.0), ("aot", 0.1), ("aot_unpaired", 0.0),
               ("aot_unpaired", 0.2), ("simpo", 0.0), ("simpo", 0.1)]


@pytest.mark.parametrize("beta", [0.05, 0.5, 2.0])
@pytest.mark.parametrize("name, eps", GRAD_CASES)
def test_loss_and_gradient_of_the_batch_mean_follow_the_formula(name, eps, beta):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    pc, pr = t(G_PI_C).requires_grad_(True), t(G_PI_R).requires_grad_(True)
    policy = SequenceLogps(pc, pr, t(G_LEN_C), t(G_LEN_R))
    reference = SequenceLogps(t(G_REF_C), t(G_REF_R), t(G_LEN_C), t(G_LEN_R))
    spec = LossSpec([name], [1.0], beta, label_smoothing=eps)
    out = preference_loss(policy, reference if spec.needs_reference else None, spec)
    out.losses.mean().backward()

    rc = [p - r for p, r in zip(G_PI_C, G_REF_C)]
    rr = [p - r for p, r in zip(G_PI_R, G_REF_R)]
    fixed = {"delta": out.bco_state.mean if name == "bco_pair" else 0.0,
             "z_kto": (max(0.0, sum(rr) / 3), max(0.0, sum(rc) / 3))}
    if name == "bco_pair":  # delta: the mean of this batch's rewards (a fresh state), not differentiated
        assert fixed["delta"] == pytest.approx(beta * sum(rc + rr) / 6, rel=1e-12)

    def mean_loss(pc_, pr_):
        values = formula(name, beta, eps, pc_, pr_, **fixed)
        return sum(values) / len(values)

    assert out.losses.tolist() == pytest.approx(formula(name, beta, eps, G_PI_C, G_PI_R, **fixed), rel=1e-9, abs=1e-12)
    step = 1e-6
    for which, grad in ((0, pc.grad), (1, pr.grad)):
        grad = grad if grad is not None else torch.zeros(3, dtype=torch.float64)
        for i in range(3):
            up = [list(G_PI_C), list(G_PI_R)]
            down = [list(G_PI_C), list(G_PI_R)]
            up[which][i] += step
            down[which][i] -= step
            numeric = (mean_loss(*up) - mean_loss(*down)) / (2 * step)
            assert grad[i].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8), (which, i)


def test_aot_with_batch_size_one_warns(caplog):
    with caplog.at_level("WARNING", logger="prefloop.train.losses"):
        build_loss_spec(cfg(pref_loss="aot", per_device_train_batch_size=4))
    assert "plain DPO" not in caplog.text
    with caplog.at_level("WARNING", logger="prefloop.train.losses"):
        build_loss_spec(cfg(pref_loss="aot", per_device_train_batch_size=1))
    assert "plain DPO" in caplog.text


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_aot_with_one_pair_is_dpo(eps):
    """Batch size 1: the sorted batch is the pair itself, so aot and aot_unpaired are (c)DPO on h."""
    one = seq([-10.0], [-12.0], [4.0], [2.0])
    ref = seq([-11.0], [-11.5], [4.0], [2.0])
    expected = [-(1 - eps) * logsig(BETA * 1.5) - eps * logsig(-BETA * 1.5)]
    for name in ("aot", "aot_unpaired", "sigmoid"):
        out = preference_loss(one, ref, LossSpec([name], [1.0], BETA, label_smoothing=eps))
        assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)


# --- discopop: finite where exp(-z) overflows ------------------------------------------------------------------


@pytest.mark.parametrize("dtype, h", [(torch.float32, -200.0), (torch.float32, -5000.0), (torch.float64, -1000.0),
                                      (torch.float64, -1e5)])
def test_discopop_is_finite_for_a_large_negative_margin(dtype, h):
    """z = beta*h << 0: s = sigmoid(z / tau) underflows to 0 while exp(-z) overflows to inf, and s * exp(-z)
    was 0 * inf = NaN (TRL 1.16 still computes it so). The formula's value there: s * exp(-z) = exp(z/tau - z
    + O(e^(z/tau))) -> 0, so the loss is -log sigmoid(z) = -z + log1p(e^z) and its slope in z is -1."""
    beta = 1.0
    pc = torch.tensor([h], dtype=dtype, requires_grad=True)
    zero = torch.zeros(1, dtype=dtype)
    policy = SequenceLogps(pc, zero.clone(), torch.ones(1, dtype=dtype), torch.ones(1, dtype=dtype))
    reference = SequenceLogps(zero.clone(), zero.clone(), torch.ones(1, dtype=dtype), torch.ones(1, dtype=dtype))
    out = preference_loss(policy, reference, LossSpec(["discopop"], [1.0], beta))
    out.losses.sum().backward()
    assert out.losses.item() == pytest.approx(-h, rel=1e-6)
    assert pc.grad.item() == pytest.approx(-beta, rel=1e-6)


def test_discopop_second_term_where_both_forms_are_finite():
    """At moderate z the stable form equals the paper's s * exp(-z) (here z = -3, tau = 0.5: both terms count)."""
    z, tau = -3.0, 0.5
    s = sig(z / tau)
    expected = (1 - s) * -logsig(z) + s * math.exp(-z)
    out = preference_loss(seq([z], [0.0], [1.0], [1.0]), seq([0.0], [0.0], [1.0], [1.0]),
                          LossSpec(["discopop"], [1.0], 1.0, discopop_tau=tau))
    assert out.losses.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", KNOWN_LOSSES)
@pytest.mark.parametrize("gap", [1e3, -1e3, 1e4, -1e4])
def test_every_loss_and_its_gradient_stay_finite_at_large_log_ratio_gaps(name, gap):
    """float32, |beta * h| up to 5e3 (long answers drift that far): no loss may overflow into inf * 0 = NaN."""
    pc = torch.tensor([-10.0, -3000.0], requires_grad=True)
    pr = torch.tensor([-10.0 - gap, -3000.0 + gap], requires_grad=True)
    tokens = torch.tensor([5.0, 700.0])
    policy = SequenceLogps(pc, pr, tokens, tokens)
    reference = SequenceLogps(torch.tensor([-10.0, -3000.0]), torch.tensor([-10.0, -3000.0]), tokens, tokens)
    spec = LossSpec([name], [1.0], 0.5, label_smoothing=0.1 if name == "robust" else 0.0, modpo_weights=[1.0, 0.5])
    margin_rewards = torch.tensor([[0.2], [0.1]]) if name == "modpo" else None
    out = preference_loss(policy, reference if spec.needs_reference else None, spec, margin_rewards=margin_rewards)
    out.losses.mean().backward()
    assert torch.isfinite(out.losses).all()
    for t in (pc, pr):
        assert t.grad is None or torch.isfinite(t.grad).all()


# --- sft (TRL's loss_type "sft") vs pref_ftx (LLaMA-Factory's) ---------------------------------------------------


def test_sft_is_the_token_mean_nll_of_the_batch_and_pref_ftx_the_mean_of_per_pair_means():
    """POLICY's chosen answers: log-probs -10 over 4 tokens and -20 over 5. TRL's sft: 30 / 9 per token over the
    batch; LLaMA-Factory's pref_ftx: mean(10/4, 20/5) = 3.25."""
    policy = seq([-10.0, -20.0], [-12.0, -18.0])
    policy.chosen.requires_grad_(True)
    out = preference_loss(policy, None, LossSpec(["sft"], [1.0], BETA))
    assert out.losses.mean().item() == pytest.approx(30 / 9, rel=1e-12)
    out.losses.mean().backward()
    assert policy.chosen.grad.tolist() == pytest.approx([-1 / 9, -1 / 9], rel=1e-12)  # every chosen token: -1/9
    assert out.chosen_rewards.tolist() == pytest.approx([BETA * -10 / 4, BETA * -20 / 5])  # reference-free rewards
    ftx = preference_loss(REFERENCE, REFERENCE, LossSpec(["sigmoid"], [1.0], BETA, ftx=1.0)).losses.mean().item()
    assert ftx - math.log(2) == pytest.approx((11 / 4 + 19 / 5) / 2, rel=1e-12)  # REFERENCE: -11 over 4, -19 over 5
    assert not LossSpec(["sft"]).needs_reference and LossSpec(["sigmoid", "sft"], [1.0, 1.0]).needs_reference


def test_mpo_mix_sigmoid_bco_pair_sft_weights_each_term():
    """TRL's documented MPO mix: loss_type [sigmoid, bco_pair, sft], loss_weights [0.8, 0.2, 1.0] (here bco_pair
    keeps the paper's reward shift delta, which TRL 1.16 drops: the same as TRL's mix only at delta = 0)."""
    spec = build_loss_spec(cfg(pref_loss=["sigmoid", "bco_pair", "sft"], pref_loss_weights=[0.8, 0.2, 1.0]))
    out = preference_loss(POLICY, REFERENCE, spec)
    delta = sum(BETA * x for x in R_C + R_R) / 4
    sigm = [-logsig(BETA * h) for h in H]
    bco = [-logsig(BETA * c - delta) - logsig(-(BETA * r - delta)) for c, r in zip(R_C, R_R)]
    sft = 30 / 9
    assert out.losses.mean().item() == pytest.approx(0.8 * sum(sigm) / 2 + 0.2 * sum(bco) / 2 + sft, rel=1e-12)


def test_sft_loss_and_pref_ftx_are_two_components_and_combining_them_warns(caplog):
    """`sft` (a loss) and `pref_ftx` (the SFT term's weight) are two normalisations of the same NLL: each has its own
    component, and asking for both warns that the chosen answers' NLL is trained twice."""
    policy = seq([-10.0, -20.0], [-12.0, -18.0])
    out = preference_loss(policy, None, LossSpec(["simpo", "sft"], [1.0, 1.0], BETA, ftx=0.5))
    assert out.components["sft"].tolist() == pytest.approx([2 * 10 / 9, 2 * 20 / 9])  # B * NLL_i / sum |y_c|
    assert out.components["pref_ftx"].tolist() == pytest.approx([10 / 4, 20 / 5])  # each pair's mean NLL
    with caplog.at_level("WARNING", logger="prefloop.train.losses"):
        build_loss_spec(cfg(pref_loss=["sigmoid", "sft"], pref_loss_weights=[1.0, 1.0], pref_ftx=0.5))
    assert "trained twice" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="prefloop.train.losses"):
        build_loss_spec(cfg(pref_loss=["sigmoid", "sft"], pref_loss_weights=[1.0, 1.0]))
    assert "trained twice" not in caplog.text


# --- LossSpec and config: names and parameter edge cases -----------------------------------------------------------


def test_aot_pair_is_trls_former_name_of_aot_unpaired(caplog):
    """TRL's `aot_pair` was the unpaired AOT (renamed `aot_unpaired`, huggingface/trl PR #5038)."""
    with caplog.at_level("WARNING", logger="prefloop.train.losses"):
        spec = build_loss_spec(cfg(pref_loss="aot_pair"))
    assert spec.names == ["aot_unpaired"]
    assert "aot_pair" in caplog.text and "aot_unpaired" in caplog.text
    assert LossSpec(["aot_pair"]).names == ["aot_unpaired"]
    unpaired = preference_loss(POLICY, REFERENCE, LossSpec(["aot_pair"], [1.0], BETA)).losses
    assert unpaired.tolist() == pytest.approx([-logsig(BETA * d) for d in (-1 - -0.5, 1 - 0.5)])


@pytest.mark.parametrize("kw, message", [
    ({"beta": 0.0}, "beta"),
    ({"beta": -0.1}, "beta"),
    ({"beta": float("nan")}, "beta"),
    ({"beta": float("inf")}, "beta"),
    ({"names": ["dpo"]}, "unknown pref_loss"),
    ({"names": ["sigmoid", "hinge"], "weights": [1.0]}, "weights"),
    ({"label_smoothing": 0.5}, "label_smoothing"),
    ({"label_smoothing": -0.1}, "label_smoothing"),
    ({"names": ["robust"], "label_smoothing": 0.5}, "label_smoothing"),
    ({"names": ["exo_pair"], "label_smoothing": 1.0}, "label_smoothing"),
    ({"names": ["exo_pair", "sigmoid"], "weights": [1.0, 1.0], "label_smoothing": 0.7}, "label_smoothing"),
])
def test_loss_spec_refuses_parameters_no_loss_can_take(kw, message):
    """beta <= 0 would divide by zero (ipo, sppo_hard) or make the loss flat; a flip rate >= 1/2 turns cDPO /
    robust DPO upside down (robust divides by 1 - 2 eps); EXO's eps must be in (0, 1)."""
    with pytest.raises(ValueError, match=message):
        LossSpec(**{"names": ["sigmoid"], "weights": [1.0], **kw})


def test_loss_spec_accepts_the_edges_that_are_allowed():
    assert LossSpec(["exo_pair"], [1.0], label_smoothing=0.7).label_smoothing == 0.7
    assert LossSpec(["hinge"], [1.0], label_smoothing=0.0).beta == 0.1
    assert LossSpec(["robust"], [1.0], label_smoothing=0.49).label_smoothing == 0.49


# --- the reward metrics the trainer logs ---------------------------------------------------------------------------


def test_pair_metrics_values_and_ties_count_half():
    """rewards = beta * summed log-ratio (every reference-based loss, ipo included); accuracy 1 / 0 / 1/2 on a tie
    (TRL: 0 on a tie, README "Training")."""
    from prefloop.train.losses import pair_metrics, reward_accuracy

    out = run("ipo")
    metrics = pair_metrics(out, POLICY)
    assert metrics["rewards/chosen"].tolist() == pytest.approx([BETA * x for x in R_C])
    assert metrics["rewards/rejected"].tolist() == pytest.approx([BETA * x for x in R_R])
    assert metrics["rewards/margins"].tolist() == pytest.approx([BETA * x for x in H])
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.0]
    assert metrics["logps/chosen"].tolist() == PI_C and metrics["logps/rejected"].tolist() == PI_R
    tie = pair_metrics(run("sigmoid", policy=REFERENCE), REFERENCE)
    assert tie["rewards/accuracies"].tolist() == [0.5, 0.5] and tie["rewards/margins"].tolist() == [0.0, 0.0]
    assert reward_accuracy(torch.tensor([0.3, 0.0, -1e-9])).tolist() == [1.0, 0.5, 0.0]
    free = pair_metrics(run("simpo", reference=None, beta=2.0), POLICY)  # reference-free: beta * mean log-prob
    assert free["rewards/chosen"].tolist() == pytest.approx([2.0 * -10 / 4, 2.0 * -20 / 5])
    assert free["rewards/rejected"].tolist() == pytest.approx([2.0 * -12 / 2, 2.0 * -18 / 8])


# --- bco_pair's running mean: across ranks, NaN steps, resume ----------------------------------------------------------


def test_bco_state_sums_over_ranks_and_skips_non_finite_rewards():
    rewards = torch.tensor([0.1, -0.3, 0.5, 0.3])
    # two ranks: this one's [0.1, -0.3, 0.5, 0.3] (sum 0.6), the other's sum 1.4 over 4 rewards
    other = torch.tensor([1.4, 4.0])
    state = BCOState(mean=0.2, count=8).updated(rewards, reduce_sum=lambda stats: stats + other)
    assert state.count == 16
    assert state.mean == pytest.approx((0.2 * 8 + 0.6 + 1.4) / 16, rel=1e-6)
    skipped = BCOState(mean=0.2, count=8).updated(torch.tensor([float("nan"), 0.5, float("inf")]))
    assert skipped == BCOState(mean=pytest.approx((0.2 * 8 + 0.5) / 9), count=9)
    assert BCOState(0.2, 8).updated(torch.tensor([float("nan")])) == BCOState(0.2, 8)
    # through preference_loss: delta from the reduced state
    spec = LossSpec(["bco_pair"], [1.0], BETA)
    out = preference_loss(POLICY, REFERENCE, spec, bco_state=BCOState(), reduce_sum=lambda stats: 2 * stats)
    assert out.bco_state.count == 8 and out.bco_state.mean == pytest.approx(sum(BETA * x for x in R_C + R_R) / 4)


def test_bco_pair_running_mean_survives_a_resume(tmp_path, tiny_model_dir, caplog):
    """The running reward mean is saved with each checkpoint (bco_state.json) and read back on resume: a run
    resumed at step 1 ends with the state of the uninterrupted run (before: the resumed run started over at its
    first batch's mean, count 8 instead of 16)."""
    import json as _json
    import shutil

    from prefloop.train.run import train

    data = tmp_path / "pairs.jsonl"
    rows = [{"conversations": [{"from": "user", "value": f"what is {i} plus {i}?"}],
             "chosen": f"It is {2 * i}.", "rejected": f"Maybe {i + 3}, or something else entirely."} for i in range(8)]
    data.write_text("\n".join(_json.dumps(r) for r in rows) + "\n")
    common = {"model_name_or_path": str(tiny_model_dir), "dataset": str(data), "finetuning_type": "lora",
              "pref_loss": "bco_pair", "pref_beta": BETA, "max_steps": 2, "per_device_train_batch_size": 4,
              "logging_steps": 1, "report_to": "none", "save_strategy": "steps", "save_steps": 1,
              "sample_prompts": 0, "learning_rate": 5e-3}
    full = tmp_path / "full"
    train({**common, "output_dir": str(full)})
    first = _json.loads((full / "checkpoint-1" / "bco_state.json").read_text())
    assert first["count"] == 8  # 4 pairs: 8 rewards
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoint-2")
    train({**common, "output_dir": str(resumed), "resume_from_checkpoint": str(resumed / "checkpoint-1")})
    end_full = _json.loads((full / "checkpoint-2" / "bco_state.json").read_text())
    end_resumed = _json.loads((resumed / "checkpoint-2" / "bco_state.json").read_text())
    assert end_resumed["count"] == end_full["count"] == 16
    assert end_resumed["mean"] == pytest.approx(end_full["mean"], rel=1e-4, abs=1e-7)
    # resume_from_checkpoint: true (the last checkpoint); a checkpoint without the file (an older prefloop) warns
    again = tmp_path / "again"
    shutil.copytree(full, again)
    shutil.rmtree(again / "checkpoint-2")
    (again / "checkpoint-1" / "bco_state.json").unlink()
    with caplog.at_level("WARNING", logger="prefloop.train.trainer"):
        train({**common, "output_dir": str(again), "resume_from_checkpoint": True})
    assert "restarts from this run's first batch" in caplog.text
    assert _json.loads((again / "checkpoint-2" / "bco_state.json").read_text())["count"] == 8
