"""`prefloop eval winrate`: the after-model against the before-model (or a leaderboard against a baseline).

Steps: read the prompts (a prompt file as `generate` reads it, or the held-out split of a training
config), generate each model's answers through the one sampler with fixed seeds (cached under
OUT/answers/, see `answers.py`), then either
- judge every prompt in both orders with the landed pairwise judge (`judge/pairwise.py`; after shown
  first, then before shown first; disagreement = tie; judgments cached in OUT/judgments/, one file per judge,
  keyed by judge, template and answers), or
- put the pairs into the labeling store (`--human-db`; the label app hides which model wrote which
  answer until after the vote), and later compute the report from the votes (`--from-db`).
The statistics come from `prefloop.stats`; the results follow the shared contract (`results.py`); the
report is written with `report.py`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefloop import stats
from prefloop.endpoint import endpoint_api_key
from prefloop.errors import ConfigError, DataError
from prefloop.evaluate.answers import AnswerSet, ModelSpec, generate_answers
from prefloop.evaluate.report import Report, endpoint_adaptation_notes, percent
from prefloop.evaluate.results import LC_ORIENTATION, check_out_dir, model_entry, new_results, write_results
from prefloop.prompts import Prompt

JUDGE_CHUNK = 32  # comparisons per progress-bar step (two judge calls each)
ORIGIN_PREFIX = "eval-winrate:"


# ------------------------------------------------------------------------------------------ prompts

def read_eval_prompts(prompts: str | None, config: str | None, limit: int | None = None) -> tuple[list[Prompt], dict]:
    """The eval's prompts and the results.json "data" entry.

    prompts: a file as `generate` reads it (`prompts.read_prompts`); it wins over `config`. config: a
    training YAML whose held-out split (val_size, seed, dataset as the trainer reads them) gives the prompts.
    limit: keep the first N. Raises ConfigError when neither is given, or the config has no held-out split.
    """
    from prefloop.prompts import read_prompts

    if not prompts and not config:
        raise ConfigError("give the prompts: --prompts FILE, or --config TRAIN.yaml to use the held-out split of a "
                          "training config")
    if prompts:
        found = read_prompts(prompts)
        print(f"prefloop eval: {found.summary()}", file=sys.stderr)
        chosen = found.prompts
        source = {"path": str(prompts), "split": None}
    else:
        from prefloop.config import load_config
        from prefloop.data.loader import load_pairs, split_validation

        cfg = load_config(config)
        if not cfg.val_size:
            raise ConfigError(f"{config}: val_size is 0, so the config holds no prompts out of training; set val_size "
                              "(e.g. 0.2) before training, or pass --prompts FILE")
        dataset = ",".join(cfg.dataset) if isinstance(cfg.dataset, list) else cfg.dataset
        loaded = load_pairs(dataset, cfg.dataset_dir, skip_bad_rows=cfg.skip_bad_rows, max_samples=cfg.max_samples,
                            seed=cfg.seed)
        val_size = int(cfg.val_size) if cfg.val_size >= 1 else cfg.val_size
        _, held_out = split_validation(loaded.pairs, val_size, cfg.seed)
        seen, chosen = set(), []
        for pair in held_out:
            p = Prompt(pair.prompt_messages(), pair.id or "", pair.source or "")
            if p.key not in seen:
                seen.add(p.key)
                chosen.append(p)
        print(f"prefloop eval: {len(chosen)} held-out prompts from {config} ({dataset}, val_size {cfg.val_size}, "
              f"seed {cfg.seed})", file=sys.stderr)
        source = {"path": str(dataset), "split": f"held-out (val_size {cfg.val_size}, seed {cfg.seed}) of {config}"}
    for i, p in enumerate(chosen):  # ids must be unique: they key the answers cache
        p.id = p.id or f"prompt:{i}"
    ids = [p.id for p in chosen]
    if len(set(ids)) != len(ids):
        seen_ids: set[str] = set()
        for p in chosen:
            if p.id in seen_ids:
                p.id = f"{p.id}#{p.key[:8]}"
            seen_ids.add(p.id)
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {limit}")
        chosen = chosen[:limit]
    fingerprint = hashlib.sha256("".join(p.key for p in chosen).encode()).hexdigest()[:16]
    return chosen, {**source, "n": len(chosen), "fingerprint": fingerprint}


# ------------------------------------------------------------------------------------------ judging

@dataclass
class _Pair:
    """What the pairwise judge needs of one prompt (the CandidateSet shape): x = candidate 0, y = 1."""

    messages: list[dict]
    candidates: list[str]


ORDER_OUTCOME = {"A": "win", "B": "loss", "C": "tie"}   # after shown as A
SWAPPED_OUTCOME = {"A": "loss", "B": "win", "C": "tie"}  # before shown as A


def _adaptations_cache(path: Path, client):
    """The judgments cache, each new judgment stored with the request fields the judge endpoint refused and
    those of every cached judgment read back collected in `.used` (see `judge.cache.JudgmentCache`), so a
    run that reuses cached judgments reports how they were asked (`judge_adaptations`)."""
    from prefloop.judge.cache import JudgmentCache

    return JudgmentCache(path, client=client)


def open_judge(judge: str, judge_model: str | None, criteria: str, template_file: str | None, out_dir: Path,
               api_key: str | None, concurrency: int, max_tokens: int, seed: int):
    """The landed pairwise judge with its cache in OUT/judgments/HASH.jsonl (HASH of the judge target and model
    name, so two endpoints serving models of the same name never share verdicts)."""
    from prefloop.chat_clients import open_chat_client
    from prefloop.judge.pairwise import PairwiseJudge
    from prefloop.judge.prompt import JudgePrompt

    prompt = JudgePrompt.from_options(criteria, template_file)
    client = open_chat_client(judge, judge_model, api_key, batch_size=concurrency, concurrency=concurrency,
                              option="--judge-model")
    where = hashlib.sha256(f"{judge}|{judge_model or ''}".encode()).hexdigest()[:12]
    cache = _adaptations_cache(out_dir / "judgments" / f"{where}.jsonl", client)  # one file per judge target
    return PairwiseJudge(client, prompt, cache, max_tokens=max_tokens, seed=seed), prompt


def judge_adaptations(pj) -> dict[str, str]:
    """The request fields the judge endpoint refused, over this run's requests and the cached judgments
    it used (e.g. {"temperature": "left out"}: the judge was not greedy); {} when none was refused."""
    from prefloop.chat_clients import adaptations_of

    return {**getattr(pj.cache, "used", {}), **adaptations_of(pj.client)}


def judge_entry(pj, judge_prompt, target: str, max_tokens: int, seed: int, template_text: bool = True) -> dict:
    """The results.json "judge" entry of a pairwise LLM judge: its settings as sent (`temperature` null when
    the endpoint refused it: see `chat_clients.sent_temperature`) and `endpoint_adaptations`."""
    from prefloop.chat_clients import sent_temperature

    adaptations = judge_adaptations(pj)
    entry = {"name": pj.client.name, "target": target, "template": judge_prompt.origin,
             "criteria": list(judge_prompt.criteria), "template_fingerprint": judge_prompt.fingerprint,
             "template_text": judge_prompt.template, "max_tokens": max_tokens,
             "temperature": sent_temperature(0.0, adaptations), "seed": seed, "endpoint_adaptations": adaptations,
             "usage": pj.client.usage.to_dict()}
    if not template_text:
        del entry["template_text"]
    return entry


def judge_both_orders(pj, prompts: list[Prompt], after: AnswerSet, before: AnswerSet, label: str) -> list[dict]:
    """Per prompt: both judgments and the combined outcome for the after-model (win / tie / loss / None).

    Two identical answers (the same text) are a tie without asking the judge, as alpaca_eval's
    `PairwiseAnnotator` sets them (preference 1.5): a judge's verdict between equal texts is noise. Such a row
    has `identical_answers: True` and no judgments (`comparison` None); `_judge_stats` leaves it out."""
    from tqdm import tqdm

    from prefloop.judge.pairwise import Comparison

    pairs = [_Pair(p.messages, [after.by_key[p.key].answer, before.by_key[p.key].answer]) for p in prompts]
    comparisons = [None if pair.candidates[0] == pair.candidates[1] else Comparison(i, 0, 1)
                   for i, pair in enumerate(pairs)]
    asked = [c for c in comparisons if c is not None]
    with tqdm(total=len(asked), desc=f"judging ({label})", unit="prompt", disable=None) as bar:
        for start in range(0, len(asked), JUDGE_CHUNK):
            chunk = asked[start : start + JUDGE_CHUNK]
            pj.judge(chunk, pairs)
            bar.update(len(chunk))
    rows = []
    for p, c in zip(prompts, comparisons):
        if c is None:
            rows.append({"id": p.id, "key": p.key, "after_first": None, "before_first": None, "errors": None,
                         "outcome": "tie", "identical_answers": True, "judge_text": None, "comparison": None})
            continue
        first = ORDER_OUTCOME.get(c.first.verdict) if not c.first.error else None
        second = SWAPPED_OUTCOME.get(c.second.verdict) if not c.second.error else None
        rows.append({"id": p.id, "key": p.key, "after_first": c.first.verdict, "before_first": c.second.verdict,
                     "errors": [j.error for j in (c.first, c.second) if j.error] or None,
                     "outcome": stats.combine_orders(first, second),
                     "judge_text": [c.first.text, c.second.text], "comparison": c})
    return rows


# ------------------------------------------------------------------------------------------ statistics

def summarize(rows: list[dict], after: AnswerSet, before: AnswerSet, resamples: int, seed: int,
              judge_stats: dict | None) -> tuple[dict, dict]:
    """(metrics, details) of a win-rate run from per-prompt rows with an "outcome" (None = failed) and,
    for soft verdicts (averaged human votes), a "preference" in [0, 1].

    Every rate comes from the same per-prompt preferences (a win 1, a tie 0.5, a loss 0, or the soft
    value), as alpaca_eval computes them: `win_rate` is their mean, its bootstrap interval and standard
    error resample them, `discrete_win_rate` rounds each to win / tie / loss first, and the LC win rate
    fits them. Prompts without a verdict are left out of all of them and counted (`n_excluded_prompts`)."""
    judged = [r for r in rows if r["outcome"] is not None]
    prefs = [None if r["outcome"] is None else r.get("preference", stats.OUTCOME_SCORES[r["outcome"]]) for r in rows]
    wr = stats.win_rate(prefs)
    interval = stats.win_rate_interval(prefs, resamples, seed) if judged else None
    # every prompt's lengths (alpaca_eval normalises Δlen over all instructions); those without a verdict are not fitted
    lc = stats.lc_win_rate(prefs, [after.by_key[r["key"]].chars for r in rows],
                           [before.by_key[r["key"]].chars for r in rows])

    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    keys = [r["key"] for r in rows]
    n_judgments = (judge_stats or {}).get("judgments", 0)
    failed = (judge_stats or {}).get("failed_judgments", 0)
    metrics = {
        "win_rate": wr.win_rate, "win_rate_ci_low": interval.low if interval else None,
        "win_rate_ci_high": interval.high if interval else None, "win_rate_se": wr.standard_error,
        "discrete_win_rate": wr.discrete_win_rate, "raw_win_rate": wr.raw_win_rate,
        "lc_win_rate": lc.lc_win_rate, "lc_win_rate_se": lc.lc_win_rate_se,
        "wins": wr.wins, "ties": wr.ties, "losses": wr.losses, "n_prompts": wr.n,
        "judge_consistency": (judge_stats or {}).get("consistency_rate"),
        "first_position_rate": (judge_stats or {}).get("first_position_rate"),
        "n_failed_judgments": failed, "failed_judgment_rate": failed / n_judgments if n_judgments else None,
        "n_excluded_prompts": len(rows) - len(judged),
        "n_identical_answers": sum(1 for r in rows if r.get("identical_answers")),  # ties, not judged
        "mean_length_tokens/after": mean(after.by_key[k].tokens for k in keys),
        "mean_length_tokens/before": mean(before.by_key[k].tokens for k in keys),
        "mean_length_chars/after": mean(after.by_key[k].chars for k in keys),
        "mean_length_chars/before": mean(before.by_key[k].chars for k in keys),
    }
    details = {
        "interval": interval.to_dict() if interval else None, "lc": {**lc.to_dict(), "delta_len": LC_ORIENTATION},
        "per_prompt": [{"id": r["id"], "outcome": r["outcome"],
                        **{k: r[k] for k in ("after_first", "before_first", "errors", "votes", "preference",
                                             "identical_answers") if k in r},
                        "after_chars": after.by_key[r["key"]].chars, "before_chars": before.by_key[r["key"]].chars,
                        "after_tokens": after.by_key[r["key"]].tokens, "before_tokens": before.by_key[r["key"]].tokens}
                       for r in rows],
        "judge_stats": judge_stats,
    }
    return metrics, details


def usable_judge_stats(rows: list[dict], judge: str, out_dir: Path, check: str = "") -> dict:
    """The judge diagnostics of `rows` (see `_judge_stats`).

    Raises DataError, naming the first request error, when not one judgment gave a verdict: then there
    is nothing to report, and the answers stay cached under `out_dir/answers` for a rerun."""
    js = _judge_stats(rows)
    if js["judgments"] and js["failed_judgments"] == js["judgments"]:
        errors = [e for r in rows for e in (r["errors"] or [])]
        raise DataError(f"the judge {judge} gave no usable verdict in any of its {js['judgments']} judgments ("
                        + (f"request errors, first: {errors[0][:300]}" if errors else
                           "no answer held a verdict [[A]], [[B]] or [[C]], even after a retry")
                        + f"); check --judge/--judge-model{check}. Answers are cached in {out_dir / 'answers'}: a "
                        "rerun generates nothing")
    return js


def _judge_stats(rows: list[dict]) -> dict:
    from prefloop.judge.pairwise import JudgeStats

    asked = [r for r in rows if r.get("comparison") is not None]  # identical answers were not judged
    js = JudgeStats()
    js.add([r["comparison"] for r in asked])
    d = js.to_dict()
    d["failed_judgments"] = sum(1 for r in asked for j in (r["comparison"].first, r["comparison"].second)
                                if j.error or j.verdict is None)
    d["judgments"] = 2 * len(asked)
    d["identical_answers"] = len(rows) - len(asked)
    return d


# ------------------------------------------------------------------------------------------ report

def _bars_figure(metrics: dict, after: str, before: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 2.6), gridspec_kw={"width_ratios": [3, 2]})
    n = metrics["n_prompts"] or 1
    left = 0.0
    for label, count, color in (("wins", metrics["wins"], "#3a923a"), ("ties", metrics["ties"], "#b0b0b0"),
                                ("losses", metrics["losses"], "#c44e52")):
        ax1.barh([0], [count / n], left=left, color=color, label=f"{label} ({count})")
        left += count / n
    ax1.set_xlim(0, 1)
    ax1.set_yticks([])
    ax1.set_xlabel(f"share of {metrics['n_prompts']} prompts ({after} vs {before})")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, frameon=False)
    names, values, errs = [], [], []
    if metrics["win_rate"] is not None:
        names.append("win rate")
        values.append(metrics["win_rate"])
        lo, hi = metrics["win_rate_ci_low"], metrics["win_rate_ci_high"]
        errs.append([metrics["win_rate"] - lo, hi - metrics["win_rate"]])
    if metrics.get("lc_win_rate") is not None:
        names.append("LC win rate")
        values.append(metrics["lc_win_rate"])
        se = metrics["lc_win_rate_se"] or 0.0
        errs.append([1.96 * se, 1.96 * se])
    if names:
        ax2.bar(names, values, yerr=np.array(errs).T, capsize=6, color=["#4c72b0", "#8172b2"][: len(names)])
    ax2.axhline(0.5, color="k", lw=0.8, ls="--")
    ax2.set_ylim(0, 1)
    ax2.set_title("95% interval (bootstrap; LC: ±1.96 SE)", fontsize=9)
    fig.tight_layout()
    return fig


def _lengths_figure(after: list[int], before: list[int], after_name: str, before_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.8))
    top = max(after + before + [1])
    bins = np.linspace(0, top, 21)
    ax.hist(before, bins=bins, alpha=0.6, label=f"before: {before_name}", color="#c44e52")
    ax.hist(after, bins=bins, alpha=0.6, label=f"after: {after_name}", color="#4c72b0")
    ax.set_xlabel("answer length (characters)")
    ax.set_ylabel("prompts")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def winrate_report(results: dict, prompts: list[Prompt], after: AnswerSet, before: AnswerSet,
                   show_answers: int = 10) -> Report:
    """The report of a win-rate run: summary table, plots, warnings, per-prompt outcomes, sample answers."""
    m, d = results["metrics"], results["details"]
    a_name, b_name = results["models"]["after"]["name"], results["models"]["before"]["name"]
    judge = results["judge"] or {}
    report = Report(f"Win rate: {a_name} (after) vs {b_name} (before)",
                    f"{m['n_prompts']} prompts from {results['data']['path']}; judge: {judge.get('name', 'n/a')}; "
                    f"prefloop {results['prefloop_version']}, {results['created']}")
    ci = d["interval"]
    summary = report.section("Summary", (
        f"Win rate (ties as half) {percent(m['win_rate'])}, 95% paired-bootstrap interval "
        f"[{percent(m['win_rate_ci_low'])}, {percent(m['win_rate_ci_high'])}] over {m['n_prompts']} prompts "
        f"({ci['resamples'] if ci else 0} resamples, seed {ci['seed'] if ci else '-'})."))
    summary.table(["metric", "value"], [
        ["wins / ties / losses", f"{m['wins']} / {m['ties']} / {m['losses']}"],
        ["win rate (ties as half)", percent(m["win_rate"])],
        ["95% interval", f"[{percent(m['win_rate_ci_low'])}, {percent(m['win_rate_ci_high'])}]"],
        ["standard error", percent(m.get("win_rate_se"))],
        ["discrete win rate (each verdict rounded to win/tie/loss)", percent(m.get("discrete_win_rate"))],
        ["raw win rate (wins / n)", percent(m["raw_win_rate"])],
        ["LC win rate ± SE", f"{percent(m['lc_win_rate'])} ± {percent(m['lc_win_rate_se'])}"],
        ["prompts judged / excluded", f"{m['n_prompts']} / {m.get('n_excluded_prompts', 0)}"],
        ["mean length after / before (tokens)",
         f"{_num(m['mean_length_tokens/after'])} / {_num(m['mean_length_tokens/before'])}"],
        ["mean length after / before (characters)",
         f"{_num(m.get('mean_length_chars/after'))} / {_num(m.get('mean_length_chars/before'))}"],
        ["judge consistency (both orders agree)", percent(m["judge_consistency"])],
        ["first-position rate (0.5 = no bias)", percent(m["first_position_rate"])],
        ["failed or unparseable judgments", f"{m['n_failed_judgments']} ({percent(m['failed_judgment_rate'])})"],
    ])
    if d["lc"].get("warning"):
        summary.warning(d["lc"]["warning"])
    if (note := zero_width_note(m)) is not None:
        summary.warning(note[0].upper() + note[1:] + ".")
    if m["judge_consistency"] is not None and m["judge_consistency"] < 0.5:
        summary.warning(f"The judge gave the same verdict in both orders on only {percent(m['judge_consistency'])} "
                        f"of the prompts (first-position rate {percent(m['first_position_rate'])}): it decides by "
                        "position more than by content, so its ties say little about the models. Use a stronger judge.")
    if m["n_prompts"] and m["n_prompts"] < 30:
        summary.warning(f"Only {m['n_prompts']} prompts: the interval is wide; use a few hundred prompts for a "
                        "decision.")
    for note in endpoint_adaptation_notes(results):
        summary.warning(note)
    summary.figure("winrate", _bars_figure(m, a_name, b_name), "wins, ties and losses; win rate with its interval")
    keys = [r["id"] for r in d["per_prompt"]]
    by_id = {p.id: p for p in prompts}
    lengths = report.section("Answer lengths")
    lengths.figure("lengths", _lengths_figure([after.by_key[by_id[k].key].chars for k in keys],
                                              [before.by_key[by_id[k].key].chars for k in keys], a_name, b_name),
                   "length distributions of both models' answers")
    method = report.section("Method", (
        "Each prompt is judged twice, the after-model's answer shown first and then second; when the two "
        "verdicts disagree the prompt is a tie (FastChat). The interval resamples prompts (both orders "
        "together). The LC win rate is AlpacaEval 2's length-controlled win rate without its hub files: a "
        "logistic regression of the verdict on tanh(Δlength / std) and a constant, read at Δlength = 0."))
    if judge:
        method.table(["judge setting", "value"], [[k, json.dumps(v) if isinstance(v, (dict, list)) else v]
                                                  for k, v in judge.items() if k != "template_text"])
    per = report.section("Per prompt")
    per.table(["id", "outcome", "after shown first", "before shown first", "after chars", "before chars"],
              [[r["id"], r["outcome"] or "failed", r.get("after_first"), r.get("before_first"), r["after_chars"],
                r["before_chars"]] for r in d["per_prompt"]])
    sample = report.section("Sample answers", f"The first {min(show_answers, len(keys))} prompts, both answers.")
    for k in keys[:show_answers]:
        p = by_id[k]
        question = p.messages[-1]["content"]
        sample.details(f"{k}: {question[:80]}", f"PROMPT:\n{question}\n\nAFTER ({a_name}):\n"
                       f"{after.by_key[p.key].answer}\n\nBEFORE ({b_name}):\n{before.by_key[p.key].answer}")
    return report


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def zero_width_note(metrics: dict) -> str | None:
    """A warning when the win-rate interval has no width because every judged prompt has the same preference
    (all ties, all wins or all losses): the bootstrap then resamples identical values, so "[50.0%, 50.0%]"
    states no certainty; None otherwise."""
    n, low, high = metrics.get("n_prompts"), metrics.get("win_rate_ci_low"), metrics.get("win_rate_ci_high")
    if not n or low is None or low != high:
        return None
    same = ("a tie" if metrics.get("ties") == n else "a win" if metrics.get("wins") == n
            else "a loss" if metrics.get("losses") == n else "the same preference")
    return (f"every one of the {n} judged prompts is {same}, so the 95% interval [{percent(low)}, {percent(high)}] has "
            f"no width: the bootstrap resampled identical values. It measures no uncertainty"
            + (" (all ties: the judge told the two apart on no prompt)" if same == "a tie" else "")
            + "; judge more prompts, or use a judge that decides")


def print_summary(results: dict) -> None:
    m = results["metrics"]
    lc = results["details"]["lc"]
    excluded = m.get("n_excluded_prompts") or 0
    print(f"prefloop eval winrate: {m['wins']} wins, {m['ties']} ties, {m['losses']} losses over {m['n_prompts']} "
          f"prompts{f' ({excluded} without a verdict left out)' if excluded else ''}: win rate "
          f"{percent(m['win_rate'])} [95% CI {percent(m['win_rate_ci_low'])}, {percent(m['win_rate_ci_high'])}], "
          f"raw {percent(m['raw_win_rate'])}, LC {percent(m['lc_win_rate'])} ± {percent(m['lc_win_rate_se'])}",
          file=sys.stderr)
    if m.get("discrete_win_rate") is not None and m["discrete_win_rate"] != m["win_rate"]:
        print(f"  soft verdicts: discrete win rate (each rounded to win/tie/loss) {percent(m['discrete_win_rate'])}",
              file=sys.stderr)
    print(f"  mean length after/before: {_num(m['mean_length_tokens/after'])}/{_num(m['mean_length_tokens/before'])} "
          f"tokens, {_num(m.get('mean_length_chars/after'))}/{_num(m.get('mean_length_chars/before'))} chars; judge "
          f"consistency {percent(m['judge_consistency'])}, first-position rate {percent(m['first_position_rate'])}, "
          f"{m['n_failed_judgments']} failed/unparseable judgments", file=sys.stderr)
    if lc.get("warning"):
        print(f"  warning: {lc['warning']}", file=sys.stderr)
    if (note := zero_width_note(m)) is not None:
        print(f"  warning: {note}", file=sys.stderr)
    for note in endpoint_adaptation_notes(results):
        print(f"  warning: {note}", file=sys.stderr)
    if m["judge_consistency"] is not None and m["judge_consistency"] < 0.5:
        print(f"  warning: the judge agreed with itself across both orders on {percent(m['judge_consistency'])} of "
              "the prompts: it judges position more than content; use a stronger judge", file=sys.stderr)


# ------------------------------------------------------------------------------------------ human votes

def origin_tag(after: ModelSpec, before: ModelSpec, data: dict) -> str:
    return f"{ORIGIN_PREFIX}{after.label()} vs {before.label()} [{data['fingerprint']}]"


def put_into_store(db: str, prompts: list[Prompt], after: AnswerSet, before: AnswerSet, origin: str) -> int:
    """Add one comparison item per prompt (after = stored a, before = stored b; the label app shows them in a
    random order and reveals the sources only after the vote). Returns the number of new items."""
    from prefloop.store import Store

    with Store(db) as store:
        before_n = len(store.label_item_ids())
        for p in prompts:
            store.add_label_item(p.messages, after.by_key[p.key].answer, before.by_key[p.key].answer,
                                 f"after: {after.by_key[p.key].model}", f"before: {before.by_key[p.key].model}",
                                 origin)
        return len(store.label_item_ids()) - before_n


VOTE_SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # score of the stored a (= the after-model)


def rows_from_votes(db: str, origin: str | None) -> tuple[list[dict], AnswerSet, AnswerSet, str, dict]:
    """Per-prompt rows from the active human votes on eval-winrate items of `db`.

    Each item's score is the mean over its votes (a = after wins 1, b = 0, tie and both-bad 0.5; skips
    left out and counted); the outcome is win / tie / loss by that mean. Raises DataError when the store
    has no such items, or items of several runs and no --db-origin.
    """
    from prefloop.prompts import prompt_key
    from prefloop.store import Store

    if not Path(db).is_file():
        raise DataError(f"store {db} does not exist; run prefloop eval winrate --human-db {db} first")
    with Store(db) as store:
        items = [i for i in store.label_items() if (i["origin"] or "").startswith(ORIGIN_PREFIX)]
        votes = store.active_votes()
    origins = sorted({i["origin"] for i in items})
    if not origins:
        raise DataError(f"{db} holds no items from prefloop eval winrate --human-db; put the pairs in first")
    if origin is None:
        if len(origins) > 1:
            raise ConfigError(f"{db} holds items of {len(origins)} eval runs; choose one with --db-origin: "
                              + "; ".join(repr(o) for o in origins))
        origin = origins[0]
    elif origin not in origins:
        raise ConfigError(f"--db-origin {origin!r} is not in {db}; it has: " + "; ".join(repr(o) for o in origins))
    items = [i for i in items if i["origin"] == origin]
    by_item: dict[int, list[dict]] = {}
    skipped = 0
    for v in votes:
        if v["item_id"] in {i["id"] for i in items}:
            if v["verdict"] == "skip":
                skipped += 1
                continue
            by_item.setdefault(v["item_id"], []).append(v)
    after = AnswerSet("after", Path(db))
    before = AnswerSet("before", Path(db))
    from prefloop.evaluate.answers import Answer

    rows = []
    left_wins = decisive = 0
    for item in items:
        key = prompt_key(item["prompt"])
        iid = str(item["id"])
        after.by_key[key] = Answer(iid, key, item["prompt"], item["response_a"], None, len(item["response_a"]), "stop",
                                   item["source_a"])
        before.by_key[key] = Answer(iid, key, item["prompt"], item["response_b"], None, len(item["response_b"]),
                                    "stop", item["source_b"])
        item_votes = by_item.get(item["id"], [])
        for v in item_votes:
            if v["verdict"] in ("a", "b"):
                decisive += 1
                left_wins += (v["verdict"] == "a") == (v["shown_order"] == "ab")
        if not item_votes:
            rows.append({"id": iid, "key": key, "outcome": None, "votes": 0})
            continue
        score = float(np.mean([VOTE_SCORE[v["verdict"]] for v in item_votes]))
        outcome = "win" if score > 0.5 else "loss" if score < 0.5 else "tie"
        rows.append({"id": iid, "key": key, "outcome": outcome, "preference": score, "votes": len(item_votes)})
    unvoted = sum(1 for r in rows if r["outcome"] is None)
    human = {"kind": "human", "store": str(db), "origin": origin, "items": len(items),
             "votes": sum(len(v) for v in by_item.values()), "skipped_votes": skipped, "items_without_votes": unvoted,
             "consistency_rate": None, "first_position_rate": left_wins / decisive if decisive else None,
             "judgments": 0, "failed_judgments": 0}
    return rows, after, before, origin, human


# ------------------------------------------------------------------------------------------ command

def _sampling(temperature, top_p, max_new_tokens) -> dict:
    if not 0 <= temperature <= 2 or not 0 < top_p <= 1 or max_new_tokens < 1:
        raise ConfigError(f"need 0 <= --temperature <= 2, 0 < --top-p <= 1, --max-new-tokens >= 1; got "
                          f"{temperature}, {top_p}, {max_new_tokens}")
    return {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}


def _config_models(config: str | None) -> tuple[str | None, str | None]:
    """(base model, trained output_dir) a training config names, for --before/--after defaults."""
    if not config:
        return None, None
    from prefloop.config import load_config

    cfg = load_config(config)
    return cfg.model_name_or_path, cfg.output_dir


def winrate_command(out, before=None, after=None, prompts=None, config=None, judge=None, judge_model=None,
                    before_model_name=None, after_model_name=None, human_db=None, from_db=None, db_origin=None,
                    models=None, model_names=None, baseline=None, baseline_model_name=None,
                    criteria="helpfulness,accuracy,clarity,safety", template_file=None, judge_max_tokens=512,
                    temperature=0.7, top_p=1.0, max_new_tokens=256, seed=0, resamples=stats.DEFAULT_RESAMPLES,
                    batch_size=8, concurrency=8, api_key=None, limit=None, show_answers=10,
                    api_key_env=None, api_key_file=None) -> int:
    """`prefloop eval winrate`: see the module docstring; returns 0, or 1 when some judgments failed.

    Endpoint keys: `api_key` (Python callers), else the key named by `api_key_env` / `api_key_file`
    for this run's endpoints, else none ($OPENAI_API_KEY only for the OpenAI API; `endpoint.endpoint_api_key`)."""
    out_dir = check_out_dir(out)
    if api_key is None and (api_key_env or api_key_file):
        api_key = endpoint_api_key("", api_key_env, api_key_file)
    if resamples < 1:
        raise ConfigError(f"--resamples must be at least 1, got {resamples}")
    if from_db:
        return _from_db_command(out_dir, from_db, db_origin, resamples, seed, show_answers)
    if models:
        from prefloop.evaluate.leaderboard import leaderboard_command

        return leaderboard_command(out_dir, models, model_names, baseline, baseline_model_name, prompts, config,
                                   judge, judge_model, criteria, template_file, judge_max_tokens,
                                   _sampling(temperature, top_p, max_new_tokens), seed, resamples, batch_size,
                                   concurrency, api_key, limit)
    base, trained = _config_models(config)
    before, after = before or base, after or trained
    if not before or not after:
        raise ConfigError("give --before and --after (model directory, LoRA adapter directory or endpoint URL); with "
                          "--config they default to the config's model_name_or_path and output_dir")
    if bool(judge) == bool(human_db):
        raise ConfigError("give exactly one of --judge URL_OR_PATH (an LLM judge) and --human-db DB (people vote in "
                          "prefloop label; then run with --from-db DB)")
    sampling = _sampling(temperature, top_p, max_new_tokens)
    prompt_list, data = read_eval_prompts(prompts, config, limit)
    before_spec = ModelSpec.resolve(before, before_model_name, "--before")
    after_spec = ModelSpec.resolve(after, after_model_name, "--after")
    answers = {}
    for role, spec in (("before", before_spec), ("after", after_spec)):
        answers[role] = generate_answers(role, spec, prompt_list, out_dir, sampling, seed, api_key, batch_size,
                                         concurrency, option=f"--{role}")
    a, b = answers["after"], answers["before"]
    print(f"prefloop eval: answers: after {a.generated} generated, {a.from_cache} cached; before {b.generated} "
          f"generated, {b.from_cache} cached ({out_dir / 'answers'})", file=sys.stderr)
    if human_db:
        origin = origin_tag(after_spec, before_spec, data)
        added = put_into_store(human_db, prompt_list, a, b, origin)
        print(f"prefloop eval: {len(prompt_list)} comparison items in {human_db} ({added} new; origin {origin!r}). "
              f"Let people vote with: prefloop label --db {human_db}; then: prefloop eval winrate --from-db "
              f"{human_db} --out {out}", file=sys.stderr)
        return 0
    pj, judge_prompt = open_judge(judge, judge_model, criteria, template_file, out_dir, api_key, concurrency,
                                  judge_max_tokens, seed)
    rows = judge_both_orders(pj, prompt_list, a, b, "after vs before")
    js = usable_judge_stats(rows, judge, out_dir, f", --judge-max-tokens ({judge_max_tokens}) and the template")
    metrics, details = summarize(rows, a, b, resamples, seed, js)
    results = new_results("winrate", models={"after": after_spec.to_entry(a.endpoint_adaptations()),
                                             "before": before_spec.to_entry(b.endpoint_adaptations())},
                          data=data, judge=judge_entry(pj, judge_prompt, judge, judge_max_tokens, seed),
                          seeds={"generation": seed, "bootstrap": seed, "judge": seed},
                          config={"sampling": sampling, "resamples": resamples, "prompts": prompts,
                                  "train_config": config},
                          metrics=metrics, details=details)
    return _finish(results, prompt_list, a, b, out_dir, show_answers, js)


def _finish(results, prompt_list, a, b, out_dir, show_answers, js) -> int:
    path = write_results(out_dir, results)
    winrate_report(results, prompt_list, a, b, show_answers).write(out_dir)
    print_summary(results)
    print(f"prefloop eval winrate: wrote {path}, {out_dir / 'report.md'}, {out_dir / 'report.html'}", file=sys.stderr)
    failed_requests = sum(1 for r in results["details"]["per_prompt"] if r.get("errors"))
    if failed_requests:
        print(f"prefloop eval winrate: {failed_requests} prompt(s) had failed judge requests and are left out; run the "
              "same command again: finished judgments come from the cache", file=sys.stderr)
        return 1
    return 0


def _from_db_command(out_dir: Path, db: str, origin: str | None, resamples: int, seed: int, show_answers: int) -> int:
    rows, a, b, origin, human = rows_from_votes(db, origin)
    voted = [r for r in rows if r["outcome"] is not None]
    if not voted:
        raise DataError(f"none of the {len(rows)} items of {origin!r} in {db} has a vote yet; let people vote with "
                        f"prefloop label --db {db}")
    metrics, details = summarize(rows, a, b, resamples, seed, human)
    metrics["n_failed_judgments"] = 0
    names = origin[len(ORIGIN_PREFIX):].rsplit(" [", 1)[0].split(" vs ", 1)
    prompt_list = [Prompt(a.by_key[r["key"]].messages, r["id"], db) for r in rows]
    models = {"after": model_entry(name=names[0]), "before": model_entry(name=names[-1])}
    for entry in models.values():
        entry["endpoint_adaptations"] = None  # the answers came from the --human-db run: not known here
    results = new_results("winrate", models=models,
                          data={"path": str(db), "n": len(rows), "fingerprint": origin.rsplit("[", 1)[-1].rstrip("]")},
                          judge=human, seeds={"bootstrap": seed}, config={"resamples": resamples, "from_db": str(db)},
                          metrics=metrics, details=details)
    print(f"prefloop eval winrate: {human['votes']} votes on {len(voted)} of {len(rows)} items "
          f"({human['skipped_votes']} skips left out)", file=sys.stderr)
    return _finish(results, prompt_list, a, b, out_dir, show_answers, human)
