"""prefloop's length-controlled win rate against alpaca_eval's own implementation, on the same annotations.

Run in the bench environment (bash bench/setup.sh; alpaca-eval is installed there, never in prefloop):

    bench/.venv/bin/python bench/bench_lc_winrate.py [--results OUT/results.json ...]

For each annotation set it prints prefloop's LC win rate (`prefloop.stats.lc_win_rate`) and alpaca_eval's
(`alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate`) and fails (exit 1) when they differ by more
than 0.5 points. alpaca_eval's GLM is run with the formula of the variant that needs no hub files,
`np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1` (the length term and a constant; no
instruction difficulty, no regularization towards the gamed baselines), 5-fold cross-validation as in
`length_controlled_v1`. Its featurizer downloads `df_gamed.csv` from a hub before looking at the formula;
offline, the download is redirected to a local stand-in file whose contents that formula never reads (the
instruction-difficulty column it fills is not in the formula). Everything else is alpaca_eval's code.

Annotation sets: synthetic sets of AlpacaEval's size (805 prompts) — a judge that only likes length, one that
only likes quality, a mixture with ties, soft (probabilistic) preferences, a small set — and any
`prefloop eval winrate` results.json given with --results (its per-prompt outcomes and lengths).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from prefloop import stats

TOLERANCE_POINTS = 0.5


def synthetic_sets(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (preference of the model in [0, 1], model lengths, baseline lengths) in characters."""
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
    sets["soft preferences, terse model"] = (np.clip(1 / (1 + np.exp(-(0.8 + 1.5 * np.tanh(d)))) + rng.normal(0, 0.1, n),
                                             0, 1), m, b)
    m, b = lengths(60, 150)
    sets["60 prompts, mixed"] = ((rng.random(60) < 0.6).astype(float), m, b)
    return sets


def from_results(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    results = json.loads(Path(path).read_text())
    rows = [r for r in results["details"]["per_prompt"] if r["outcome"] is not None]
    prefs = np.array([r.get("preference", stats.OUTCOME_SCORES[r["outcome"]]) for r in rows], dtype=float)
    return prefs, np.array([r["after_chars"] for r in rows]), np.array([r["before_chars"] for r in rows])


def alpaca_eval_lc(prefs: np.ndarray, model_len: np.ndarray, base_len: np.ndarray) -> tuple[float, float]:
    """(LC win rate, win rate) in percent from alpaca_eval's own get_length_controlled_winrate."""
    from unittest import mock

    from alpaca_eval.metrics import glm_winrate

    n = len(prefs)
    # alpaca_eval's encoding: 1 = baseline (output_1) wins, 2 = model (output_2) wins, 1.5 = tie; soft in between
    df = pd.DataFrame({"preference": 1 + prefs, "output_1": ["x" * int(v) for v in base_len],
                       "output_2": ["x" * int(v) for v in model_len], "generator_1": "baseline",
                       "generator_2": "model", "index": np.arange(n), "annotator": "bench"})
    with tempfile.TemporaryDirectory() as tmp:
        stand_in = Path(tmp) / "df_gamed.csv"
        pd.DataFrame({"model": ["none"] * n, "index": np.arange(n), "instruction_difficulty": np.zeros(n),
                      "not_gamed_baseline": [False] * n, "preference": np.full(n, 0.5),
                      "std_delta_len": np.zeros(n)}).to_csv(stand_in, index=False)
        glm_info = {"formula": "np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1",
                    "regularize_to_baseline_lambda": None, "kwargs": {"n_splits": 5}}
        with mock.patch.object(glm_winrate, "hf_hub_download", return_value=str(stand_in)), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metrics = glm_winrate.get_length_controlled_winrate(df, save_weights_dir=None, glm_info=glm_info,
                                                                is_warn_extreme_changes=False)
    return float(metrics["length_controlled_winrate"]), float(metrics["win_rate"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", nargs="*", default=[], help="prefloop eval winrate results.json files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    sets = synthetic_sets(args.seed)
    for path in args.results:
        sets[f"results {path}"] = from_results(path)
    print(f"{'annotations':42s} {'n':>5s} {'win rate':>9s} {'LC prefloop':>12s} {'LC alpaca_eval':>15s} {'diff':>7s}")
    worst = 0.0
    for name, (prefs, model_len, base_len) in sets.items():
        ours = stats.lc_win_rate(prefs, model_len, base_len)
        theirs, raw = alpaca_eval_lc(prefs, model_len, base_len)
        diff = 100 * ours.lc_win_rate - theirs
        worst = max(worst, abs(diff))
        print(f"{name[:42]:42s} {len(prefs):5d} {raw:8.2f}% {100 * ours.lc_win_rate:11.2f}% {theirs:14.2f}% "
              f"{diff:+7.3f}  (prefloop SE {100 * ours.lc_win_rate_se:.2f})")
    ok = worst <= TOLERANCE_POINTS
    print(f"largest difference {worst:.3f} points: {'within' if ok else 'OUTSIDE'} the {TOLERANCE_POINTS}-point tolerance")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
