"""Preference losses: pure functions of per-sequence log-probabilities.

No model, no tokenizer, no hidden state. Each loss takes the summed log-probs of the chosen and
rejected responses under the policy and (for reference-based losses) the reference, and returns a
per-pair loss of shape [B]. `preference_loss` combines the configured losses and computes the
implicit rewards that the trainer logs (`rewards/chosen` = beta * (pi_c - ref_c), ...).

Shapes: every tensor argument is [B] (one value per pair), float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


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
    """Which losses to use and their hyperparameters (built from the training config)."""

    names: list[str] = field(default_factory=lambda: ["sigmoid"])
    weights: list[float] = field(default_factory=lambda: [1.0])
    beta: float = 0.1
    label_smoothing: float = 0.0
    ftx: float = 0.0

    @property
    def needs_reference(self) -> bool:
        return any(name not in REFERENCE_FREE for name in self.names)


@dataclass
class LossOutput:
    losses: torch.Tensor  # [B] per-pair loss, already weighted
    chosen_rewards: torch.Tensor  # [B], detached
    rejected_rewards: torch.Tensor  # [B], detached


def sigmoid_loss(logits: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7) with cDPO smoothing.

    h = (pi_c - ref_c) - (pi_r - ref_r)
    loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    `logits` is h; eps is the label-smoothing rate (Mitchell 2023, conservative DPO). At h = 0 the
    loss is ln 2.
    """
    return -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(-beta * logits)


def hinge_loss(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """SLiC hinge (Zhao et al. 2023, "SLiC-HF", eq. 1 with delta = 1/beta, scaled by beta).

    loss = max(0, 1 - beta * h), with h as in `sigmoid_loss`. At h = 0 the loss is 1.
    """
    return torch.relu(1 - beta * logits)


def ipo_loss(logits_per_token: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm...", eq. 17).

    loss = (h - 1 / (2 * beta))^2, where h uses length-averaged log-probs (as the paper's
    token-level formulation does): h = (pi_c - ref_c)/|y_c| - (pi_r - ref_r)/|y_r|.
    At h = 0 the loss is (1 / (2 beta))^2.
    """
    return (logits_per_token - 1 / (2 * beta)) ** 2


REFERENCE_FREE: set[str] = set()
KNOWN_LOSSES = ("sigmoid", "hinge", "ipo")


def _log_ratios(policy: SequenceLogps, reference: SequenceLogps):
    return policy.chosen - reference.chosen, policy.rejected - reference.rejected


def single_loss(name: str, policy: SequenceLogps, reference: SequenceLogps | None, spec: LossSpec) -> torch.Tensor:
    """The per-pair loss [B] of one named loss."""
    if name in REFERENCE_FREE:
        raise NotImplementedError(name)
    assert reference is not None, f"pref_loss {name!r} needs reference log-probs"
    chosen_ratio, rejected_ratio = _log_ratios(policy, reference)
    logits = chosen_ratio - rejected_ratio
    if name == "sigmoid":
        return sigmoid_loss(logits, spec.beta, spec.label_smoothing)
    if name == "hinge":
        return hinge_loss(logits, spec.beta)
    if name == "ipo":
        per_token = chosen_ratio / policy.chosen_tokens.clamp(min=1) - rejected_ratio / policy.rejected_tokens.clamp(min=1)
        return ipo_loss(per_token, spec.beta)
    raise ValueError(f"unknown pref_loss {name!r}; known: {', '.join(KNOWN_LOSSES)}")


def preference_loss(
    policy: SequenceLogps,
    reference: SequenceLogps | None,
    spec: LossSpec,
    weight: torch.Tensor | None = None,
    margin: torch.Tensor | None = None,
) -> LossOutput:
    """Weighted sum of the configured losses, plus the SFT term `ftx * NLL(chosen)/|y_c|`.

    `weight` ([B], per-pair weights from the data) scales each pair's loss. `margin` ([B]) is a
    target reward margin subtracted from the logits where the loss defines one (sigmoid/hinge).
    Rewards are beta * log-ratio (reference-based) or beta * mean log-prob (reference-free).
    """
    loss_reference = reference
    if margin is not None and reference is not None:
        # Shifting the rejected log-ratio by margin/beta turns beta*h into beta*h - margin.
        loss_reference = SequenceLogps(reference.chosen, reference.rejected - margin / spec.beta,
                                       reference.chosen_tokens, reference.rejected_tokens)
    total = torch.zeros_like(policy.chosen)
    for name, w in zip(spec.names, spec.weights):
        total = total + w * single_loss(name, policy, loss_reference, spec)
    if spec.ftx:
        total = total - spec.ftx * policy.chosen_mean
    if weight is not None:
        total = total * weight
    if reference is not None and spec.needs_reference:
        chosen_rewards = spec.beta * (policy.chosen - reference.chosen).detach()
        rejected_rewards = spec.beta * (policy.rejected - reference.rejected).detach()
    else:
        chosen_rewards = spec.beta * policy.chosen_mean.detach()
        rejected_rewards = spec.beta * policy.rejected_mean.detach()
    return LossOutput(total, chosen_rewards, rejected_rewards)



def build_loss_spec(cfg) -> LossSpec:
    """LossSpec from a training config (attributes `pref_loss`, `pref_beta`, `dpo_label_smoothing`,
    `pref_ftx`, `pref_loss_weights`); raises ConfigError for unknown losses or options that do not apply."""
    from prefloop.errors import ConfigError

    names = cfg.pref_loss if isinstance(cfg.pref_loss, (list, tuple)) else [cfg.pref_loss]
    for name in names:
        if name not in KNOWN_LOSSES:
            raise ConfigError(f"pref_loss: {name!r} is not a known loss; choose from {', '.join(KNOWN_LOSSES)}")
    weights = list(getattr(cfg, "pref_loss_weights", None) or [1.0] * len(names))
    if len(weights) != len(names):
        raise ConfigError(f"pref_loss_weights has {len(weights)} values but pref_loss names {len(names)} losses")
    smoothing = getattr(cfg, "dpo_label_smoothing", 0.0) or 0.0
    if smoothing and any(n != "sigmoid" for n in names):
        raise ConfigError("dpo_label_smoothing (cDPO) is defined only for pref_loss: sigmoid")
    return LossSpec(list(names), weights, cfg.pref_beta, smoothing, getattr(cfg, "pref_ftx", 0.0) or 0.0)
