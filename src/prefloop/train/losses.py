"""Preference losses: pure functions of per-sequence log-probabilities.

No model, no tokenizer, no hidden state. Each loss takes log-probs (or log-ratios) of the chosen
and rejected responses and returns a per-pair loss of shape [B]. `preference_loss` combines the
configured losses with their weights, adds the SFT term, applies per-pair weights/margins, and
computes the implicit rewards that the trainer logs (`rewards/chosen` = beta * (pi_c - ref_c), ...).

Notation used in the docstrings (every tensor is [B], one value per pair, float32):
    pi_c, pi_r     policy log-prob of the chosen / rejected response (summed over its tokens)
    ref_c, ref_r   the same under the reference model
    r_c, r_r       log-ratios: r_c = pi_c - ref_c, r_r = pi_r - ref_r
    h              r_c - r_r (the DPO "logits")
    |y_c|, |y_r|   number of response tokens
    m              per-pair target reward margin from the data (0 when absent)
    eps            `dpo_label_smoothing`
The only state any loss needs, bco_pair's running reward mean, is passed in and returned
(`BCOState`); the trainer owns it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class SequenceLogps:
    """Per-sequence log-probs of a batch of pairs, as `train/logps.py` returns them.

    `chosen`/`rejected`: sum of token log-probs over the response, [B].
    `chosen_tokens`/`rejected_tokens`: number of response tokens, [B] (float).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_tokens.clamp(min=1)

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass
class LossSpec:
    """Which losses to use and their hyperparameters (built from the training config).

    `label_smoothing` is cDPO's eps for the losses in SMOOTHING_LOSSES, the label-flip rate for
    `robust`, and EXO's eps for `exo_pair`. `ld_alpha` (LD-DPO) is applied by `logps.py` when it sums
    token log-probs; it is carried here so one object describes the objective.
    """

    names: list[str] = field(default_factory=lambda: ["sigmoid"])
    weights: list[float] = field(default_factory=lambda: [1.0])
    beta: float = 0.1
    label_smoothing: float = 0.0
    ftx: float = 0.0
    simpo_gamma: float = 0.5  # SIMPO_GAMMA_DEFAULT
    discopop_tau: float = 0.05
    ld_alpha: float | None = None
    modpo_weights: list[float] | None = None  # [w0, w1, ..., wK] (pref_loss: modpo)

    def __post_init__(self):
        """The checks every use of the losses relies on, also for a spec built in code (the config's
        wording of the same checks is `build_loss_spec`'s): known names (TRL's former `aot_pair` is
        `aot_unpaired`), one weight per loss, beta > 0 (every loss divides by it or is flat at 0), and
        a label-smoothing rate its losses can take."""
        self.names = [canonical_loss_name(n) for n in self.names]
        unknown = [n for n in self.names if n not in KNOWN_LOSSES]
        if unknown:
            raise ValueError(f"unknown pref_loss {unknown[0]!r}; known: {', '.join(KNOWN_LOSSES)}")
        if len(self.weights) != len(self.names):
            raise ValueError(f"{len(self.weights)} loss weights for {len(self.names)} losses {self.names}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        eps = self.label_smoothing
        upper = 1.0 if all(n == "exo_pair" for n in self.names if n in SMOOTHING_LOSSES) else 0.5
        if not 0 <= eps < upper:
            raise ValueError(f"label_smoothing must be in [0, {upper}) for {self.names}, got {eps}")

    @property
    def needs_reference(self) -> bool:
        """False when every loss is reference-free: the trainer then loads and caches no reference."""
        return any(name not in REFERENCE_FREE for name in self.names)

    @property
    def uses_margin(self) -> bool:
        """True when at least one configured loss can use per-pair margins from the data."""
        return any(name in MARGIN_LOSSES for name in self.names)

    @property
    def uses_pair_weight(self) -> bool:
        """False when a loss sorts the batch (aot): its rows are quantiles, not pairs."""
        return not any(name in SORTED_LOSSES for name in self.names)


@dataclass
class BCOState:
    """bco_pair's reward shift delta: the mean of every implicit reward seen in training so far.

    Immutable: `updated` returns a new state. The trainer keeps the state across training steps
    (and in its checkpoints, `bco_state.json`, read back on resume); evaluation passes the training
    state in and discards what comes back. Under data parallelism the trainer passes `reduce_sum`, so
    the mean is over every rank's rewards and all ranks use the same delta.
    """

    mean: float = 0.0
    count: int = 0

    def updated(self, rewards: torch.Tensor, reduce_sum=None) -> "BCOState":
        """The state after `rewards` ([N], this batch's implicit rewards). `reduce_sum`: under data
        parallelism, a function that sums a tensor over all ranks (the trainer passes the accelerator's),
        so every rank adds the rewards of the whole global batch and all ranks keep the same delta.
        Non-finite rewards (a NaN step, which the health monitor skips) are left out: one would make
        delta, and so every later loss, NaN for the rest of the run."""
        rewards = rewards.detach().flatten()
        if rewards.dtype not in (torch.float32, torch.float64):
            rewards = rewards.float()
        finite = torch.isfinite(rewards)
        stats = torch.stack([torch.where(finite, rewards, 0).sum(), finite.sum().to(rewards.dtype)])
        if reduce_sum is not None:
            stats = reduce_sum(stats)
        batch_sum, n = (float(v) for v in stats.tolist())
        if n == 0:
            return self
        total = self.count + int(round(n))
        mean = self.mean + (batch_sum / n - self.mean) * n / total
        return BCOState(mean, total)


@dataclass
class LossOutput:
    losses: torch.Tensor  # [B] per-pair loss, weighted and with the SFT term
    chosen_rewards: torch.Tensor  # [B], detached
    rejected_rewards: torch.Tensor  # [B], detached
    components: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B] detached, unweighted
    bco_state: BCOState | None = None  # the new state when bco_pair ran, else the state passed in


# --------------------------------------------------------------------------------------------
# Losses on the pair log-ratio difference h (reference-based)
# --------------------------------------------------------------------------------------------


def sigmoid_loss(logits: torch.Tensor, beta: float, label_smoothing: float = 0.0, margin=0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7) with cDPO smoothing.

    z = beta * h - m
    loss = -(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)            [B]
    `logits` is h; eps is the label-smoothing rate (Mitchell 2023, "A note on DPO with noisy
    preferences", conservative DPO). At h = 0 (policy == reference), m = 0 the loss is ln 2.
    Deliberate difference: TRL 1.16's `sigmoid` (and `sigmoid_norm`) ignores `label_smoothing` (it
    reads it only for robust, exo_pair and aot); earlier TRL releases applied cDPO here, and so does
    LLaMA-Factory's `dpo_label_smoothing`, whose meaning this config keeps. With eps = 0 they agree.
    """
    z = beta * logits - margin
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def sigmoid_norm_loss(logits_per_token: torch.Tensor, beta: float, label_smoothing: float = 0.0,
                      margin=0.0) -> torch.Tensor:
    """Length-normalised DPO (SimPO, Meng et al. 2024, App. "DPO w/ LN"; Tülu 3, Lambert et al. 2024, sec. 4.3).

    h_norm = r_c / |y_c| - r_r / |y_r|
    loss = sigmoid_loss(h_norm) = -log sigmoid(beta * h_norm - m)  (cDPO smoothing as in sigmoid)   [B]
    """
    return sigmoid_loss(logits_per_token, beta, label_smoothing, margin)


def hinge_loss(logits: torch.Tensor, beta: float, margin=0.0) -> torch.Tensor:
    """SLiC hinge (Zhao et al. 2023, "SLiC-HF", eq. 1 with delta = 1/beta, scaled by beta).

    loss = max(0, 1 - (beta * h - m))                                     [B]
    At h = 0, m = 0 the loss is 1.
    """
    return torch.relu(1 - (beta * logits - margin))


def ipo_loss(logits_per_token: torch.Tensor, beta: float, margin=0.0) -> torch.Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17; beta is the paper's tau).

    loss = (h_norm - (1 + 2m) / (2 * beta))^2, with h_norm = r_c/|y_c| - r_r/|y_r|      [B]
    Length-averaged log-ratios as the paper's authors use them (confirmed in TRL's notes). A margin
    m in reward units moves the target from 1/(2 beta) to 1/(2 beta) + m/beta, i.e. the loss is
    ((beta h_norm - m) - 1/2)^2 / beta^2. At h = 0, m = 0 the loss is (1 / (2 beta))^2.
    """
    return (logits_per_token - (0.5 + margin) / beta) ** 2


def robust_loss(logits: torch.Tensor, beta: float, label_smoothing: float, margin=0.0) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"): unbiased under label flips.

    z = beta * h - m; eps = probability that a label is flipped, 0 <= eps < 1/2
    loss = [(1 - eps) * (-log sigmoid(z)) - eps * (-log sigmoid(-z))] / (1 - 2 eps)      [B]
    """
    z = beta * logits - margin
    return (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)


def exo_pair_loss(logits: torch.Tensor, beta: float, label_smoothing: float = 1e-3, margin=0.0) -> torch.Tensor:
    """EXO, pairwise (Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model
    Alignment", eq. 16, K = 2): reverse KL from the policy's preference to the smoothed label.

    z = beta * h - m;  q = sigmoid(z) (policy's probability that chosen wins); label p = (1 - eps, eps)
    loss = KL(q || p) = q (log q - log(1 - eps)) + (1 - q) (log(1 - q) - log eps)        [B]
    eps must be in (0, 1); the paper uses 1e-3, the default when `dpo_label_smoothing` is unset
    (TRL 1.16 refuses label_smoothing = 0 for exo_pair instead; for any eps > 0 the two agree).
    """
    z = beta * logits - margin
    q = torch.sigmoid(z)
    return q * (F.logsigmoid(z) - math.log1p(-label_smoothing)) + (1 - q) * (F.logsigmoid(-z) - math.log(label_smoothing))


def discopop_loss(logits: torch.Tensor, beta: float, tau: float = 0.05, margin=0.0) -> torch.Tensor:
    """DiscoPOP / log-ratio modulated loss (Lu et al. 2024, "Discovering Preference Optimization
    Algorithms with and for Large Language Models", eq. 5).

    z = beta * h - m;  s = sigmoid(z / tau)
    loss = (1 - s) * (-log sigmoid(z)) + s * exp(-z)                      [B]
    tau = 0.05 in the paper. At h = 0: (ln 2 + 1) / 2.
    The second term is computed as exp(log s - z), so a large negative z (|beta h| > ~88 in float32,
    ~709 in float64) gives its finite limit instead of 0 * inf = NaN; TRL 1.16 computes
    s * exp(-z) and returns NaN there (loss and gradient). Elsewhere the two agree.
    """
    z = beta * logits - margin
    s = torch.sigmoid(z / tau)
    # s * exp(-z) as exp(log s - z): for z << 0, exp(-z) overflows to inf while s underflows to 0, and
    # the product 0 * inf is NaN (in the loss and its gradient); log s - z = z/tau - z -> -inf instead.
    return (1 - s) * -F.logsigmoid(z) + torch.exp(F.logsigmoid(z / tau) - z)


def modpo_loss(logits: torch.Tensor, margin_reward_diffs: torch.Tensor, beta: float,
               weights: list[float]) -> torch.Tensor:
    """MODPO (Zhou et al. 2023, "Beyond One-Preference-Fits-All Alignment: Multi-Objective Direct
    Preference Optimization", arXiv 2310.03708, eq. 9 / Algorithm 1).

    z = (1 / w0) * (beta * h - sum_k w_k * (r_k(x, y_c) - r_k(x, y_r)))
    loss = -log sigmoid(z)                                                [B]
    `logits` is h = r_c - r_r, [B]; `margin_reward_diffs` is [B, K], column k the frozen margin
    reward model k's score gap r_k(x, y_c) - r_k(x, y_r) (its implicit reward beta * log(pi_k / ref),
    or a reward model's score); `weights` = [w0, w1, ..., wK]: w0 weighs the objective this data
    labels, w_k the other objectives. With w_k = 0 for k >= 1 and w0 = 1 this is DPO (sigmoid_loss).
    """
    w0, rest = float(weights[0]), torch.tensor(weights[1:], dtype=logits.dtype, device=logits.device)
    if margin_reward_diffs.shape[-1] != rest.numel():
        raise ValueError(f"modpo: {margin_reward_diffs.shape[-1]} margin rewards per pair but {rest.numel()} "
                         f"margin weights")
    z = (beta * logits - (margin_reward_diffs.to(logits.dtype) * rest).sum(dim=-1)) / w0
    return -F.logsigmoid(z)


# --------------------------------------------------------------------------------------------
# Losses on the individual log-ratios r_c, r_r (reference-based)
# --------------------------------------------------------------------------------------------


def nca_pair_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """NCA, pairwise (Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit
    Rewards", preference case K = 2): optimises absolute likelihoods, so chosen cannot fall freely.

    loss = -log sigmoid(beta r_c) - 1/2 log sigmoid(-beta r_c) - 1/2 log sigmoid(-beta r_r)   [B]
    At r = 0: 2 ln 2.
    """
    zc, zr = beta * chosen_ratio, beta * rejected_ratio
    return -F.logsigmoid(zc) - 0.5 * F.logsigmoid(-zc) - 0.5 * F.logsigmoid(-zr)


def bco_pair_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float, delta) -> torch.Tensor:
    """BCO, pairwise (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model
    Alignment"): a binary classifier with the implicit reward as logit, shifted by delta.

    loss = -log sigmoid(beta r_c - delta) - log sigmoid(-(beta r_r - delta))            [B]
    delta is the running mean of all implicit rewards beta*r seen so far, this batch included
    (`BCOState`, kept by the trainer; under data parallelism over every rank's rewards). Deliberate
    difference: TRL 1.16's `bco_pair` drops delta (-log sigmoid(beta r_c) - log sigmoid(-beta r_r));
    the paper's reward shift delta, which TRL's own bco_pair had when it was
    added (huggingface/trl PR #1524, a RunningMoments mean) and LLaMA-Factory's `pref_bco_weight`
    still has, is kept here. With delta = 0 the two agree.
    """
    return -F.logsigmoid(beta * chosen_ratio - delta) - F.logsigmoid(-(beta * rejected_ratio - delta))


def sppo_hard_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """SPPO with hard labels (Wu et al. 2024, "Self-Play Preference Optimization for Language Model
    Alignment", eq. 4.7 / Alg. 1 with P(chosen wins) = 1, P(rejected wins) = 0, eta = 1/beta).

    loss = (r_c - 1/(2 beta))^2 + (r_r + 1/(2 beta))^2                   [B]
    At r = 0: 2 (1/(2 beta))^2.
    """
    return (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2


def apo_zero_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    Revisions", eq. 7): raise chosen, lower rejected, each anchored at the reference.

    loss = 1 - sigmoid(beta r_c) + sigmoid(beta r_r)                     [B]
    The paper writes -sigmoid(beta r_c) + sigmoid(beta r_r); the constant 1 (as TRL logs it) keeps
    the loss non-negative and changes no gradient. At r = 0: 1.
    """
    return 1 - torch.sigmoid(beta * chosen_ratio) + torch.sigmoid(beta * rejected_ratio)


def apo_down_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """APO-down (D'Oosterlinck et al. 2024, eq. 8): lower both, rejected more (when the model is
    already better than the chosen answers).

    loss = sigmoid(beta r_c) + 1 - sigmoid(beta (r_c - r_r))             [B]
    The paper has no constant 1 (see `apo_zero_loss`). At r = 0: 1.
    """
    return torch.sigmoid(beta * chosen_ratio) + 1 - torch.sigmoid(beta * (chosen_ratio - rejected_ratio))


def kto_pair_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """KTO on paired data (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
    Optimization", with lambda_D = lambda_U = 1).

    z_c = max(0, mean_batch(r_r)), z_r = max(0, mean_batch(r_c))   (KL reference points, detached)
    loss = 1/2 [(1 - sigmoid(beta (r_c - z_c))) + (1 - sigmoid(beta (z_r - r_r)))]      [B]
    Chosen and rejected are separate examples of the paper's expectation, hence the mean of the two.
    The paper estimates the reference point z from mismatched outputs; with paired data and no extra
    forward pass, the other half of the batch stands in (as TRL's former kto_pair did). The paper
    does not backpropagate through z, so it is detached here (TRL's was not). At r = 0: 1/2.
    """
    z_chosen = rejected_ratio.detach().mean().clamp(min=0)
    z_rejected = chosen_ratio.detach().mean().clamp(min=0)
    desirable = 1 - torch.sigmoid(beta * (chosen_ratio - z_chosen))
    undesirable = 1 - torch.sigmoid(beta * (z_rejected - rejected_ratio))
    return 0.5 * (desirable + undesirable)


def aot_loss(policy_margin: torch.Tensor, reference_margin: torch.Tensor, beta: float,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """AOT, paired (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal
    Transport"): first-order stochastic dominance of the policy's margins over the reference's.

    u = sort(pi_c - pi_r), v = sort(ref_c - ref_r)   (ascending over the batch: quantiles)
    loss_i = -(1 - eps) log sigmoid(beta (u_i - v_i)) - eps log sigmoid(-beta (u_i - v_i))   [B]
    Row i is the i-th quantile, not pair i, so per-pair weights do not apply. Larger batches
    estimate the quantiles better.
    """
    delta = torch.sort(policy_margin, dim=0).values - torch.sort(reference_margin, dim=0).values
    return sigmoid_loss(delta, beta, label_smoothing)


def aot_unpaired_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """AOT, unpaired (Melnyk et al. 2024): the chosen log-ratios' distribution should dominate the
    rejected log-ratios' distribution.

    loss_i = sigmoid_loss(sort(r_c)_i - sort(r_r)_i)   (cDPO smoothing as in sigmoid)   [B]
    """
    delta = torch.sort(chosen_ratio, dim=0).values - torch.sort(rejected_ratio, dim=0).values
    return sigmoid_loss(delta, beta, label_smoothing)


# --------------------------------------------------------------------------------------------
# Reference-free losses (length-averaged policy log-probs lp_c = pi_c/|y_c|, lp_r = pi_r/|y_r|)
# --------------------------------------------------------------------------------------------


def simpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float, gamma: float,
               label_smoothing: float = 0.0, margin=0.0) -> torch.Tensor:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward").

    z = beta * (lp_c - lp_r) - gamma - m
    loss = -(1 - eps) log sigmoid(z) - eps log sigmoid(-z)               [B]
    gamma is the target reward margin (`simpo_gamma`); the paper uses beta of 2-10.
    """
    return sigmoid_loss(chosen_mean - rejected_mean, beta, label_smoothing, gamma + margin)


def orpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float) -> torch.Tensor:
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model").

    odds(y) = P / (1 - P), P = exp(lp)    log odds(y) = lp - log(1 - exp(lp))
    loss = -lp_c + beta * (-log sigmoid(log odds(y_c) - log odds(y_r)))    [B]
    The SFT term -lp_c is part of ORPO; beta is the paper's lambda. lp is clamped to <= -1e-6 so
    log(1 - exp(lp)) stays finite when a response has probability 1 in floating point.
    The SFT term is each pair's mean token NLL, as LLaMA-Factory's `pref_loss: orpo` (whose config this
    follows); TRL's ORPOTrainer averages the NLL over all chosen tokens of the batch instead (the two
    agree when the chosen answers are equally long). The odds-ratio term is the same in both.
    """
    lp_c, lp_r = chosen_mean.clamp(max=-1e-6), rejected_mean.clamp(max=-1e-6)
    log_odds = (lp_c - _log1mexp(lp_c)) - (lp_r - _log1mexp(lp_r))
    return -chosen_mean + beta * -F.logsigmoid(log_odds)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -ln 2 (Maechler 2012, "Accurately
    computing log(1 - exp(-|a|))"): log(-expm1(x)) near 0, log1p(-exp(x)) below -ln 2. Both branches
    are finite (and so is the gradient torch.where passes through) for x <= -1e-6."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def sft_loss(chosen: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """SFT term as TRL 1.16's `loss_type="sft"` (the NLL part of MPO, "sigmoid,bco_pair,sft"; RPO
    with a weight): the negative log-likelihood of the chosen answers, averaged over all their tokens
    in the batch.

    loss = -(sum_i pi_c_i) / (sum_i |y_c_i|)            (one value for the batch)
    returned per pair as B * (-pi_c_i) / sum_j |y_c_j|, whose mean over the B pairs is that value
    (and whose gradient is TRL's: -1 / sum_j |y_c_j| for every chosen token).     [B]
    A long answer weighs more than a short one. `pref_ftx` is the other convention, LLaMA-Factory's:
    each pair's own mean, -pi_c_i / |y_c_i|, averaged over pairs (see `preference_loss`). Reference-free.
    """
    return -chosen * (chosen.shape[0] / chosen_tokens.sum().clamp(min=1))


# --------------------------------------------------------------------------------------------
# Registry and combination
# --------------------------------------------------------------------------------------------

KNOWN_LOSSES = (
    "sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "orpo", "simpo", "kto_pair", "modpo",
    "sft",
)
# Former names -> the name used here. TRL called the unpaired AOT "aot_pair" until it renamed it
# "aot_unpaired" (huggingface/trl PR #5038; TRL 1.16 no longer accepts the old name).
LOSS_ALIASES = {"aot_pair": "aot_unpaired"}
REFERENCE_FREE: set[str] = {"orpo", "simpo", "sft"}
# Losses that accept dpo_label_smoothing (cDPO eps, robust's flip rate, EXO's eps).
SMOOTHING_LOSSES = {"sigmoid", "sigmoid_norm", "robust", "exo_pair", "aot", "aot_unpaired", "simpo"}
# Losses built on a reward margin z = beta*h where a per-pair target margin m has a meaning (z - m).
MARGIN_LOSSES = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "robust", "exo_pair", "discopop", "simpo"}
SORTED_LOSSES = {"aot", "aot_unpaired"}
EXO_DEFAULT_EPS = 1e-3
SIMPO_GAMMA_DEFAULT = 0.5  # LLaMA-Factory's default


def canonical_loss_name(name: str) -> str:
    """The loss's name as `KNOWN_LOSSES` spells it (`aot_pair` -> `aot_unpaired`, see LOSS_ALIASES)."""
    return LOSS_ALIASES.get(name, name)


def _per_token(ratio: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return ratio / tokens.clamp(min=1)


def single_loss(name: str, policy: SequenceLogps, reference: SequenceLogps | None, spec: LossSpec,
                margin=0.0, bco_delta: float = 0.0, margin_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """The per-pair loss [B] of one named loss; `margin` ([B] or 0) in reward units;
    `margin_rewards` ([B, K], modpo only) the margin reward models' score gaps."""
    beta, eps = spec.beta, spec.label_smoothing
    if name == "simpo":
        return simpo_loss(policy.chosen_mean, policy.rejected_mean, beta, spec.simpo_gamma, eps, margin)
    if name == "orpo":
        return orpo_loss(policy.chosen_mean, policy.rejected_mean, beta)
    if name == "sft":
        return sft_loss(policy.chosen, policy.chosen_tokens)
    name = canonical_loss_name(name)
    if name not in KNOWN_LOSSES:
        raise ValueError(f"unknown pref_loss {name!r}; known: {', '.join(KNOWN_LOSSES)}")
    if reference is None:
        raise ValueError(f"pref_loss {name!r} needs reference log-probs; none were given")
    r_c, r_r = policy.chosen - reference.chosen, policy.rejected - reference.rejected
    h = r_c - r_r
    if name == "sigmoid":
        return sigmoid_loss(h, beta, eps, margin)
    if name == "hinge":
        return hinge_loss(h, beta, margin)
    if name == "modpo":
        if margin_rewards is None or spec.modpo_weights is None:
            raise ValueError("pref_loss 'modpo' needs the margin reward models' rewards in the batch "
                             "(margin_rewards) and modpo_weights")
        return modpo_loss(h, margin_rewards, beta, spec.modpo_weights)
    if name in ("ipo", "sigmoid_norm"):
        h_norm = _per_token(r_c, policy.chosen_tokens) - _per_token(r_r, policy.rejected_tokens)
        return ipo_loss(h_norm, beta, margin) if name == "ipo" else sigmoid_norm_loss(h_norm, beta, eps, margin)
    if name == "robust":
        return robust_loss(h, beta, eps, margin)
    if name == "exo_pair":
        return exo_pair_loss(h, beta, eps or EXO_DEFAULT_EPS, margin)
    if name == "discopop":
        return discopop_loss(h, beta, spec.discopop_tau, margin)
    if name == "nca_pair":
        return nca_pair_loss(r_c, r_r, beta)
    if name == "bco_pair":
        return bco_pair_loss(r_c, r_r, beta, bco_delta)
    if name == "sppo_hard":
        return sppo_hard_loss(r_c, r_r, beta)
    if name == "apo_zero":
        return apo_zero_loss(r_c, r_r, beta)
    if name == "apo_down":
        return apo_down_loss(r_c, r_r, beta)
    if name == "kto_pair":
        return kto_pair_loss(r_c, r_r, beta)
    if name == "aot":
        return aot_loss(policy.chosen - policy.rejected, reference.chosen - reference.rejected, beta, eps)
    return aot_unpaired_loss(r_c, r_r, beta, eps)  # the only name left


def _is_trivial(values: torch.Tensor | None, neutral: float) -> bool:
    return values is None or bool(torch.all(values == neutral))


def preference_loss(
    policy: SequenceLogps,
    reference: SequenceLogps | None,
    spec: LossSpec,
    weight: torch.Tensor | None = None,
    margin: torch.Tensor | None = None,
    bco_state: BCOState | None = None,
    margin_rewards: torch.Tensor | None = None,
    reduce_sum=None,
) -> LossOutput:
    """Weighted sum of the configured losses, plus the SFT term `ftx * (-pi_c / |y_c|)`, per pair.

    loss_i = weight_i * (sum_k w_k * loss_k(pair i; margin_i) + ftx * NLL_mean(chosen_i))     [B]
    `weight` ([B], per-pair weights from the data) scales each pair's whole loss. `margin` ([B]) is
    a target reward margin for the losses in MARGIN_LOSSES (z = beta*h becomes z - margin); a
    non-zero margin with no such loss, or non-unit weights with a sorted loss (aot), is an error.
    `bco_state` is bco_pair's running reward mean; the updated state comes back in the output.
    `margin_rewards` ([B, K]) are MODPO's margin reward gaps (`modpo_loss`). `reduce_sum` (data
    parallelism): sums a tensor over ranks, for bco_pair's delta (`BCOState.updated`).
    Rewards are beta * log-ratio when a reference is given, else beta * mean log-prob (SimPO/ORPO).
    The trainer backpropagates `losses.mean()`, the mean over the batch's pairs, as TRL does.

    `ftx` is LLaMA-Factory's `pref_ftx`: each pair's mean token NLL of its chosen answer, so short and
    long answers weigh the same (as the RPO paper, Pang et al. 2024, normalises its NLL term by length).
    TRL 1.16's `loss_type="sft"` averages over all chosen tokens of the batch instead; that one is
    `pref_loss: [..., sft]` here (`sft_loss`). With ld_alpha both take the LD-weighted sum (the only one
    `SequenceLogps` carries); TRL's sft takes the unweighted token log-probs, so with ld_alpha < 1 and
    pairs of unequal length prefloop's sft is smaller in magnitude than TRL's.
    """
    if not _is_trivial(margin, 0.0) and not spec.uses_margin:
        raise ValueError(f"the data has per-pair margins but pref_loss {spec.names} cannot use them; "
                         f"margins apply to {sorted(MARGIN_LOSSES)}")
    if not _is_trivial(weight, 1.0) and not spec.uses_pair_weight:
        raise ValueError(f"the data has per-pair weights but pref_loss {spec.names} sorts the batch "
                         "(aot): its rows are quantiles, not pairs")
    if reference is not None:
        chosen_rewards = spec.beta * (policy.chosen - reference.chosen).detach()
        rejected_rewards = spec.beta * (policy.rejected - reference.rejected).detach()
    else:
        chosen_rewards = spec.beta * policy.chosen_mean.detach()
        rejected_rewards = spec.beta * policy.rejected_mean.detach()

    bco_delta = 0.0
    if "bco_pair" in spec.names:
        bco_state = (bco_state or BCOState()).updated(torch.cat([chosen_rewards, rejected_rewards]), reduce_sum)
        bco_delta = bco_state.mean

    pair_margin = 0.0 if margin is None else margin
    total = torch.zeros_like(policy.chosen)
    components: dict[str, torch.Tensor] = {}
    for name, w in zip(spec.names, spec.weights):
        loss = single_loss(name, policy, reference, spec, pair_margin if name in MARGIN_LOSSES else 0.0, bco_delta,
                           margin_rewards)
        components[name] = loss.detach()
        total = total + w * loss
    if spec.ftx:
        sft = -policy.chosen_mean
        components["pref_ftx"] = sft.detach()  # not "sft": that is the `sft` loss, another normalisation
        total = total + spec.ftx * sft
    if weight is not None:
        total = total * weight
    return LossOutput(total, chosen_rewards, rejected_rewards, components, bco_state)


def reward_accuracy(margins: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 when the chosen reward is above the rejected one, 0 below, 1/2 on a tie.      [B]

    Deliberately not TRL's `(chosen_rewards > rejected_rewards)`, which counts a tie as wrong: at
    step 1 (policy == reference, every pair a tie) TRL logs rewards/accuracies 0.0, prefloop 0.5,
    the chance level a tie is (README, "Training"). Pairs with different rewards count the same in both.
    """
    return (margins > 0).to(margins.dtype) + 0.5 * (margins == 0).to(margins.dtype)


def pair_metrics(out: LossOutput, policy: SequenceLogps) -> dict[str, torch.Tensor]:
    """The per-pair values behind the trainer's reward metrics, named as TRL logs them ([B] each,
    detached; the trainer averages them over every pair since the last log):
    rewards/chosen, rewards/rejected (`out`'s implicit rewards: beta * summed log-ratio, or beta * mean
    log-prob for reference-free losses), rewards/margins (chosen - rejected), rewards/accuracies
    (`reward_accuracy`: a tie counts 1/2), logps/chosen, logps/rejected (summed policy log-probs)."""
    margins = out.chosen_rewards - out.rejected_rewards
    return {
        "rewards/chosen": out.chosen_rewards,
        "rewards/rejected": out.rejected_rewards,
        "rewards/margins": margins,
        "rewards/accuracies": reward_accuracy(margins),
        "logps/chosen": policy.chosen.detach(),
        "logps/rejected": policy.rejected.detach(),
    }


# --------------------------------------------------------------------------------------------
# From the config
# --------------------------------------------------------------------------------------------


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def build_loss_spec(cfg) -> LossSpec:
    """LossSpec from a training config; raises ConfigError for unknown losses, bad values, and
    options that do not apply to the chosen losses. The one validation of these keys: `config.validate`
    calls it, so a config that loads builds its loss.

    Reads `pref_loss` (a name, "a,b", or a list), `pref_loss_weights`, `pref_beta`,
    `dpo_label_smoothing`, `pref_ftx`, `simpo_gamma`, `discopop_tau`, `ld_alpha`. Options left unset
    (None; 0 for label smoothing and ftx) take the paper defaults.
    """
    from prefloop.errors import ConfigError

    names = _as_list(getattr(cfg, "pref_loss", "sigmoid"))
    if not names:
        raise ConfigError("pref_loss is empty; name at least one loss, e.g. pref_loss: sigmoid")
    for old, new in LOSS_ALIASES.items():
        if old in names:
            log.warning("pref_loss: %s is TRL's former name of %s (AOT on unpaired data: the sorted chosen "
                        "log-ratios against the sorted rejected ones); training %s. For AOT on pairs, use aot.",
                        old, new, new)
    names = [canonical_loss_name(n) for n in names]
    for name in names:
        if name not in KNOWN_LOSSES:
            raise ConfigError(f"pref_loss: {name!r} is not a known loss; choose from {', '.join(KNOWN_LOSSES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"pref_loss names a loss twice ({names}); give it one entry and set its weight")

    weights = [float(w) for w in _as_list(getattr(cfg, "pref_loss_weights", None))] or [1.0] * len(names)
    if len(weights) != len(names):
        raise ConfigError(f"pref_loss_weights has {len(weights)} values but pref_loss names {len(names)} "
                          f"losses ({names}); give one weight per loss, in the same order")
    if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) == 0:
        raise ConfigError(f"pref_loss_weights {weights} must be finite, >= 0 and not all 0")

    beta = float(getattr(cfg, "pref_beta", 0.1))
    if not beta > 0:
        raise ConfigError(f"pref_beta: {beta} is not allowed; it must be > 0 (typical: 0.05 to 0.5, 0.1 is the usual DPO value)")

    smoothing = float(getattr(cfg, "dpo_label_smoothing", 0.0) or 0.0)
    if smoothing:
        users = [n for n in names if n in SMOOTHING_LOSSES]
        if not users:
            raise ConfigError(f"dpo_label_smoothing does not apply to pref_loss {names}; it is defined for "
                              f"{', '.join(sorted(SMOOTHING_LOSSES))}. Remove it or change pref_loss.")
        ignored = [n for n in names if n not in SMOOTHING_LOSSES]
        if ignored:
            log.warning("dpo_label_smoothing=%s applies to %s only, not to %s", smoothing, users, ignored)
        upper = 1.0 if users == ["exo_pair"] else 0.5  # EXO's eps is any rate in (0, 1); cDPO/robust need < 0.5
        if not 0 < smoothing < upper:
            raise ConfigError(f"dpo_label_smoothing: {smoothing} is not allowed for {users}; it must be in "
                              f"(0, {upper}) (the assumed rate of flipped labels, e.g. 0.1; 0 or unset = none)")
    if "sft" in names and (getattr(cfg, "pref_ftx", 0) or 0) > 0:
        log.warning("pref_loss has sft and pref_ftx is %s: both add an NLL term of the chosen answers (sft: a token "
                    "mean over the batch, TRL's; pref_ftx: each pair's mean, LLaMA-Factory's), so it is trained "
                    "twice. Keep one of them.", cfg.pref_ftx)
    batch = getattr(cfg, "per_device_train_batch_size", None)
    if batch == 1 and any(n in SORTED_LOSSES for n in names):
        log.warning("pref_loss %s sorts each batch to compare quantiles (AOT); with per_device_train_batch_size: 1 "
                    "there is one pair per sort and it is plain DPO. The AOT paper's advantage needs large "
                    "per-device batches.", [n for n in names if n in SORTED_LOSSES])
    if "robust" in names and not smoothing:
        raise ConfigError("pref_loss robust needs dpo_label_smoothing > 0 (the assumed label-flip rate, "
                          "e.g. 0.1); with 0 it is plain sigmoid")

    ftx = float(getattr(cfg, "pref_ftx", 0.0) or 0.0)
    if ftx < 0:
        raise ConfigError(f"pref_ftx: {ftx} is not allowed; it must be >= 0 (it weights the SFT loss on chosen answers)")

    gamma = getattr(cfg, "simpo_gamma", None)
    if gamma is not None and "simpo" not in names:
        raise ConfigError(f"simpo_gamma is set but pref_loss is {names}; it applies only to pref_loss: simpo")
    tau = getattr(cfg, "discopop_tau", None)
    if tau is not None and "discopop" not in names:
        raise ConfigError(f"discopop_tau is set but pref_loss is {names}; it applies only to pref_loss: discopop")
    if tau is not None and not float(tau) > 0:
        raise ConfigError(f"discopop_tau: {tau} is not allowed; it must be > 0 (the paper uses 0.05)")

    ld_alpha = getattr(cfg, "ld_alpha", None)
    if ld_alpha is not None:
        ld_alpha = float(ld_alpha)
        if not 0 <= ld_alpha <= 1:
            raise ConfigError(f"ld_alpha: {ld_alpha} is not allowed; it must be in [0, 1] (LD-DPO suggests 0.5)")
    modpo_weights = getattr(cfg, "modpo_weights", None)
    if "modpo" in names and not modpo_weights:
        raise ConfigError("pref_loss: modpo needs modpo_weights: [w0, w1, ...] (w0 for this data's objective, "
                          "one more per modpo_margin_models entry)")
    return LossSpec(
        modpo_weights=[float(w) for w in modpo_weights] if "modpo" in names else None,
        names=names, weights=weights, beta=beta, label_smoothing=smoothing, ftx=ftx,
        simpo_gamma=SIMPO_GAMMA_DEFAULT if gamma is None else float(gamma),
        discopop_tau=0.05 if tau is None else float(tau), ld_alpha=ld_alpha,
    )
