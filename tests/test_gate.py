"""The quality gate: rules as data, each default rule firing alone, exit codes, located errors."""

import json

import pytest
import yaml

from prefloop.cli import main
from prefloop.errors import ConfigError
from prefloop.evaluate.results import model_entry, new_results, write_results
from prefloop.registry.gate import evaluate_gate, format_table
from prefloop.registry.rules import load_rules

# A candidate that clearly beats its champion on good evidence, and the champion's own scores.
GOOD = {"win_rate": 0.66, "win_rate_ci_low": 0.58, "win_rate_ci_high": 0.74, "raw_win_rate": 0.65, "lc_win_rate": 0.62,
        "n_prompts": 200, "judge_consistency": 0.85, "failed_judgment_rate": 0.01, "pref_accuracy": 0.70,
        "mt_bench/score": 6.1, "alpaca_eval/lc_win_rate": 0.21, "truthfulqa_mc/mc1": 0.30, "truthfulqa_mc/mc2": 0.45,
        "safety_mc/accuracy": 0.90}
BASE = {"pref_accuracy": 0.71, "mt_bench/score": 6.2, "alpaca_eval/lc_win_rate": 0.22, "truthfulqa_mc/mc1": 0.31,
        "truthfulqa_mc/mc2": 0.46, "safety_mc/accuracy": 0.90}

# (rule, metric changes that break only that rule, expected verdict)
ALONE = [
    ("beats_champion", {"win_rate_ci_low": 0.49}, "fail"),
    ("preference_accuracy", {"pref_accuracy": 0.68}, "fail"),
    ("mt_bench", {"mt_bench/score": 5.9}, "fail"),
    ("alpaca_eval", {"alpaca_eval/lc_win_rate": 0.19}, "fail"),
    ("truthfulqa_mc1", {"truthfulqa_mc/mc1": 0.28}, "fail"),
    ("truthfulqa_mc2", {"truthfulqa_mc/mc2": 0.43}, "fail"),
    ("safety", {"safety_mc/accuracy": 0.899}, "fail"),
    ("enough_prompts", {"n_prompts": 49}, "refused"),
    ("judge_position_consistency", {"judge_consistency": 0.55}, "refused"),
    ("unparseable_judgments", {"failed_judgment_rate": 0.06}, "refused"),
    ("length_hacking", {"lc_win_rate": 0.53}, "refused"),
]


def test_default_rules_pass_on_good_evidence():
    result = evaluate_gate(load_rules(), GOOD, BASE)
    assert result.verdict == "pass" and result.exit_code == 0
    assert {r.rule: r.result for r in result.rows} == {r.name: "pass" for r in load_rules()}


@pytest.mark.parametrize("rule,change,verdict", ALONE, ids=[a[0] for a in ALONE])
def test_each_rule_fires_alone(rule, change, verdict):
    result = evaluate_gate(load_rules(), {**GOOD, **change}, BASE)
    assert result.verdict == verdict and result.exit_code == 1
    assert [r.rule for r in result.rows if r.result == "fail"] == [rule]
    assert rule in result.reason


def test_every_default_rule_has_a_case_here():
    assert {r.name for r in load_rules()} - {a[0] for a in ALONE} == {"win_rate_target"}


def test_many_ties_are_not_length_hacking():
    """Equal lengths and many ties: lc_win_rate ~ win_rate (ties = 1/2) while raw_win_rate (ties = 0) is far below;
    the length rule compared LC with the raw rate and refused every tie-heavy run."""
    ties = {**GOOD, "win_rate": 0.66, "raw_win_rate": 0.40, "lc_win_rate": 0.65}
    result = evaluate_gate(load_rules(), ties, BASE)
    assert result.verdict == "pass", result.reason


def test_target_is_a_warning_not_a_failure():
    result = evaluate_gate(load_rules(), {**GOOD, "win_rate": 0.59, "raw_win_rate": 0.59, "lc_win_rate": 0.58}, BASE)
    assert result.verdict == "pass"
    assert [(r.rule, r.result) for r in result.rows if r.result != "pass"] == [("win_rate_target", "warn")]


def test_missing_metrics_skip_unless_required(tmp_path):
    prefs_only = {"pref_accuracy": 0.72}
    result = evaluate_gate(load_rules(), prefs_only, BASE)
    rows = {r.rule: r.result for r in result.rows}
    assert rows["beats_champion"] == "fail" and rows["preference_accuracy"] == "pass" and rows["mt_bench"] == "skip"
    assert result.verdict == "fail"
    # no measured metric at all: the gate refuses instead of passing on nothing
    rules_file = _write_rules_list(tmp_path, [{"metric": "pref_accuracy", "vs_baseline": "higher_is_better"}])
    assert evaluate_gate(load_rules(rules_file), {}, BASE).verdict == "refused"


def test_glob_rule_checks_every_matching_metric(tmp_path):
    path = _write_rules_list(tmp_path, [{"name": "safety_categories", "metric": "safety_mc/category/*",
                                  "vs_baseline": "higher_is_better", "tolerance": 0}])
    cand = {"safety_mc/category/violence": 0.9, "safety_mc/category/privacy": 0.7}
    base = {"safety_mc/category/violence": 0.9, "safety_mc/category/privacy": 0.8}
    result = evaluate_gate(load_rules(path), cand, base)
    assert [(r.metric, r.result) for r in result.rows] == [("safety_mc/category/privacy", "fail"),
                                                          ("safety_mc/category/violence", "pass")]


def _write_rules_list(tmp_path, rules):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"rules": rules}, sort_keys=False))
    return path


@pytest.mark.parametrize("text,message", [
    ("rules:\n  - metric: win_rate\n    at_least: 0.5\n  - metric: win_rate_ci_low\n    abve: 0.5\n",
     r"rules.yaml:4: unknown key 'abve' \(did you mean 'above'\?\)"),
    ("rules:\n  - metric: win_rate_ci_low\n    above: 1.0\n", r"rules.yaml:2: above: 1.0 can never hold for win_rate_ci_low"),
    ("rules:\n  - metric: n_prompts\n    at_most: -1\n", r"rules.yaml:2: at_most: -1.0 can never hold"),
    ("rules:\n  - metric: win_rate\n    at_most: 1\n", r"always holds"),
    ("rules:\n  - metric: winrate\n    above: 0.5\n", r"metric 'winrate' is not a prefloop eval metric \(did you mean 'win_rate'\?\)"),
    ("rules:\n  - metric: win_rate\n    above: 0.5\n    above: 0.6\n", r"rules.yaml:2: key 'above' is given twice"),
    ("rules:\n  - metric: win_rate\n    tolerance: 0.1\n", r"tolerance applies only with vs_baseline"),
    ("rules:\n  - metric: pref_accuracy\n    vs_baseline: higher_is_better\n    tolerance: -0.1\n", r"tolerance: -0.1"),
    ("rules:\n  - metric: win_rate\n    above: 0.5\n    below: 0.9\n", r"not above and below"),
    ("rules:\n  - metric: win_rate\n", r"tests nothing"),
    ("rules:\n  - metric: win_rate\n    above: 0.5\n  - metric: win_rate\n    above: 0.6\n", r"rules.yaml:4: rule name 'win_rate' is already used at line 2"),
    ("rule:\n  - metric: win_rate\n", r"unknown top-level key\(s\): rule"),
    ("rules:\n  - metric: lc_win_rate\n    gap_to: raw_win_rate\n    at_least: 0.1\n", r"give at_most: or below:"),
])
def test_bad_rules_are_located_errors(tmp_path, text, message):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_rules(path)


def _results(tmp_path, name, kind, metrics, **models):
    entries = {role: model_entry(path=str(p)) for role, p in models.items()}
    return str(write_results(tmp_path / name, new_results(kind, models=entries, metrics=metrics)))


def test_gate_command_exit_codes_and_table(tmp_path, capsys):
    winrate = {k: GOOD[k] for k in ("win_rate", "win_rate_ci_low", "raw_win_rate", "lc_win_rate", "n_prompts",
                                    "judge_consistency", "failed_judgment_rate")}
    cand = _results(tmp_path, "cand", "winrate", winrate, after=tmp_path / "new", before=tmp_path / "old")
    cand_prefs = _results(tmp_path, "cand_prefs", "prefs", {"pref_accuracy": 0.70}, model=tmp_path / "new")
    base = _results(tmp_path, "base", "prefs", {"pref_accuracy": 0.71}, model=tmp_path / "old")
    assert main(["gate", "--candidate", cand, "--candidate", cand_prefs, "--baseline", base]) == 0
    out = capsys.readouterr().out
    assert "beats_champion" in out and "verdict: PASS" in out and "(baseline 0.71 - 0.02)" in out
    worse = _results(tmp_path, "worse", "prefs", {"pref_accuracy": 0.60}, model=tmp_path / "new")
    assert main(["gate", "--candidate", cand, "--candidate", worse, "--baseline", base, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "fail" and report["reason"] == "failed: preference_accuracy"
    # bad input: exit 2 with the file named
    (tmp_path / "broken.json").write_text("{")
    assert main(["gate", "--candidate", str(tmp_path / "broken.json")]) == 2
    assert "broken.json:1: not valid JSON" in capsys.readouterr().err
    # the win rate was measured against another model than the baseline describes
    other = _results(tmp_path, "other", "prefs", {"pref_accuracy": 0.71}, model=tmp_path / "elsewhere")
    assert main(["gate", "--candidate", cand, "--baseline", other]) == 2
    assert "the win rate was measured against" in capsys.readouterr().err
    # two files disagreeing on one metric
    dup = _results(tmp_path, "dup", "prefs", {"pref_accuracy": 0.5}, model=tmp_path / "new")
    assert main(["gate", "--candidate", cand_prefs, "--candidate", dup]) == 2
    assert "pref_accuracy" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Threshold edges, broken measurements and exit codes (MLflow's MetricThreshold / TFMA semantics).

@pytest.mark.parametrize("op,threshold,value,passes", [
    ("above", 0.5, 0.5, False), ("above", 0.5, 0.5000001, True),
    ("at_least", 0.6, 0.6, True), ("at_least", 0.5, 0.7 - 0.2, True),  # 0.7 - 0.2 == 0.49999999999999994
    ("at_least", 0.6, 0.5999, False), ("below", 0.1, 0.1, False), ("at_most", 0.05, 0.05, True),
    ("at_most", 0.6, 0.9 - 0.3, True),  # 0.9 - 0.3 == 0.6000000000000001
    ("above", 0.6, 0.9 - 0.3, False),  # the same number, not above it
    ("below", 0.5, 0.7 - 0.2, False),
])
def test_thresholds_at_equality(tmp_path, op, threshold, value, passes):
    rules = load_rules(_write_rules_list(tmp_path, [{"metric": "win_rate", op: threshold}]))
    assert evaluate_gate(rules, {"win_rate": value}).verdict == ("pass" if passes else "fail")


def test_a_drop_of_exactly_the_tolerance_passes_whatever_the_float_noise(tmp_path):
    rules = load_rules(_write_rules_list(tmp_path, [{"metric": "pref_accuracy", "vs_baseline": "higher_is_better",
                                                     "tolerance": 0.1}]))
    assert evaluate_gate(rules, {"pref_accuracy": 0.7}, {"pref_accuracy": 0.8}).verdict == "pass"  # 0.8-0.1=0.70..01
    assert evaluate_gate(rules, {"pref_accuracy": 0.6999}, {"pref_accuracy": 0.8}).verdict == "fail"
    lower = load_rules(_write_rules_list(tmp_path, [{"metric": "mt_bench/n_excluded", "vs_baseline": "lower_is_better",
                                                     "tolerance": 0.2}]))
    assert evaluate_gate(lower, {"mt_bench/n_excluded": 0.3}, {"mt_bench/n_excluded": 0.1}).verdict == "pass"


def _broken_measurement(tmp_path, where: str, bad, severity: str):
    """A baseline rule and a gap rule of `severity`, and (rules, candidate, baseline) with a broken value `bad`
    put `where` (the candidate's metric, the baseline's, or the metric a gap is taken to); the gate passes on
    the unbroken values."""
    extra = {"severity": severity} if severity != "fail" else {}
    rules = load_rules(_write_rules_list(tmp_path, [
        {"metric": "win_rate", "at_least": 0.5},
        {"metric": "pref_accuracy", "vs_baseline": "higher_is_better", "tolerance": 0.02, **extra},
        {"metric": "lc_win_rate", "gap_to": "raw_win_rate", "at_most": 0.1, **extra}]))
    cand = {"win_rate": 0.7, "pref_accuracy": 0.7, "lc_win_rate": 0.6, "raw_win_rate": 0.62}
    base = {"pref_accuracy": 0.7}
    assert evaluate_gate(rules, cand, base).verdict == "pass"
    {"candidate": cand, "baseline": base, "gap_to": cand}[where][
        "raw_win_rate" if where == "gap_to" else "pref_accuracy"] = bad
    return rules, cand, base


@pytest.mark.parametrize("where", ["candidate", "baseline", "gap_to"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.7"])
def test_a_broken_measurement_fails_closed_even_when_the_rule_is_not_required(tmp_path, where, bad):
    result = evaluate_gate(*_broken_measurement(tmp_path, where, bad, "fail"))
    if where == "baseline":  # the champion's measurement is broken, not the candidate: the gate refuses
        assert result.verdict == "refused" and result.exit_code == 1 and "re-measure the champion" in result.reason
        assert not [r for r in result.rows if r.result == "fail"]
        return
    assert result.verdict == "fail" and result.exit_code == 1
    failed = [r for r in result.rows if r.result == "fail"]
    assert len(failed) == 1 and "fails closed" in failed[0].why and where.replace("gap_to", "candidate") in failed[0].why


@pytest.mark.parametrize("where", ["candidate", "baseline", "gap_to"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.7"])
def test_a_broken_measurement_on_a_warn_rule_warns_and_never_fails_the_gate(tmp_path, where, bad):
    result = evaluate_gate(*_broken_measurement(tmp_path, where, bad, "warn"))
    assert result.verdict == "pass" and result.exit_code == 0
    warned = [r for r in result.rows if r.result == "warn"]
    assert len(warned) == 1 and where.replace("gap_to", "candidate") in warned[0].why and "warn rule" in warned[0].why


def test_a_nan_in_the_champions_recorded_metrics_refuses_instead_of_failing_every_candidate(tmp_path):
    rules = load_rules(_write_rules_list(tmp_path, [
        {"metric": "win_rate", "at_least": 0.5},
        {"metric": "pref_accuracy", "vs_baseline": "higher_is_better", "tolerance": 0.02}]))
    result = evaluate_gate(rules, {"win_rate": 0.9, "pref_accuracy": 0.99}, {"pref_accuracy": float("nan")})
    assert result.verdict == "refused" and result.exit_code == 1
    assert "re-measure the champion" in result.reason and "REFUSED" in format_table(result)
    both = evaluate_gate(rules, {"win_rate": 0.1, "pref_accuracy": 0.99}, {"pref_accuracy": float("nan")})
    assert both.verdict == "refused" and "also failed: win_rate" in both.reason


@pytest.mark.parametrize("rule,cand,base,verdict", [
    ({"metric": "n", "at_least": 1e9}, 1e9 - 1, None, "fail"),
    ({"metric": "n", "at_least": 1e9}, 1e9, None, "pass"),
    ({"metric": "n", "at_most": 1e9}, 1e9 + 1, None, "fail"),
    ({"metric": "n", "above": 1e9}, 1e9 + 1, None, "pass"),
    ({"metric": "n", "at_least": 0.7}, 0.6999999994, None, "fail"),
    ({"metric": "ppl", "vs_baseline": "lower_is_better", "tolerance": 0}, 20000.00001, 20000.0, "fail"),
    ({"metric": "ppl", "vs_baseline": "lower_is_better", "tolerance": 0}, 20000.0, 20000.0, "pass"),
    ({"metric": "ppl", "vs_baseline": "lower_is_better", "tolerance": 0.5}, 20000.5, 20000.0, "pass"),
    ({"metric": "ppl", "vs_baseline": "lower_is_better", "tolerance": 0.5}, 20000.51, 20000.0, "fail"),
    ({"metric": "n", "vs_baseline": "higher_is_better", "tolerance": 1.0}, 1e12 - 2, 1e12, "fail"),
    ({"metric": "n", "vs_baseline": "higher_is_better", "tolerance": 0.1}, 1e6 - 0.1, 1e6, "pass"),
])
def test_float_noise_allowance_is_a_few_ulps_not_a_relative_tolerance(tmp_path, rule, cand, base, verdict):
    rules = load_rules(_write_rules_list(tmp_path, [{**rule, "custom_metric": True}]))
    baseline = {rule["metric"]: base} if base is not None else None
    assert evaluate_gate(rules, {rule["metric"]: cand}, baseline).verdict == verdict


def test_a_gap_at_large_magnitude_is_not_hidden_by_the_noise_allowance(tmp_path):
    rules = load_rules(_write_rules_list(tmp_path, [{"metric": "a", "gap_to": "b", "at_most": 0.0,
                                                     "custom_metric": True}]))
    assert evaluate_gate(rules, {"a": 1e9, "b": 1e9 - 1}).verdict == "fail"
    assert evaluate_gate(rules, {"a": 1e9, "b": 1e9}).verdict == "pass"


def test_a_win_rate_interval_straddling_a_coin_flip_fails_the_default_gate(tmp_path):
    from test_gate import BASE, GOOD  # noqa: F401 - the module's own constants

    straddles = {**GOOD, "win_rate": 0.61, "win_rate_ci_low": 0.47, "win_rate_ci_high": 0.74}
    result = evaluate_gate(load_rules(), straddles, BASE)
    assert result.verdict == "fail" and [r.rule for r in result.rows if r.result == "fail"] == ["beats_champion"]
    at_half = evaluate_gate(load_rules(), {**GOOD, "win_rate_ci_low": 0.5}, BASE)
    assert at_half.verdict == "fail"  # the whole interval must lie above 0.5; touching it is not enough
    missing = {k: v for k, v in GOOD.items() if k != "win_rate_ci_low"}
    assert evaluate_gate(load_rules(), missing, BASE).verdict == "fail"  # required: absent fails, never skips


def test_gate_exit_codes_pass_fail_and_bad_input(tmp_path, capsys):
    import os

    winrate = {"win_rate": 0.66, "win_rate_ci_low": 0.45, "n_prompts": 200}
    rules = _write_rules_list(tmp_path, [{"metric": "win_rate_ci_low", "above": 0.5, "required": True}])
    straddling = _results(tmp_path, "straddling", "winrate", winrate, after=tmp_path / "new", before=tmp_path / "old")
    assert main(["gate", "--candidate", straddling, "--rules", str(rules)]) == 1
    clear = _results(tmp_path, "clear", "winrate", {**winrate, "win_rate_ci_low": 0.51}, after=tmp_path / "new",
                     before=tmp_path / "old")
    assert main(["gate", "--candidate", clear, "--rules", str(rules)]) == 0
    nan = tmp_path / "nan.json"  # JSON has no NaN: a file that holds one is bad input
    nan.write_text(open(clear).read().replace('"win_rate_ci_low": 0.51', '"win_rate_ci_low": NaN'))
    assert main(["gate", "--candidate", str(nan), "--rules", str(rules)]) == 2
    assert "not a finite number" in capsys.readouterr().err
    bad_rule = _write_rules_list(tmp_path / "", [{"metric": "win_rate", "above": float("nan")}])
    assert main(["gate", "--candidate", clear, "--rules", str(bad_rule)]) == 2
    assert "not a finite number" in capsys.readouterr().err
    rules = _write_rules_list(tmp_path, [{"metric": "win_rate_ci_low", "above": 0.5, "required": True}])
    assert main(["gate", "--candidate", str(tmp_path / "nowhere"), "--rules", str(rules)]) == 2
    if os.geteuid() != 0:  # root reads anything
        os.chmod(clear, 0)
        assert main(["gate", "--candidate", clear, "--rules", str(rules)]) == 2


def test_a_vs_baseline_rule_without_a_baseline_is_bad_input_naming_the_rule(tmp_path, capsys):
    prefs = _results(tmp_path, "prefs1", "prefs", {"pref_accuracy": 0.70}, model=tmp_path / "new")
    mixed = tmp_path / "gate_mix.yaml"
    mixed.write_text("rules:\n  - metric: pref_accuracy\n    at_least: 0.5\n"
                     "  - name: no_worse\n    metric: pref_accuracy\n    vs_baseline: higher_is_better\n"
                     "    tolerance: 0.02\n")
    for rules in (mixed, _write_rules_list(tmp_path, [{"metric": "pref_accuracy", "vs_baseline": "higher_is_better",
                                                       "tolerance": 0.02}])):
        assert main(["gate", "--candidate", prefs, "--rules", str(rules)]) == 2
        captured = capsys.readouterr()
        assert "PASS" not in captured.out and "REFUSED" not in captured.out
        line = 4 if rules == mixed else 2
        assert f"{rules}:{line}: rule" in captured.err and "--baseline" in captured.err and "--registry" in captured.err
    # the built-in rules compare with the champion too
    assert main(["gate", "--candidate", prefs]) == 2
    assert "default_gate.yaml" in capsys.readouterr().err
    # with a baseline the same rules are judged
    base = _results(tmp_path, "base", "prefs", {"pref_accuracy": 0.71}, model=tmp_path / "old")
    assert main(["gate", "--candidate", prefs, "--baseline", base, "--rules", str(mixed)]) == 0
    assert "verdict: PASS: every rule passed" in capsys.readouterr().out


def test_a_verdict_never_says_every_rule_passed_when_rules_were_skipped(tmp_path, capsys):
    rules = load_rules(_write_rules_list(tmp_path, [
        {"metric": "pref_accuracy", "at_least": 0.5},
        {"name": "no_worse", "metric": "pref_accuracy", "vs_baseline": "higher_is_better", "tolerance": 0.02},
        {"metric": "mt_bench/score", "at_least": 5}]))
    result = evaluate_gate(rules, {"pref_accuracy": 0.7}, {"mt_bench/score": 6.0})
    assert result.verdict == "pass" and "every rule" not in result.reason
    assert result.reason.startswith("1 passed, 2 skipped (no_worse: the baseline has no pref_accuracy")
    assert "mt_bench/score not measured" in result.reason
    # a baseline file that lacks the metric: the CLI's verdict line says so too
    prefs = _results(tmp_path, "prefs1", "prefs", {"pref_accuracy": 0.70}, model=tmp_path / "new")
    base = _results(tmp_path, "base", "prefs", {"pref_accuracy": None}, model=tmp_path / "old")
    only_base = _write_rules_list(tmp_path, [{"metric": "pref_accuracy", "at_least": 0.5},
                                             {"name": "no_worse", "metric": "pref_accuracy",
                                              "vs_baseline": "higher_is_better", "tolerance": 0.02}])
    assert main(["gate", "--candidate", prefs, "--baseline", base, "--rules", str(only_base)]) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS: 1 passed, 1 skipped (no_worse: the baseline has no pref_accuracy" in out
    assert "every rule passed" not in out
    # nothing evaluable: refused, saying why each rule was skipped (not "the results hold none")
    alone = evaluate_gate(rules[1:2], {"pref_accuracy": 0.7}, {})
    assert alone.verdict == "refused" and "no_worse (the baseline has no pref_accuracy" in alone.reason


def test_gate_on_a_store_that_does_not_exist_creates_no_file(tmp_path, capsys):
    prefs = _results(tmp_path, "prefs1", "prefs", {"pref_accuracy": 0.70}, model=tmp_path / "new")
    db = tmp_path / "empty_gate.sqlite"
    assert main(["gate", "--candidate", prefs, "--registry", "foo", "--version", "v1", "--db", str(db)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not db.exists()
    for argv in (["models", "list"], ["models", "show", "foo:v1"], ["models", "promote", "foo:v1"],
                 ["models", "rollback", "--name", "foo"], ["models", "path", "foo:v1"]):
        assert main([*argv, "--db", str(db)]) == 2, argv
        assert "no store at" in capsys.readouterr().err and not db.exists(), argv
