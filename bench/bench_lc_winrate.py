"""prefloop's win rate and length-controlled win rate against alpaca_eval's own code, on the same annotations.

Run in the bench environment (bash bench/setup.sh; alpaca-eval is installed there, never in prefloop):

    PYTHONPATH=src bench/.venv/bin/python bench/bench_lc_winrate.py [--results OUT/results.json ...]
                                                                    [--annotations annotations.json ...]

For each annotation set it prints prefloop's numbers (`prefloop.stats.win_rate`, `prefloop.stats.lc_win_rate`)
next to alpaca_eval's (`alpaca_eval.metrics.winrate.get_winrate`,
`alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate`) and fails (exit 1) when a number both define
differs: win rate, its standard error, the discrete win rate and the counts exactly (1e-9), the LC win rate by
more than 0.5 points, the fitted weights by more than 0.05.

alpaca_eval's GLM is run with its `length_controlled_minimal` formula, `np.tanh(std_delta_len) +
not_gamed_baseline.astype(float) - 1` (the length term and a constant; no instruction difficulty, no
regularization towards the gamed baselines: both need its hub file), 5-fold cross-validation as in
`length_controlled_v1`. Its featurizer downloads `df_gamed.csv` from a hub before looking at the formula;
offline, the download is redirected to a local stand-in whose contents that formula never reads. alpaca_eval
0.6.6 imports `pkg_resources`, which setuptools >= 81 no longer ships: a two-function stand-in (version parsing
and lookup, all alpaca_eval uses it for) is put in its place when it is missing. Everything else is alpaca_eval's
code.

Two numbers are defined differently on purpose and are printed, not compared with alpaca_eval's:
- the LC standard error: alpaca_eval's `lc_standard_error` is the standard error of the mean of its per-instruction
  predictions at Δlen = 0 — with the formula without instruction difficulty every prediction is the same, so it is
  0 whatever the data; prefloop's is the delta-method standard error of the fitted LC win rate (see
  `prefloop.stats.lc_win_rate`);
- degenerate sets, where alpaca_eval fails or returns 50%: equal lengths everywhere (0/0 in its featurizer),
  fewer than 5 prompts (5 folds), all losses (its liblinear fit sees one class with weight and returns 50%,
  while all wins gives 100%), the same length difference everywhere (std 0: alpaca_eval's feature becomes
  tanh(±inf) = ±1, a copy of the constant, and L1 splits the weight between the two; prefloop's length
  term is 0); and all wins, where both say 100% but the constant's weight is not identified (it grows
  without bound; each solver stops somewhere above 8). prefloop's answers are printed with alpaca_eval's, or
  its error. Each of these sets is checked against what prefloop must do there instead (`DELIBERATE`); every
  other set, the other degenerate ones included, is compared number by number.

Annotation sets: synthetic sets of AlpacaEval's size (805 prompts) — a judge that only likes length, one that
only likes quality, a mixture with ties, soft (probabilistic) preferences, soft preferences with missing
annotations and alpaca_eval's legacy 0 = tie —, seeded random sets of other sizes, the degenerate sets above,
any `prefloop eval winrate` results.json given with --results (its per-prompt preferences and lengths) and any
alpaca_eval annotations.json given with --annotations (its `preference`, `output_1`, `output_2`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from prefloop import stats

LC_TOLERANCE_POINTS = 0.5
WEIGHT_TOLERANCE = 0.05


def _lc_is_raw(ours: dict, theirs: dict) -> bool:
    """All losses: alpaca_eval's fit sees one class and answers 50%; prefloop's LC is the raw rate, 0%."""
    return theirs.get("lc") is not None and abs(theirs["lc"] - 0.5) < 1e-9 and abs(100 * ours["lc"]) <= LC_TOLERANCE_POINTS


def _no_length_term(ours: dict, theirs: dict) -> bool:
    """A constant Δlen (std 0, or all equal): prefloop's length term is 0 and its LC is the constant's fit;
    alpaca_eval fails (0/0) or splits the weight between tanh(±inf) = ±1 and the constant."""
    return ours["w_len"] == 0.0 and ours["lc"] is not None


def _saturated(ours: dict, theirs: dict) -> bool:
    """All wins: w_0 is not identified (the likelihood rises with it for ever, it stops where the solver and the
    penalty leave it, 11 to 13); the LC (100%) and w_len must still agree."""
    return (theirs.get("lc") is not None and abs(100 * (ours["lc"] - theirs["lc"])) <= LC_TOLERANCE_POINTS
            and abs(ours["w_len"] - theirs["w_len"]) <= WEIGHT_TOLERANCE and min(ours["w_0"], theirs["w_0"]) > 8)


def _fewer_than_5(ours: dict, theirs: dict) -> bool:
    """Fewer than 5 prompts: alpaca_eval's 5-fold cross-validation fails; prefloop uses as many folds as prompts."""
    return "lc" not in theirs and ours["lc"] is not None


# The degenerate sets alpaca_eval handles differently (module docstring), with what prefloop must do there
# instead; every other set, degenerate or not, is compared number by number.
DELIBERATE = {"degenerate: all wins": _saturated, "degenerate: all losses": _lc_is_raw, "degenerate: equal lengths": _no_length_term,
              "degenerate: same length difference": _no_length_term, "degenerate: 3 prompts": _fewer_than_5}
EXACT = 1e-9
MINIMAL_FORMULA = "np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1"


def _pkg_resources_stand_in() -> None:
    """alpaca_eval 0.6.6 imports pkg_resources (parse_version, get_distribution), gone from setuptools >= 81."""
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return
    from importlib import metadata

    from packaging.version import Version

    module = types.ModuleType("pkg_resources")
    module.parse_version = Version
    module.get_distribution = lambda name: types.SimpleNamespace(version=metadata.version(name))
    sys.modules["pkg_resources"] = module


# ------------------------------------------------------------------------------------------ annotation sets

def synthetic_sets(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (preference of the model in [0, 1] or NaN = missing, model lengths, baseline lengths) in characters."""
    rng = np.random.default_rng(seed)
    sets = {}
    n = 805

    def lengths(n, pad):
        base = rng.integers(200, 2000, n)
        return base + rng.normal(pad, 300, n).astype(int).clip(-150, None), base

    m, b = lengths(n, 400)
    d = (m - b) / np.std(m - b, ddof=1)
    sets["length-only judge, padded model"] = ((rng.random(n) < 1 / (1 + np.exp(-2.5 * np.tanh(d)))).astype(float), m, b)
    m, b = lengths(n, 0)
    sets["quality-only judge (65%)"] = ((rng.random(n) < 0.65).astype(float), m, b)
    m, b = lengths(n, 250)
    d = (m - b) / np.std(m - b, ddof=1)
    p = 1 / (1 + np.exp(-(0.4 + 1.2 * np.tanh(d))))
    u = rng.random(n)
    prefs = np.where(u < 0.15, 0.5, (rng.random(n) < p).astype(float))  # 15% ties
    sets["quality + length with ties"] = (prefs, m, b)
    m, b = lengths(n, -200)
    d = (m - b) / np.std(m - b, ddof=1)
    soft = np.clip(1 / (1 + np.exp(-(0.8 + 1.5 * np.tanh(d)))) + rng.normal(0, 0.1, n), 0, 1)
    sets["soft preferences, terse model"] = (soft, m, b)
    with_missing = soft.copy()
    with_missing[rng.random(n) < 0.05] = np.nan  # 5% failed annotations
    sets["soft, 5% annotations missing"] = (with_missing, m, b)
    m, b = lengths(60, 150)
    sets["60 prompts, mixed"] = ((rng.random(60) < 0.6).astype(float), m, b)
    for s in range(4):  # seeded random sets of other sizes, verdicts 1 / 0.5 / 0 and soft
        r = np.random.default_rng(1000 + s)
        k = int(r.integers(20, 400))
        m, b = r.integers(30, 3000, k), r.integers(30, 3000, k)
        sets[f"random seed {1000 + s}, n={k}"] = (r.choice([0.0, 0.5, 1.0], k, p=[0.3, 0.2, 0.5]), m, b)
        sets[f"random soft seed {1000 + s}, n={k}"] = (r.random(k), m, b)
    r = np.random.default_rng(seed + 7)
    m, b = r.integers(100, 900, 50), r.integers(100, 900, 50)
    sets["degenerate: all wins"] = (np.ones(50), m, b)
    sets["degenerate: all losses"] = (np.zeros(50), m, b)
    sets["degenerate: all ties"] = (np.full(50, 0.5), m, b)
    sets["degenerate: equal lengths"] = ((r.random(50) < 0.6).astype(float), b, b)
    sets["degenerate: same length difference"] = ((r.random(50) < 0.6).astype(float), b + 10, b)
    sets["degenerate: 5 prompts"] = (np.array([1, 0, 1, 0.5, 1.0]), np.array([10, 20, 30, 40, 50]),
                                     np.array([15, 5, 7, 9, 70]))
    sets["degenerate: 3 prompts"] = (np.array([1, 0, 1.0]), np.array([10, 20, 30]), np.array([15, 5, 7]))
    return sets


def from_results(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A `prefloop eval winrate` run's per-prompt preferences (NaN = no verdict) and answer lengths."""
    results = json.loads(Path(path).read_text())
    rows = results["details"]["per_prompt"]
    prefs = np.array([np.nan if r["outcome"] is None else r.get("preference", stats.OUTCOME_SCORES[r["outcome"]])
                      for r in rows], dtype=float)
    return prefs, np.array([r["after_chars"] for r in rows]), np.array([r["before_chars"] for r in rows])


def from_annotations(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """alpaca_eval's annotations.json: preference (1 baseline, 2 model, 1.5 or 0 tie), output_1 = baseline."""
    rows = json.loads(Path(path).read_text())
    prefs = np.array([np.nan if (p := stats.alpaca_eval_preference(r.get("preference"))) is None else p for r in rows])
    return prefs, np.array([len(r["output_2"]) for r in rows]), np.array([len(r["output_1"]) for r in rows])


# ------------------------------------------------------------------------------------------ the two sides

def alpaca_eval_metrics(prefs: np.ndarray, model_len: np.ndarray, base_len: np.ndarray) -> dict:
    """alpaca_eval's get_winrate and get_length_controlled_winrate (minimal formula) on one set, as fractions.

    "lc_error" holds the exception text when its GLM fails."""
    _pkg_resources_stand_in()
    from unittest import mock

    from alpaca_eval.metrics import glm_winrate
    from alpaca_eval.metrics.winrate import get_winrate

    n = len(prefs)
    # alpaca_eval's encoding: 1 = baseline (output_1) wins, 2 = model (output_2) wins, 1.5 = tie; NaN = missing
    df = pd.DataFrame({"preference": 1 + prefs, "output_1": ["x" * int(v) for v in base_len],
                       "output_2": ["x" * int(v) for v in model_len], "generator_1": "baseline",
                       "generator_2": "model", "index": np.arange(n), "annotator": "bench"})
    wr = get_winrate(df)
    out = {"win_rate": wr["win_rate"] / 100, "standard_error": wr["standard_error"] / 100,
           "discrete_win_rate": wr["discrete_win_rate"] / 100, "n_wins": int(wr["n_wins"]),
           "n_wins_base": int(wr["n_wins_base"]), "n_draws": int(wr["n_draws"]), "n_total": int(wr["n_total"])}
    with tempfile.TemporaryDirectory() as tmp:
        stand_in = Path(tmp) / "df_gamed.csv"
        pd.DataFrame({"model": ["none"] * n, "index": np.arange(n), "instruction_difficulty": np.zeros(n),
                      "not_gamed_baseline": [False] * n, "preference": np.full(n, 0.5),
                      "std_delta_len": np.zeros(n)}).to_csv(stand_in, index=False)
        glm_info = {"formula": MINIMAL_FORMULA, "regularize_to_baseline_lambda": None, "kwargs": {"n_splits": 5}}
        try:
            with mock.patch.object(glm_winrate, "hf_hub_download", return_value=str(stand_in)), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                metrics = glm_winrate.get_length_controlled_winrate(df, save_weights_dir=Path(tmp) / "weights",
                                                                    glm_info=glm_info, glm_name="minimal",
                                                                    is_warn_extreme_changes=False)
            weights = pd.read_csv(Path(tmp) / "weights" / "minimal" / "baseline_baseline.csv", index_col=0).loc["model"]
            out.update(lc=metrics["length_controlled_winrate"] / 100, lc_se=metrics["lc_standard_error"] / 100,
                       w_len=float(weights["np.tanh(std_delta_len)"]),
                       w_0=float(weights["not_gamed_baseline.astype(float)"]))
        except Exception as err:  # noqa: BLE001 - reported in the table
            out["lc_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:70]}"
    return out


def prefloop_metrics(prefs: np.ndarray, model_len: np.ndarray, base_len: np.ndarray) -> dict:
    """prefloop.stats on the same set (NaN = a missing annotation: counted, left out of the rates and the fit)."""
    wr = stats.win_rate([None if math.isnan(p) else float(p) for p in prefs])
    lc = stats.lc_win_rate(prefs, model_len, base_len)
    return {"win_rate": wr.win_rate, "standard_error": wr.standard_error, "discrete_win_rate": wr.discrete_win_rate,
            "n_wins": wr.wins, "n_wins_base": wr.losses, "n_draws": wr.ties, "n_total": wr.n, "n_missing": wr.n_missing,
            "lc": lc.lc_win_rate, "lc_se": lc.lc_win_rate_se, "w_len": lc.weights.get("tanh_std_delta_len"),
            "w_0": lc.weights.get("constant")}


def compare(name: str, prefs, model_len, base_len) -> tuple[list[str], list[str]]:
    """(table lines, problems) for one annotation set."""
    ours = prefloop_metrics(prefs, model_len, base_len)
    theirs = alpaca_eval_metrics(prefs, model_len, base_len)
    problems = []
    for key in ("win_rate", "standard_error", "discrete_win_rate", "n_wins", "n_wins_base", "n_draws", "n_total"):
        a, b = ours[key], theirs[key]
        if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
            if not (a is None and (b is None or math.isnan(b))):
                problems.append(f"{name}: {key} prefloop {a} vs alpaca_eval {b}")
        elif abs(a - b) > EXACT:
            problems.append(f"{name}: {key} prefloop {a} vs alpaca_eval {b}")
    deliberate = DELIBERATE.get(name)
    if deliberate is not None and not deliberate(ours, theirs):  # a documented difference is checked, not assumed
        problems.append(f"{name}: prefloop LC {ours['lc']}, w_len {ours['w_len']} is not what "
                        f"{deliberate.__name__} documents ({deliberate.__doc__.splitlines()[0]})")
    if "lc" in theirs:
        if abs(100 * (ours["lc"] - theirs["lc"])) > LC_TOLERANCE_POINTS and deliberate is None:
            problems.append(f"{name}: LC prefloop {ours['lc']:.4f} vs alpaca_eval {theirs['lc']:.4f}")
        for w in ("w_len", "w_0"):
            if abs(ours[w] - theirs[w]) > WEIGHT_TOLERANCE and deliberate is None:
                problems.append(f"{name}: weight {w} prefloop {ours[w]:.4f} vs alpaca_eval {theirs[w]:.4f}")
        lc_theirs = f"{100 * theirs['lc']:7.2f}% ±{100 * theirs['lc_se']:5.2f}"
        weights = f"{ours['w_len']:+.3f}/{theirs['w_len']:+.3f}"
        diff = f"{100 * (ours['lc'] - theirs['lc']):+7.3f}"
    else:
        if deliberate is None:
            problems.append(f"{name}: alpaca_eval failed ({theirs['lc_error']}) on a set it is not documented to fail on")
        lc_theirs, weights, diff = f"{theirs['lc_error'][:40]:>40s}", "", ""
    se = "   n/a" if ours["standard_error"] is None else f"{100 * ours['standard_error']:5.2f}"
    se_theirs = "   n/a" if math.isnan(theirs["standard_error"]) else f"{100 * theirs['standard_error']:5.2f}"
    lc_ours = "   n/a" if ours["lc"] is None else f"{100 * ours['lc']:7.2f}% ±{100 * ours['lc_se']:5.2f}"
    line = (f"{name[:36]:36s} {ours['n_total']:4d}/{theirs['n_total']:<4d} {100 * ours['win_rate']:6.2f}/"
            f"{100 * theirs['win_rate']:6.2f} {se}/{se_theirs} {100 * ours['discrete_win_rate']:6.2f}/"
            f"{100 * theirs['discrete_win_rate']:6.2f}  {lc_ours}  {lc_theirs}  {diff:>7s}  {weights}")
    return [line], problems


HEADER = (f"{'annotations':36s} {'n p/a':9s} {'win rate p/a':13s} {'SE p/a':11s} {'discrete p/a':13s}  "
          f"{'LC prefloop ± SE':17s}  {'LC alpaca_eval ± SE':17s}  {'diff':>7s}  w_len p/a")


def run(seed: int = 0, results: list[str] = (), annotations: list[str] = ()) -> tuple[list[str], list[str]]:
    logging.getLogger().setLevel(logging.ERROR)
    sets = synthetic_sets(seed)
    for path in results:
        sets[f"results {path}"] = from_results(path)
    for path in annotations:
        sets[f"annotations {path}"] = from_annotations(path)
    lines, problems = [HEADER], []
    for name, (prefs, model_len, base_len) in sets.items():
        got, bad = compare(name, np.asarray(prefs, dtype=float), np.asarray(model_len), np.asarray(base_len))
        lines += got
        problems += bad
    return lines, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", nargs="*", default=[], help="prefloop eval winrate results.json files")
    parser.add_argument("--annotations", nargs="*", default=[], help="alpaca_eval annotations.json files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    lines, problems = run(args.seed, args.results, args.annotations)
    print("\n".join(lines))
    print("(p = prefloop, a = alpaca_eval; rates in percent; alpaca_eval's LC SE is the SE of its per-instruction "
          "predictions, 0 without instruction difficulty)")
    for problem in problems:
        print(f"DIFFERENT: {problem}")
    print("all shared numbers agree" if not problems else f"{len(problems)} difference(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
