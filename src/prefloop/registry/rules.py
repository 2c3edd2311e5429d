"""Gate rules as data: a YAML file with a `rules:` list, read and checked here (`load_rules`).

Each rule names one metric of the results contract (`prefloop.evaluate.results.METRIC_NAMES`; a
`*` matches several, e.g. `safety_mc/category/*`) and exactly one test:

- a threshold: `above`, `at_least`, `below` or `at_most` a number (MLflow's / TFMA's absolute floor);
- `vs_baseline: higher_is_better | lower_is_better` with a `tolerance` >= 0 (TFMA's change threshold
  with a direction): the candidate may be worse than the baseline by at most the tolerance;
- `gap_to: OTHER_METRIC` with `at_most`/`below`: |metric - other| is bounded (LC vs raw win rate).

Optional keys: `name` (default: the metric), `why` (shown in the table), `severity: fail | warn`
(a warn rule never fails the gate), `sanity: true` (a failure means the evidence is too weak to
judge: the verdict is "refused"), `required: true` (a metric that was not measured fails the rule
instead of skipping it), `custom_metric: true` (a metric outside the contract). Unknown keys,
impossible thresholds (a rate above 1, a negative count) and unknown metrics are errors naming the
file, line and key. The shipped defaults are `src/prefloop/registry/default_gate.yaml` (documented rule by rule).
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import yaml

from prefloop.config import coerce_value
from prefloop.errors import ConfigError
from prefloop.evaluate.results import METRIC_NAMES

DEFAULT_RULES = Path(__file__).resolve().parent / "default_gate.yaml"  # package data: found in any install
THRESHOLD_KEYS = ("above", "at_least", "below", "at_most")
RULE_KEYS = ("name", "metric", "why", "severity", "sanity", "required", "custom_metric", "vs_baseline", "tolerance",
             "gap_to") + THRESHOLD_KEYS
DIRECTIONS = ("higher_is_better", "lower_is_better")
KNOWN_METRICS = tuple(m for names in METRIC_NAMES.values() for m in names)
KNOWN_PATTERNS = ("safety_mc/category/*",)
# Metrics that are fractions in [0, 1] (rates, accuracies, interval bounds); the others are counts or scores.
_RATE_WORDS = ("win_rate", "accuracy", "rate", "consistency", "mc1", "mc2", "category/", "pref_ties")
_COUNTS = ("wins", "ties", "losses")


@dataclass(frozen=True)
class Rule:
    """One gate rule (see the module docstring); `line` is where it starts in its file (1-based)."""

    name: str
    metric: str
    op: str | None = None  # one of THRESHOLD_KEYS, for a threshold or a gap
    threshold: float | None = None
    vs_baseline: str | None = None
    tolerance: float = 0.0
    gap_to: str | None = None
    why: str = ""
    severity: str = "fail"
    sanity: bool = False
    required: bool = False
    source: str = ""
    line: int = 0


def is_rate(metric: str) -> bool:
    """Whether a contract metric is a fraction in [0, 1] (rates, accuracies, interval bounds)."""
    return any(w in metric for w in _RATE_WORDS) and not metric.endswith("_se")


def is_count(metric: str) -> bool:
    """Whether a contract metric is a count or a length (>= 0, no upper bound)."""
    last = metric.split("/")[-1]
    return last.startswith("n_") or last in _COUNTS or metric.startswith("mean_length")


def load_rules(path: str | Path | None = None) -> list[Rule]:
    """Rules from a YAML file (default: the shipped src/prefloop/registry/default_gate.yaml). Raises ConfigError with file and line."""
    path = Path(path) if path else DEFAULT_RULES
    if not path.is_file():
        raise ConfigError(f"rules file {path} does not exist; give a YAML file with a `rules:` list "
                          f"(start from {DEFAULT_RULES})")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from err
    if not isinstance(data, dict) or set(data) != {"rules"} or not isinstance(data["rules"], list):
        extra = sorted(set(data) - {"rules"}) if isinstance(data, dict) else []
        raise ConfigError(f"{path}: a rules file is a mapping with one key, `rules:`, holding a list of rules"
                          + (f"; unknown top-level key(s): {', '.join(map(str, extra))}" if extra else ""))
    nodes = next(v for k, v in root.value if k.value == "rules").value
    rules, names = [], {}
    for node, raw in zip(nodes, data["rules"]):
        where = f"{path}:{node.start_mark.line + 1}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: a rule is a mapping (metric: ..., at_least: ...), got {raw!r}")
        keys = [k.value for k, _ in node.value]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup:
            raise ConfigError(f"{where}: key {dup!r} is given twice in one rule; keep one")
        rule = _parse_rule(raw, where, str(path), node.start_mark.line + 1)
        if rule.name in names:
            raise ConfigError(f"{where}: rule name {rule.name!r} is already used at line {names[rule.name]}; "
                              "give each rule its own name")
        names[rule.name] = rule.line
        rules.append(rule)
    if not rules:
        raise ConfigError(f"{path}: the rules list is empty; a gate without rules would pass anything")
    return rules


def _number(raw: dict, key: str, where: str) -> float:
    """`raw[key]` as a float; a number written in quotes ("0.5", "1e-3") counts, as in every config file
    (`config.coerce_value`)."""
    try:
        value = coerce_value(raw[key], float)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key}: {raw[key]!r} is not a number; give the threshold as a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{where}: {key}: {value!r} is not a finite number; give the threshold as a number")
    return float(value)


def _check_metric(metric, where: str, custom: bool) -> None:
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{where}: metric: give a metric name from results.json, e.g. win_rate_ci_low")
    if custom:
        return
    known = any(fnmatch.fnmatchcase(m, metric) for m in KNOWN_METRICS) or any(
        fnmatch.fnmatchcase(metric, p) or metric == p for p in KNOWN_PATTERNS)
    if not known:
        close = difflib.get_close_matches(metric, KNOWN_METRICS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: metric {metric!r} is not a prefloop eval metric{hint}; see "
                          "prefloop/evaluate/results.py, or set custom_metric: true for your own")


def _parse_rule(raw: dict, where: str, source: str, line: int) -> Rule:
    unknown = [k for k in raw if k not in RULE_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), RULE_KEYS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(RULE_KEYS)}"
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{hint}")
    if "metric" not in raw:
        raise ConfigError(f"{where}: a rule needs `metric:` (the results.json metric it tests)")
    for key in ("sanity", "required", "custom_metric"):
        if key in raw:
            try:
                raw[key] = coerce_value(raw[key], bool)  # "true" in quotes counts, as in every config file
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {key}: {raw[key]!r} is not allowed; give true or false") from None
    custom = raw.get("custom_metric", False)
    metric = raw["metric"]
    _check_metric(metric, where, custom)
    severity = raw.get("severity", "fail")
    if severity not in ("fail", "warn"):
        raise ConfigError(f"{where}: severity: {severity!r} is not allowed; give fail or warn")
    ops = [k for k in THRESHOLD_KEYS if k in raw]
    if len(ops) > 1:
        raise ConfigError(f"{where}: give one of {', '.join(THRESHOLD_KEYS)}, not {' and '.join(ops)}; "
                          "write two rules for a range")
    op = ops[0] if ops else None
    threshold = _number(raw, op, where) if op else None
    direction = raw.get("vs_baseline")
    gap_to = raw.get("gap_to")
    if direction is not None:
        if direction not in DIRECTIONS:
            raise ConfigError(f"{where}: vs_baseline: {direction!r} is not allowed; give {' or '.join(DIRECTIONS)}")
        if op or gap_to:
            raise ConfigError(f"{where}: vs_baseline compares with the baseline; it takes `tolerance`, not "
                              f"{op or 'gap_to'} (write a second rule for an absolute floor)")
    elif "tolerance" in raw:
        raise ConfigError(f"{where}: tolerance applies only with vs_baseline: higher_is_better or lower_is_better")
    elif gap_to is not None:
        _check_metric(gap_to, f"{where}: gap_to", custom)
        if op not in ("at_most", "below"):
            raise ConfigError(f"{where}: gap_to bounds |{metric} - {gap_to}|; give at_most: or below: the largest gap")
    elif op is None:
        raise ConfigError(f"{where}: rule on {metric!r} tests nothing; give one of {', '.join(THRESHOLD_KEYS)}, "
                          "vs_baseline with tolerance, or gap_to with at_most")
    tolerance = _number(raw, "tolerance", where) if "tolerance" in raw else 0.0
    if tolerance < 0:
        raise ConfigError(f"{where}: tolerance: {tolerance} is not allowed; it is how much worse the candidate may "
                          "be, >= 0 (0 = may not fall at all)")
    if threshold is not None:
        _check_possible(metric if gap_to is None else "gap", op, threshold, tolerance, where)
    if direction is not None and is_rate(metric) and tolerance >= 1:
        raise ConfigError(f"{where}: tolerance {tolerance} on the rate {metric} (in [0, 1]) lets anything pass")
    name = str(raw.get("name") or metric)
    return Rule(name=name, metric=metric, op=op, threshold=threshold, vs_baseline=direction, tolerance=tolerance,
                gap_to=gap_to, why=str(raw.get("why") or ""), severity=severity, sanity=raw.get("sanity", False),
                required=raw.get("required", False), source=source, line=line)


def _check_possible(metric: str, op: str, t: float, tolerance: float, where: str) -> None:
    """Thresholds no value can pass (or that every value passes) are mistakes: say so."""
    if metric == "gap":
        lo, hi, what = 0.0, float("inf"), "a gap (>= 0)"
    elif is_rate(metric):
        lo, hi, what = 0.0, 1.0, "a rate in [0, 1]"
    elif is_count(metric):
        lo, hi, what = 0.0, float("inf"), "a count (>= 0)"
    else:
        return
    impossible = (op == "above" and t >= hi) or (op == "at_least" and t > hi) or (op == "below" and t <= lo) or (
        op == "at_most" and t < lo)
    if impossible:
        raise ConfigError(f"{where}: {op}: {t} can never hold for {metric}, {what}; the gate would always fail")
    vacuous = (op == "above" and t < lo) or (op == "at_least" and t <= lo) or (op == "below" and t > hi) or (
        op == "at_most" and t >= hi)
    if vacuous:
        raise ConfigError(f"{where}: {op}: {t} always holds for {metric}, {what}; the rule would check nothing")
