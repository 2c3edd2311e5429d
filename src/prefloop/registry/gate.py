"""The quality gate: rules (rules.py) applied to a candidate's and a baseline's metrics -> a verdict.

`evaluate_gate` is pure (metrics in, table out). Verdict: "refused" when a sanity rule fails or no
rule could be evaluated at all (the evidence is too weak to judge), else "fail" when a rule of
severity fail fails, else "pass". `gate_command` is `prefloop gate`: it reads the results files,
checks they are about the models named, prints the table, records the verdict on the version when
`--registry` is given, and exits 0 (pass), 1 (fail or refused) or 2 (bad input).

Thresholds follow MLflow's `MetricThreshold` / TFMA's `GenericValueThreshold` (absolute floor) and
`GenericChangeThreshold` (change against the baseline, with a direction and an absolute tolerance).
`at_least`/`at_most` and the baseline tolerance include the threshold, `above`/`below` exclude it, and
"equal" allows for floating-point noise, a few ULPs of the numbers combined (0.8 - 0.1 against 0.7 is
equal; 1e9 - 1 against 1e9 is not). A value that is present but NaN, infinite or not a number: on a
`severity: warn` rule it is a WARN (a warn rule never fails the gate); in the baseline (the champion's
metrics) the verdict is "refused" (re-measure the champion), not a failure of the candidate; in the
candidate (or its `gap_to` metric) it fails its rule whether or not it is required. A metric that is
absent or null (undefined) skips a rule unless it is required.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass

from prefloop.registry.rules import Rule

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"
REFUSED = "refused"  # a row whose baseline value is broken: the gate cannot judge the candidate against it
EXIT = {"pass": 0, "fail": 1, "refused": 1}


def _same(a: float, b: float, *operands: float) -> bool:
    """a and b are equal up to floating-point noise: at most a few ULPs (units in the last place) of the
    largest number that went into them apart (0.8 - 0.1 is 0.7000000000000001, 7/10 is 0.7), so a value AT
    a threshold is at it, whatever the arithmetic that produced the two numbers. The allowance scales with
    the operands actually combined (`operands`: e.g. the baseline and the tolerance behind a limit), never
    with a fixed relative tolerance: at_least 1e9 with 1e9 - 1, or a perplexity of 20000.00001 against
    20000 with tolerance 0, is a real difference and fails."""
    scale = max((abs(x) for x in (a, b, *operands)), default=0.0)
    return abs(a - b) <= 4 * math.ulp(scale)


# at_least / at_most include the threshold, above / below exclude it; equality is judged by `_same`.
_OPS = {"above": (lambda v, t, *o: v > t and not _same(v, t, *o), ">"),
        "at_least": (lambda v, t, *o: v >= t or _same(v, t, *o), ">="),
        "below": (lambda v, t, *o: v < t and not _same(v, t, *o), "<"),
        "at_most": (lambda v, t, *o: v <= t or _same(v, t, *o), "<=")}


@dataclass
class Row:
    """One line of the gate table."""

    rule: str
    metric: str
    value: float | None
    threshold: str
    result: str  # pass / fail / warn / skip / refused (the baseline's value is broken)
    why: str
    sanity: bool = False


@dataclass
class GateResult:
    """The verdict (pass / fail / refused), the table rows and a one-line reason."""
    verdict: str  # pass / fail / refused
    rows: list[Row]
    reason: str

    @property
    def exit_code(self) -> int:
        """0 for pass, 1 for fail or refused (2, bad input, is raised before a result exists)."""
        return EXIT[self.verdict]

    def to_dict(self) -> dict:
        """JSON-able verdict, reason and rows (what --json prints and the gate event stores)."""
        return {"verdict": self.verdict, "reason": self.reason, "rows": [asdict(r) for r in self.rows]}


def _number(value) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _broken(value) -> str | None:
    """Why a value that is present cannot be compared (NaN, infinite, not a number), or None if it can.
    A broken measurement never passes a rule: see `_check` for what it gives (warn, refused or fail)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r}, not a number"
    if not math.isfinite(value):
        return f"{value} (a broken measurement)"
    return None


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


def _metrics_for(rule: Rule, candidate: dict) -> list[str]:
    if "*" in rule.metric or "?" in rule.metric:
        return sorted(m for m in candidate if fnmatch.fnmatchcase(m, rule.metric)) or [rule.metric]
    return [rule.metric]


def _check(rule: Rule, metric: str, candidate: dict, baseline: dict) -> Row:
    inputs = [("candidate", metric, candidate.get(metric))]
    if rule.vs_baseline:
        inputs.append(("baseline", metric, baseline.get(metric)))
    if rule.gap_to:
        inputs.append(("candidate", rule.gap_to, candidate.get(rule.gap_to)))
    for side, name, raw in inputs:  # NaN, infinity or a string never skips a rule
        why = _broken(raw)
        if not why:
            continue
        what = f"the {side}'s {name} is {why}"
        if rule.severity == "warn":  # a warn rule never fails the gate, whatever the value
            return Row(rule.name, metric, None, "-", WARN, f"{what}; a warn rule only reports it", rule.sanity)
        if side == "baseline":  # the champion's measurement is broken, not the candidate: refuse to judge
            return Row(rule.name, metric, None, "-", REFUSED, f"{what}; re-measure the champion (the baseline) "
                       "and gate again", rule.sanity)
        return Row(rule.name, metric, None, "-", FAIL, f"{what}; the rule fails closed", rule.sanity)
    value = _number(candidate.get(metric))
    missing_result = FAIL if rule.required else SKIP
    if value is None:
        state = "not measured" if metric not in candidate else "undefined (null) in the results"
        return Row(rule.name, metric, None, "-", missing_result, f"{metric} {state}"
                   + ("; this rule is required" if rule.required else "; rule skipped"), rule.sanity)
    if rule.vs_baseline:
        base = _number(baseline.get(metric))
        if base is None:
            return Row(rule.name, metric, value, "-", missing_result, f"the baseline has no {metric}"
                       + ("; this rule is required" if rule.required else "; rule skipped"), rule.sanity)
        if rule.vs_baseline == "higher_is_better":
            limit, sign = base - rule.tolerance, ">="
            ok = value >= limit or _same(value, limit, base, rule.tolerance)
        else:
            limit, sign = base + rule.tolerance, "<="
            ok = value <= limit or _same(value, limit, base, rule.tolerance)
        threshold = f"{sign} {_fmt(limit)} (baseline {_fmt(base)} {'-' if sign == '>=' else '+'} {_fmt(rule.tolerance)})"
    elif rule.gap_to:
        other = _number(candidate.get(rule.gap_to))
        if other is None:
            return Row(rule.name, metric, value, "-", missing_result, f"{rule.gap_to} not measured; rule skipped",
                       rule.sanity)
        test, sign = _OPS[rule.op]
        gap = abs(value - other)
        ok, threshold = test(gap, rule.threshold, value, other), f"|{metric} - {rule.gap_to}| {sign} {_fmt(rule.threshold)}"
        value = gap
    else:
        test, sign = _OPS[rule.op]
        ok, threshold = test(value, rule.threshold), f"{sign} {_fmt(rule.threshold)}"
    result = PASS if ok else (WARN if rule.severity == "warn" else FAIL)
    return Row(rule.name, metric, value, threshold, result, rule.why, rule.sanity)


def evaluate_gate(rules: list[Rule], candidate: dict, baseline: dict | None = None) -> GateResult:
    """Apply `rules` to the candidate's flat metrics (and the baseline's, for vs_baseline rules)."""
    baseline = baseline or {}
    rows = [_check(rule, metric, candidate, baseline) for rule in rules for metric in _metrics_for(rule, candidate)]
    sanity_failed = [r for r in rows if r.sanity and r.result == FAIL]
    failed = [r for r in rows if not r.sanity and r.result == FAIL]
    broken_baseline = [r for r in rows if r.result == REFUSED]
    if sanity_failed:
        return GateResult("refused", rows, "the evidence is too weak to judge: "
                          + "; ".join(f"{r.rule} ({r.why})" for r in sanity_failed))
    if broken_baseline:
        return GateResult("refused", rows, "the baseline's (champion's) metrics are broken, so the candidate "
                          "cannot be judged against them: " + "; ".join(f"{r.rule} ({r.why})" for r in broken_baseline)
                          + (f" (the candidate also failed: {', '.join(r.rule for r in failed)})" if failed else ""))
    if failed:
        return GateResult("fail", rows, "failed: " + ", ".join(r.rule for r in failed))
    skipped = [r for r in rows if r.result == SKIP]
    if not any(r.result in (PASS, WARN) for r in rows if not r.sanity):
        return GateResult("refused", rows, "no rule could be evaluated: " + (
            "; ".join(f"{r.rule} ({r.why})" for r in skipped) if skipped else "the results hold none of the gated metrics"))
    warned = [r.rule for r in rows if r.result == WARN]
    warnings = f" (warnings: {', '.join(warned)})" if warned else ""
    if skipped:  # never "every rule passed" when some were not evaluated: say how many and why
        passed = sum(r.result in (PASS, WARN) for r in rows)
        return GateResult("pass", rows, f"{passed} passed, {len(skipped)} skipped ("
                          + "; ".join(f"{r.rule}: {r.why}" for r in skipped) + ")" + warnings)
    return GateResult("pass", rows, "every rule passed" + warnings)


def format_table(result: GateResult) -> str:
    """The rule table a person reads (rule, metric, value, threshold, result, why) and the verdict."""
    header = ("rule", "metric", "value", "threshold", "result", "why")
    lines = [(r.rule + (" [sanity]" if r.sanity else ""), r.metric, _fmt(r.value), r.threshold, r.result.upper()
              if r.result in (FAIL, WARN, REFUSED) else r.result, r.why) for r in result.rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    widths[-1] = 0
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header).rstrip(), fmt.format(*("-" * max(w, 3) for w in widths)).rstrip()]
    out += [fmt.format(*map(str, line)).rstrip() for line in lines]
    out.append(f"verdict: {result.verdict.upper()}: {result.reason}")
    return "\n".join(out)


def gate_command(candidate, baseline=None, rules=None, registry=None, version=None, db="prefloop.sqlite",
                 json_out: bool = False) -> int:
    """`prefloop gate`: see the module docstring. Returns the exit code (0 pass, 1 fail/refused)."""
    from prefloop.registry.evidence import SUBJECT_ROLE, check_model, load_evidence
    from prefloop.registry.rules import load_rules
    from prefloop.registry import RegistryError

    try:  # anything wrong with the inputs is exit 2 (bad input), never 1, which means "fail"
        rule_list = load_rules(rules)
        cand = load_evidence(candidate, "candidate")
        base = load_evidence(baseline, "baseline")
    except (OSError, UnicodeDecodeError) as err:
        raise RegistryError(f"cannot read the gate's inputs: {err}; check the --candidate, --baseline and --rules "
                            "paths") from err
    notes: list[str] = []
    store = champion = subject = None
    if registry or version:
        if not (registry and version):
            raise RegistryError("--registry NAME and --version V go together: the gate records its verdict on "
                                "version V of NAME")
        from prefloop.registry import existing_store
        from prefloop.registry import versions as v

        store = existing_store(db)
        subject = v.resolve(store, version, registry)
        champ_id = store.aliases(subject["name"]).get("champion")
        champion = store.model_version(champ_id) if champ_id is not None else None
        if champion is not None and champion["id"] == subject["id"]:
            raise RegistryError(f"{v.label(subject)} is the champion already; gate a candidate against it")
        notes += check_model(cand, SUBJECT_ROLE, v.version_paths(subject), v.label(subject))
        if champion is not None:
            notes += check_model(cand, {"winrate": "before"}, v.version_paths(champion), f"the champion "
                                 f"{v.label(champion)}")
            notes += check_model(base, SUBJECT_ROLE, v.version_paths(champion), f"the champion {v.label(champion)}")
            if not base.sources:  # no --baseline: the champion's recorded metrics are the baseline
                base.metrics = v.recorded_metrics(store, champion)
                notes.append(f"baseline: the metrics recorded for the champion {v.label(champion)}")
    else:
        if not base.sources:  # a vs_baseline rule with nothing to compare against is bad input, never a skip
            need = next((r for r in rule_list if r.vs_baseline), None)
            if need is not None:
                raise RegistryError(f"{need.source}:{need.line}: rule {need.name!r} compares {need.metric} with the "
                                    "baseline (vs_baseline), but no baseline was given; pass --baseline RESULTS.json "
                                    "(the champion's results) or --registry NAME --version V (the champion's recorded "
                                    "metrics)")
        _check_same_baseline(cand, base)
    result = evaluate_gate(rule_list, cand.metrics, base.metrics)
    if json_out:
        print(json.dumps({**result.to_dict(), "notes": notes}, indent=2))
    else:
        for note in notes:
            print(f"note: {note}")
        print(format_table(result))
    if store is not None:
        detail = {**result.to_dict(), "candidate_results": cand.paths, "baseline_results": base.paths,
                  "champion_id": champion["id"] if champion else None, "metrics": cand.metrics,
                  "rules": str(rules or "default")}
        store.set_model_status(subject["id"], "gate", result.verdict, detail)
        print(f"recorded: gate {result.verdict} on {subject['name']}:{subject['version']}"
              + (f" against the champion {champion['name']}:{champion['version']}" if champion else
                 " (no champion yet: absolute rules only)"))
        store.close()
    return result.exit_code


def _check_same_baseline(cand, base) -> None:
    """Without a registry: the win rate must have been measured against the model the baseline results describe."""
    from prefloop.registry.evidence import SUBJECT_ROLE, describe_entry, entry_matches
    from prefloop.registry import RegistryError

    befores = [(p, r["models"].get("before") or {}) for p, r in cand.sources if r["kind"] == "winrate"]
    for bpath, results in base.sources:
        entry = results["models"].get(SUBJECT_ROLE[results["kind"]]) or {}
        named = entry.get("adapter") or entry.get("path")
        for wpath, before in befores:
            if named and entry_matches(before, [named]) is False:
                raise RegistryError(f"{wpath}: the win rate was measured against {describe_entry(before)}, but the "
                                    f"baseline {bpath} describes {describe_entry(entry)}; gate against the same model")
