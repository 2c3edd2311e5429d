"""prefloop.stats on hand-made verdict tables whose answers are known."""

import numpy as np
import pytest

from prefloop import stats


def test_win_rate_counts_ties_as_half_and_raw_counts_only_wins():
    outcomes = ["win"] * 6 + ["tie"] * 2 + ["loss"] * 2
    wr = stats.win_rate(outcomes)
    assert (wr.wins, wr.ties, wr.losses, wr.n) == (6, 2, 2, 10)
    assert wr.win_rate == pytest.approx(0.7)      # (6 + 1) / 10
    assert wr.raw_win_rate == pytest.approx(0.6)  # 6 / 10
    assert stats.win_rate([]).win_rate is None
    with pytest.raises(ValueError, match="win/tie/loss"):
        stats.win_rate(["win", "draw"])


def test_win_rate_of_soft_preferences_is_alpaca_evals_with_missing_counted():
    # alpaca_eval get_winrate on preference - 1: mean, sem (ddof=1), wins p > .5, ties p == .5, losses p < .5
    prefs = [1.0, 1.0, 0.5, 0.0, 0.8, 0.3, None, float("nan")]
    wr = stats.win_rate(prefs)
    assert (wr.wins, wr.ties, wr.losses, wr.n, wr.n_missing) == (3, 1, 2, 6, 2)
    assert wr.win_rate == pytest.approx(0.6)                   # 3.6 / 6
    assert wr.discrete_win_rate == pytest.approx(3.5 / 6)      # each rounded first: (3 + 1/2) / 6
    assert wr.raw_win_rate == pytest.approx(0.5)               # 3 / 6
    assert wr.standard_error == pytest.approx((0.82 / 5) ** 0.5 / 6 ** 0.5)  # squared deviations sum to 0.82
    # verdicts 1 / 0.5 / 0 only: continuous and discrete agree, FastChat's win_rate_adjusted
    hard = stats.win_rate(["win", "tie", "loss", "win"])
    assert hard.win_rate == hard.discrete_win_rate == pytest.approx(2.5 / 4)
    assert hard.standard_error == pytest.approx(np.std([1, 0.5, 0, 1], ddof=1) / 2)
    one = stats.win_rate([0.7])
    assert one.win_rate == pytest.approx(0.7) and one.standard_error is None and one.discrete_win_rate == 1.0
    none = stats.win_rate([None, None])
    assert none.n == 0 and none.n_missing == 2 and none.win_rate is None and none.discrete_win_rate is None
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.win_rate([1.5])
    # the interval resamples the same preferences, missing ones left out
    interval = stats.win_rate_interval(prefs, n_resamples=200, seed=0)
    assert interval.n == 6 and interval.estimate == pytest.approx(0.6)


@pytest.mark.parametrize("value, preference", [
    (2, 1.0), (1, 0.0), (1.5, 0.5), (0, 0.5), (1.75, 0.75), (None, None), (float("nan"), None),
])
def test_alpaca_eval_preference_encoding(value, preference):
    # 1 = baseline (output_1) wins, 2 = model (output_2) wins, 1.5 or (legacy) 0 = tie, NaN = no annotation
    assert stats.alpaca_eval_preference(value) == preference


def test_alpaca_eval_preference_out_of_range():
    with pytest.raises(ValueError):
        stats.alpaca_eval_preference(0.5)


@pytest.mark.parametrize("first, second, combined", [
    ("win", "win", "win"), ("loss", "loss", "loss"), ("tie", "tie", "tie"),
    ("win", "loss", "tie"), ("win", "tie", "tie"), ("loss", "win", "tie"), (None, "win", None), ("win", None, None),
])
def test_combine_orders_disagreement_is_a_tie(first, second, combined):
    assert stats.combine_orders(first, second) == combined


def test_bootstrap_interval_is_reproducible_and_brackets_the_known_rate():
    outcomes = ["win"] * 60 + ["tie"] * 20 + ["loss"] * 20  # win rate 0.7 exactly
    a = stats.win_rate_interval(outcomes, n_resamples=1000, seed=7)
    b = stats.win_rate_interval(outcomes, n_resamples=1000, seed=7)
    assert a == b
    assert a.estimate == pytest.approx(0.7)
    assert a.low < 0.7 < a.high
    # the binomial-style standard error is sqrt(var/n) = 0.0406 here: the 95% interval is about +-0.08
    half = (a.high - a.low) / 2
    assert 0.06 < half < 0.10
    assert a.n == 100 and a.resamples == 1000


def test_bootstrap_is_paired_rows_move_together():
    # each row: (after score, before score); the difference is always +1, so every resample gives +1
    rows = np.array([[1.0, 0.0], [0.7, -0.3], [0.2, -0.8], [0.9, -0.1]])
    interval = stats.paired_bootstrap(rows, lambda r: float(np.mean(r[:, 0] - r[:, 1])), n_resamples=200, seed=0)
    assert interval.low == pytest.approx(1.0) and interval.high == pytest.approx(1.0)
    with pytest.raises(ValueError):
        stats.paired_bootstrap([], n_resamples=10)


def _length_gamed(n=400, seed=0):
    """The judge prefers whichever answer is longer (P = sigmoid(3 tanh(Δlen / std))) and nothing else;
    the after-model pads 80% of its answers."""
    rng = np.random.default_rng(seed)
    before = rng.integers(200, 800, n)
    padded = rng.random(n) < 0.8
    after = np.where(padded, before + rng.integers(100, 600, n), before - rng.integers(100, 300, n))
    delta = after - before
    p_after = 1 / (1 + np.exp(-3 * np.tanh(delta / delta.std(ddof=1))))
    prefs = (rng.random(n) < p_after).astype(float)
    return prefs, after, before


def test_lc_win_rate_removes_a_pure_length_advantage():
    prefs, after, before = _length_gamed()
    raw = prefs.mean()
    lc = stats.lc_win_rate(prefs, after, before)
    assert raw > 0.7
    assert abs(lc.lc_win_rate - 0.5) < 0.1, lc
    assert lc.weights["tanh_std_delta_len"] < 0  # alpaca_eval's orientation: Δlen = baseline - model
    assert lc.lc_win_rate_se is not None and 0 < lc.lc_win_rate_se < 0.2
    assert lc.warning is not None and "very different" in lc.warning  # > 10 points from raw


def test_lc_win_rate_equals_raw_when_lengths_carry_no_signal():
    rng = np.random.default_rng(1)
    n = 300
    after, before = rng.integers(100, 900, n), rng.integers(100, 900, n)
    prefs = (rng.random(n) < 0.7).astype(float)  # quality, not length
    lc = stats.lc_win_rate(prefs, after, before)
    assert abs(lc.lc_win_rate - prefs.mean()) < 0.05
    assert lc.warning is None
    assert stats.lc_win_rate([1.0], [10], [5]).lc_win_rate is None  # one prompt: undefined


def test_lc_win_rate_leaves_missing_verdicts_out_of_the_fit_but_not_out_of_std_delta_len():
    """alpaca_eval divides Δlen by its std over every instruction, then drops rows without a preference."""
    rng = np.random.default_rng(3)
    n = 120
    after, before = rng.integers(100, 900, n), rng.integers(100, 900, n)
    delta = before - after
    prefs = (rng.random(n) < 1 / (1 + np.exp(-(0.3 - 1.5 * np.tanh(delta / delta.std(ddof=1)))))).astype(float)
    with_missing = list(prefs[:-1]) + [None]
    after2, before2 = after.copy(), before.copy()
    after2[-1] = 5000  # the prompt without a verdict has a large length difference: it widens std(Δlen)
    lc = stats.lc_win_rate(with_missing, after2, before2)
    dropped = stats.lc_win_rate(prefs[:-1], after2[:-1], before2[:-1])
    assert (lc.n, lc.n_missing, dropped.n, dropped.n_missing) == (n - 1, 1, n - 1, 0)
    assert lc.win_rate == dropped.win_rate == pytest.approx(prefs[:-1].mean())
    assert lc.weights["tanh_std_delta_len"] != pytest.approx(dropped.weights["tanh_std_delta_len"], abs=1e-3)
    assert stats.lc_win_rate([float("nan"), 1.0], [1, 2], [2, 1]).lc_win_rate is None  # one verdict: undefined


def test_lc_win_rate_with_equal_lengths_is_the_constant_fit():
    """Δlen the same everywhere: std(Δlen) = 0 and the length term is 0 (alpaca_eval divides 0 by 0 and fails)."""
    prefs = np.array([1.0] * 30 + [0.0] * 10)
    lc = stats.lc_win_rate(prefs, np.full(40, 300), np.full(40, 300))
    assert lc.weights["tanh_std_delta_len"] == 0.0
    # the L1 fit of a constant alone shrinks log(30/10) towards 0; unpenalised it would be 0.75 exactly
    assert 0.5 <= lc.lc_win_rate <= 0.75 + 1e-6 and lc.lc_win_rate_se > 0


def test_extreme_change_rule_is_alpaca_evals():
    assert not stats.is_extreme_change(0.50, 0.60)   # +10 exactly is allowed
    assert stats.is_extreme_change(0.50, 0.63)       # > 62.5
    assert stats.is_extreme_change(0.80, 0.55)       # < min(80 - 80/4, 80 - 10) = 60
    assert not stats.is_extreme_change(0.80, 0.65)   # 15 points down but within a quarter
    assert not stats.is_extreme_change(0.20, 0.12)   # 8 points down: within 10


def test_bradley_terry_recovers_a_known_ordering():
    # a beats b 75% of the time, b beats c 75%, a beats c 90%; baseline c
    battles = ([("a", "b", 1)] * 75 + [("a", "b", 0)] * 25 + [("b", "c", 1)] * 75 + [("b", "c", 0)] * 25
               + [("a", "c", 1)] * 90 + [("a", "c", 0)] * 10)
    ratings = stats.bradley_terry(battles, baseline="c")
    assert ratings["c"] == pytest.approx(1000.0)
    assert ratings["a"] > ratings["b"] > ratings["c"]
    # b vs c alone would give 400*log10(3) = 190.8; the joint fit stays near it
    assert 150 < ratings["b"] - 1000 < 230
    assert stats.bt_win_probability(ratings["b"], ratings["c"]) == pytest.approx(0.75, abs=0.05)


def test_bradley_terry_ties_count_half_and_intervals_bracket():
    battles = [[("m", "base", 1.0)], [("m", "base", 0.5)], [("m", "base", 0.5)], [("m", "base", 0.0)]] * 10
    board = stats.bradley_terry_intervals(battles, "base", n_resamples=200, seed=0)
    assert board["m"]["rating"] == pytest.approx(1000.0, abs=0.5)  # as many wins as losses: equal strength
    assert board["m"]["low"] < 1000 < board["m"]["high"]
    assert board["base"]["rating"] == pytest.approx(1000.0)
    assert board["m"]["win_rate_vs_baseline"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="baseline"):
        stats.bradley_terry([("a", "b", 1)], baseline="zzz")
