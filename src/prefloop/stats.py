"""Shared statistics: paired bootstrap, win rates, length-controlled win rate, Bradley–Terry, kappa.

The one place for statistics in prefloop (evaluation, label-stats and judge-agreement import from
here), built on numpy, scipy and scikit-learn. Rates are fractions in [0, 1]; reports multiply by 100.

Sources:
- Win rate: alpaca_eval `metrics/winrate.py::get_winrate` — the mean preference for the model in [0, 1]
  (a tie 0.5, soft verdicts in between), its standard error (the sample standard deviation / sqrt(n),
  pandas' `sem`), `discrete_win_rate` (every preference rounded to win / tie / loss, a tie as half) and
  the counts; missing verdicts are left out of n and counted. With verdicts 1 / 0.5 / 0 only, the
  win rate is FastChat's `win_rate_adjusted = (win + 0.5 * tie) / n` (`fastchat/llm_judge/show_result.py`)
  and the raw win rate its `win_rate = win / n`.
- Paired bootstrap over prompts, percentile interval: Efron & Tibshirani (1993), ch. 13; every row
  (one prompt, with both of its judge orders already combined) is resampled as a unit.
- Length-controlled (LC) win rate: Dubois et al. (2024), "Length-Controlled AlpacaEval: A Simple Way to
  Debias Automatic Evaluators", arXiv:2404.04475, in the variant that needs no hub files (see
  `lc_win_rate`). The extreme-change warning follows alpaca_eval's `get_is_extreme_changes`.
- Bradley–Terry ratings: Bradley & Terry (1952), fitted as Arena-Hard-Auto does (lmarena/arena-hard-auto,
  `compute_mle_elo`): a logistic regression without intercept on ±log(10) indicator rows, a tie as half
  a win for each side, ratings `400 * coef + 1000`, anchored so the baseline has 1000.
- Cohen's kappa: Cohen (1960); Fleiss' kappa: Fleiss (1971).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
LC_FOLDS = 5
LC_CS = np.logspace(-4, 4, 10)  # the inverse-regularization grid searched by cross-validation


# --------------------------------------------------------------------------------------------- bootstrap

@dataclass
class Interval:
    """A point estimate with a bootstrap percentile interval; `n` rows (prompts) it rests on."""

    estimate: float
    low: float
    high: float
    n: int
    level: float
    resamples: int
    seed: int
    # how the interval was made, written into results.json so a reader need not guess (alpaca_eval reports a
    # normal-approximation standard error instead; prefloop gives that as `win_rate_se` beside this interval)
    method: str = "percentile bootstrap, rows resampled with replacement"

    def to_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(rows: Sequence | np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
                     n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of `statistic` over rows resampled with replacement.

    rows: array of shape (n, ...) — one row per prompt; everything in a row (e.g. a prompt's verdicts in
    both orders, or its scores for several models) is resampled together, which is what makes the
    bootstrap *paired*. statistic: maps an array of shape (n, ...) to a float (default: the mean).
    Returns the statistic on the original rows and the (1-level)/2 and (1+level)/2 quantiles of the
    statistic over `n_resamples` resamples drawn with `numpy.random.default_rng(seed)`.
    Raises ValueError on no rows, n_resamples < 1 or a level outside (0, 1).
    Source: Efron & Tibshirani (1993), "An Introduction to the Bootstrap", ch. 13 (percentile interval).
    """
    data = np.asarray(rows, dtype=float)
    n = len(data)
    if n == 0:
        raise ValueError("the bootstrap needs at least one row")
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need n_resamples >= 1 and 0 < level < 1, got {n_resamples} and {level}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(n_resamples, n))
    values = np.array([statistic(data[p]) for p in picks], dtype=float)
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(statistic(data)), float(low), float(high), n, level, n_resamples, seed)


# --------------------------------------------------------------------------------------------- win rate

OUTCOME_SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def combine_orders(first: str | None, second: str | None) -> str | None:
    """One prompt's outcome from its two judge orders, each "win" / "tie" / "loss" for the after-model.

    Both orders agree: that outcome; they disagree: "tie" (FastChat's position-bias rule: a verdict
    that flips with the order is about position, not content); either missing: None (failed).
    """
    if first is None or second is None:
        return None
    return first if first == second else "tie"


@dataclass
class WinRate:
    """Counts and rates of one model against another over n judged prompts (missing verdicts left out)."""

    wins: int
    ties: int
    losses: int
    n: int
    win_rate: float | None           # mean preference, a tie 0.5 — alpaca_eval's win_rate (continuous)
    raw_win_rate: float | None       # wins / n — FastChat's win_rate
    discrete_win_rate: float | None = None  # (wins + ties / 2) / n — alpaca_eval's discrete_win_rate
    standard_error: float | None = None     # sample std (ddof=1) / sqrt(n) of the preferences; None below n = 2
    n_missing: int = 0               # verdicts that are missing (None or NaN): not in n, not in any rate

    def to_dict(self) -> dict:
        return asdict(self)


def preference_scores(preferences: Sequence) -> tuple[np.ndarray, int]:
    """(judged preferences as floats in [0, 1], number missing) from per-prompt preferences.

    Each preference is the probability that the model beats the baseline: 1 win, 0.5 tie, 0 loss, or a
    soft value in between; "win" / "tie" / "loss" are accepted for 1 / 0.5 / 0; None or NaN is a missing
    verdict (a failed or unparseable judgment). Raises ValueError on another label or a number outside [0, 1].
    """
    values, missing = [], 0
    for p in preferences:
        if p is None or (isinstance(p, float) and math.isnan(p)):
            missing += 1
            continue
        if isinstance(p, str):
            if p not in OUTCOME_SCORES:
                raise ValueError(f"outcomes must be win/tie/loss, got {p!r}")
            values.append(OUTCOME_SCORES[p])
            continue
        value = float(p)
        if math.isnan(value):
            missing += 1
            continue
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"preferences must lie in [0, 1] (1 win, 0.5 tie, 0 loss), got {p!r}")
        values.append(value)
    return np.array(values, dtype=float), missing


def win_rate(preferences: Sequence) -> WinRate:
    """Win rate, its standard error, the discrete win rate and the counts from per-prompt preferences.

    preferences: per prompt "win" / "tie" / "loss" or a number in [0, 1] (see `preference_scores`);
    None/NaN = missing, counted in `n_missing` and left out of everything else.
    Source: alpaca_eval `get_winrate` (on its encoding p = preference - 1): win_rate = mean(p),
    standard_error = sem(p) (ddof=1), wins = #(p > 0.5), losses = #(p < 0.5), ties = #(p == 0.5),
    discrete_win_rate = (wins + ties / 2) / n; raw_win_rate = wins / n (FastChat's win_rate). With
    verdicts 1 / 0.5 / 0 only, win_rate = discrete_win_rate = FastChat's win_rate_adjusted.
    Raises ValueError on another label or a number outside [0, 1].
    """
    p, missing = preference_scores(preferences)
    n = len(p)
    wins, ties, losses = int((p > 0.5).sum()), int((p == 0.5).sum()), int((p < 0.5).sum())
    if not n:
        return WinRate(0, 0, 0, 0, None, None, None, None, missing)
    se = float(p.std(ddof=1) / math.sqrt(n)) if n >= 2 else None
    return WinRate(wins, ties, losses, n, float(p.mean()), wins / n, (wins + ties / 2) / n, se, missing)


def alpaca_eval_preference(value) -> float | None:
    """An alpaca_eval annotation's `preference` as a preference for the model (output_2) in [0, 1].

    alpaca_eval encodes 1 = the baseline (output_1) wins, 2 = the model wins, 1.5 = a tie, soft values in
    between, and, for historical reasons, 0 = a tie; None/NaN = no annotation (returned as None).
    Raises ValueError on anything else."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    v = float(value)
    if v == 0.0:
        return 0.5
    if not 1.0 <= v <= 2.0:
        raise ValueError(f"an alpaca_eval preference is 1..2 (or 0 for a tie), got {value!r}")
    return v - 1.0


def outcome_scores(outcomes: Sequence[str]) -> np.ndarray:
    """Outcomes "win" / "tie" / "loss" as scores 1 / 0.5 / 0, shape (n,)."""
    return np.array([OUTCOME_SCORES[o] for o in outcomes], dtype=float)


def win_rate_interval(preferences: Sequence, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                      level: float = 0.95) -> Interval:
    """Paired-bootstrap interval of the win rate (the mean preference) over the judged prompts; see
    `paired_bootstrap`. preferences: as `win_rate` takes them; missing ones are left out."""
    return paired_bootstrap(preference_scores(preferences)[0], np.mean, n_resamples, seed, level)


# --------------------------------------------------------------------------------------------- LC win rate

def _sigmoid(x):
    from scipy.special import expit

    return expit(x)


def _soft_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _fit_soft_logistic(X: np.ndarray, y: np.ndarray, C: float, l1: bool):
    """Logistic regression without intercept on soft labels y in [0, 1].

    Soft labels as weighted duplicated rows: every row appears once with label 1 and weight y and once
    with label 0 and weight 1 - y, which makes the weighted log-likelihood the soft cross-entropy.
    """
    from sklearn.linear_model import LogisticRegression

    X2 = np.concatenate([X, X])
    labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    weights = np.concatenate([y, 1 - y])
    if l1:
        model = LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", fit_intercept=False, random_state=123)
    else:
        model = LogisticRegression(C=C, fit_intercept=False, max_iter=1000, tol=1e-8)
    if len(set(labels[weights > 0])) < 2:  # every soft label is 0 or every one is 1 (degenerate, still defined)
        weights = weights + 1e-12
    model.fit(X2, labels, sample_weight=weights)
    return model.coef_[0]


@dataclass
class LCWinRate:
    """The length-controlled win rate, its standard error and the fit behind it."""

    lc_win_rate: float | None
    lc_win_rate_se: float | None
    win_rate: float | None            # the mean soft preference (ties as half) the LC is compared with
    weights: dict = field(default_factory=dict)
    C: float | None = None
    n: int = 0                        # prompts with a verdict (the fit's rows)
    warning: str | None = None
    n_missing: int = 0                # prompts without a verdict: not fitted, but in std(Δlen)

    def to_dict(self) -> dict:
        return asdict(self)


def is_extreme_change(raw: float, lc: float, abs_diff: float = 0.10, rel_diff: float = 4.0) -> bool:
    """alpaca_eval's warning rule (`get_is_extreme_changes`), on rates in [0, 1].

    The LC win rate is suspicious when it is below min(raw - raw/rel_diff, raw - abs_diff) or above
    max(raw + (1 - raw)/rel_diff, raw + abs_diff): a move of more than 10 points and more than a
    quarter of the room in that direction.
    """
    too_small = lc < min(raw - raw / rel_diff, raw - abs_diff)
    too_large = lc > max(raw + (1 - raw) / rel_diff, raw + abs_diff)
    return bool(too_small or too_large)


def lc_win_rate(preferences: Sequence[float], len_after: Sequence[float], len_before: Sequence[float],
                n_splits: int = LC_FOLDS) -> LCWinRate:
    """AlpacaEval 2's length-controlled win rate, in the variant that needs no hub files.

    preferences: shape (n,), per prompt the probability in [0, 1] that the after-model's answer is better
    (1 win, 0.5 tie, 0 loss, or a soft verdict); None or NaN for a prompt without a verdict, which is left
    out of the fit but, as in alpaca_eval, still counts in std(Δlen) (the length difference belongs to the
    outputs, not to the annotation). len_after, len_before: shape (n,), answer lengths in characters
    (alpaca_eval measures `str.len()`).
    Model (Dubois et al. 2024, arXiv:2404.04475, eq. 3 without the instruction-difficulty and gamed-baseline
    terms that need hub files; alpaca_eval's `length_controlled_minimal` formula
    `np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1`):
    P(after better) = sigmoid(w_len * tanh(Δlen / std(Δlen)) + w_0), with alpaca_eval's orientation
    Δlen = len_before - len_after (baseline output_1 minus model output_2, so a judge that likes longer
    answers gives w_len < 0, and `weights` equal the weights alpaca_eval saves), std with ddof=1 (0 when
    every Δlen is equal: then the length term is 0, where alpaca_eval divides 0 by 0 and fails), a
    constant feature and no intercept. Fitted with L1
    penalty (liblinear) on soft labels as weighted duplicated rows, the penalty chosen from
    C in logspace(-4, 4, 10) by 5-fold grouped cross-validation on soft log loss, as alpaca_eval's
    `fit_LogisticRegressionCV` does. LC win rate = the prediction at Δlen = 0 = sigmoid(w_0).
    Standard error: delta method, SE = p(1-p) * SE(w_0), with Var(w_0) the larger of the sandwich (robust)
    variance H^-1 B H^-1 and the model-based H^-1 of the soft-label likelihood at the fitted weights
    (H = Σ μ(1-μ) x xᵀ, B = Σ (y-μ)² x xᵀ); the larger, because when lengths separate the verdicts the
    residuals vanish and the sandwich alone would understate the uncertainty.
    Warning: `is_extreme_change(win_rate, lc)`, the message alpaca_eval logs.
    Fewer than 2 prompts with a verdict: LC undefined (None); 2 to 4: as many folds as prompts
    (alpaca_eval fails below 5). Raises ValueError on mismatched lengths or preferences outside [0, 1].
    """
    y = np.array([np.nan if p is None else p for p in preferences], dtype=float)
    delta = np.asarray(len_before, dtype=float) - np.asarray(len_after, dtype=float)
    if y.shape != delta.shape or y.ndim != 1:
        raise ValueError(f"preferences and lengths need the same shape (n,), got {y.shape} and {delta.shape}")
    judged = ~np.isnan(y)
    if np.any((y[judged] < 0) | (y[judged] > 1)):
        raise ValueError("preferences must lie in [0, 1]")
    std = float(delta.std(ddof=1)) if len(delta) > 1 else 0.0  # over every prompt, as alpaca_eval's featurizer
    y, delta = y[judged], delta[judged]
    n, n_missing = len(y), int((~judged).sum())
    raw = float(y.mean()) if n else None
    if n < 2:
        return LCWinRate(None, None, raw, n=n, n_missing=n_missing)
    feature = np.tanh(delta / std) if std > 0 else np.zeros(n)
    X = np.column_stack([feature, np.ones(n)])
    from sklearn.model_selection import GroupKFold

    splits = min(n_splits, n)
    folds = list(GroupKFold(n_splits=splits).split(X, y, groups=np.arange(n)))
    losses = np.zeros(len(LC_CS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # liblinear's convergence notes on tiny folds
        for train, test in folds:
            for k, C in enumerate(LC_CS):
                w = _fit_soft_logistic(X[train], y[train], C, l1=True)
                losses[k] += _soft_log_loss(y[test], _sigmoid(X[test] @ w))
        best = int(np.argmin(losses))
        w = _fit_soft_logistic(X, y, float(LC_CS[best]), l1=True)
    lc = float(_sigmoid(w[1]))
    mu = _sigmoid(X @ w)
    H = (X * (mu * (1 - mu))[:, None]).T @ X
    B = (X * ((y - mu) ** 2)[:, None]).T @ X
    H_inv = np.linalg.pinv(H)
    # the larger of the robust and the model-based variance: when lengths separate the verdicts the residuals
    # vanish and the sandwich alone would claim a certainty the fit does not have
    var_w0 = max(float((H_inv @ B @ H_inv)[1, 1]), float(H_inv[1, 1]))
    se = lc * (1 - lc) * math.sqrt(max(var_w0, 0.0))
    warning = None
    if is_extreme_change(raw, lc):
        warning = (f"Length controlled win rate is very different from the raw one: {100 * lc:.1f}% vs "
                   f"{100 * raw:.1f}%. This might be a sign of failure of the GLM (too few prompts, or lengths "
                   "that explain every verdict).")
    return LCWinRate(lc, se, raw, {"tanh_std_delta_len": float(w[0]), "constant": float(w[1])},
                     float(LC_CS[best]), n, warning, n_missing)


# --------------------------------------------------------------------------------------------- Bradley–Terry

BT_SCALE, BT_BASE, BT_INIT = 400.0, 10.0, 1000.0


def bradley_terry(battles: Sequence[tuple[str, str, float]], baseline: str | None = None) -> dict[str, float]:
    """Bradley–Terry ratings (Elo scale) from battles (model_a, model_b, score of model_a: 1, 0.5 or 0).

    Arena-Hard-Auto's `compute_mle_elo`: one row per ordered pair of models with +log(10) in model_a's
    column and -log(10) in model_b's, label 1 weighted by a's wins plus half the ties and label 0 weighted
    by b's wins plus half the ties, an unpenalized logistic regression without intercept (scikit-learn),
    rating = 400 * coef + 1000, shifted so `baseline` (when given) has exactly 1000.
    P(a beats b) = 1 / (1 + 10 ** ((R_b - R_a) / 400)). Raises ValueError on fewer than two models or a
    baseline that never played.
    """
    from sklearn.linear_model import LogisticRegression

    models = sorted({m for a, b, _ in battles for m in (a, b)})
    if len(models) < 2:
        raise ValueError("Bradley–Terry needs battles between at least two models")
    if baseline is not None and baseline not in models:
        raise ValueError(f"baseline {baseline!r} is in no battle")
    index = {m: i for i, m in enumerate(models)}
    score: dict[tuple[int, int], float] = Counter()
    for a, b, s in battles:
        ia, ib = index[a], index[b]
        score[(ia, ib)] += float(s)
        score[(ib, ia)] += 1.0 - float(s)
    rows, labels, weights = [], [], []
    for (ia, ib), w in score.items():
        if ia > ib or w == 0 and score[(ib, ia)] == 0:
            continue
        x = np.zeros(len(models))
        x[ia], x[ib] = math.log(BT_BASE), -math.log(BT_BASE)
        rows += [x, x]
        labels += [1, 0]
        weights += [w, score[(ib, ia)]]
    model = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-6, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a model that wins every battle has no finite rating
        model.fit(np.array(rows), np.array(labels), sample_weight=np.array(weights))
    ratings = BT_SCALE * model.coef_[0] + BT_INIT
    if baseline is not None:
        ratings += BT_INIT - ratings[index[baseline]]
    return {m: float(ratings[index[m]]) for m in models}


def bt_win_probability(rating: float, baseline_rating: float) -> float:
    """P(model beats baseline) = 1 / (1 + 10 ** ((R_baseline - R_model) / 400))."""
    return 1.0 / (1.0 + BT_BASE ** ((baseline_rating - rating) / BT_SCALE))


def bradley_terry_intervals(battles_by_prompt: Sequence[Sequence[tuple[str, str, float]]], baseline: str,
                            n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                            level: float = 0.95) -> dict[str, dict]:
    """Bradley–Terry leaderboard with bootstrap intervals, prompts resampled with replacement.

    battles_by_prompt: one list of battles per prompt (all of a prompt's battles are resampled together,
    the paired bootstrap). Returns model -> {"rating", "low", "high", "win_rate_vs_baseline",
    "win_rate_low", "win_rate_high"} with the percentile interval over resamples (Arena-Hard-Auto's
    `get_bootstrap_result`, there over battles; here over prompts).
    """
    flat = [b for prompt in battles_by_prompt for b in prompt]
    point = bradley_terry(flat, baseline)
    rng = np.random.default_rng(seed)
    samples = []
    n = len(battles_by_prompt)
    for _ in range(n_resamples):
        pick = rng.integers(0, n, size=n)
        resampled = [b for i in pick for b in battles_by_prompt[i]]
        try:
            samples.append(bradley_terry(resampled, baseline))
        except ValueError:  # a resample where the baseline or a model never played
            continue
    out = {}
    q = [(1 - level) / 2, (1 + level) / 2]
    for m, r in point.items():
        values = np.array([s.get(m, np.nan) for s in samples], dtype=float)
        values = values[~np.isnan(values)]
        low, high = np.quantile(values, q) if len(values) else (float("nan"), float("nan"))
        out[m] = {"rating": r, "low": float(low), "high": float(high),
                  "win_rate_vs_baseline": bt_win_probability(r, point[baseline]),
                  "win_rate_low": bt_win_probability(float(low), point[baseline]),
                  "win_rate_high": bt_win_probability(float(high), point[baseline]),
                  "resamples": int(len(values))}
    return out


# --------------------------------------------------------------------------------------------- agreement

def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items: (p_o - p_e) / (1 - p_e).

    p_o = observed agreement, p_e = Σ_c p_1(c) p_2(c) from the raters' marginals (Cohen 1960), computed by
    scikit-learn's `cohen_kappa_score`. None when undefined (no items, or p_e = 1: both raters used one
    and the same label throughout). Raises ValueError when the raters label different numbers of items.
    """
    if len(first) != len(second):
        raise ValueError("both raters need one label per item")
    if not first:
        return None
    if len(set(first) | set(second)) == 1:
        return None
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(list(first), list(second)))


def fleiss_kappa(rows: Sequence[dict[str, int]]) -> float | None:
    """Fleiss' kappa from per-item category counts (Fleiss 1971; varying raters per item generalized).

    rows: one dict category -> number of raters per item; items with fewer than 2 ratings are left out.
    P_i = Σ_j n_ij (n_ij - 1) / (n_i (n_i - 1)), P̄ = mean P_i, p_j = share of all ratings in category j,
    P_e = Σ p_j², kappa = (P̄ - P_e) / (1 - P_e). None when undefined (no items, or P_e = 1).
    """
    rows = [r for r in rows if sum(r.values()) >= 2]
    if not rows:
        return None
    categories = sorted({c for r in rows for c in r})
    counts = np.array([[r.get(c, 0) for c in categories] for r in rows], dtype=float)
    n_i = counts.sum(axis=1)
    p_bar = float(np.mean((counts * (counts - 1)).sum(axis=1) / (n_i * (n_i - 1))))
    p_j = counts.sum(axis=0) / counts.sum()
    p_e = float(np.sum(p_j ** 2))
    if p_e == 1:
        return None
    return (p_bar - p_e) / (1 - p_e)
