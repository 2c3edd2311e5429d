"""`prefloop eval winrate --models A,B,C --baseline X`: a Bradley–Terry leaderboard against one baseline.

Every model answers the same prompts (cached per model under OUT/answers/), every model is judged against
the baseline in both orders (disagreement = tie), and `stats.bradley_terry_intervals` fits the ratings
with a paired bootstrap over prompts (Arena-Hard-Auto's method). Each model's win rate against the
baseline (ties as half, with its interval) and LC win rate are reported beside its rating.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefloop import stats
from prefloop.errors import ConfigError
from prefloop.evaluate.answers import ModelSpec, generate_answers
from prefloop.evaluate.report import Report, endpoint_adaptation_notes, percent
from prefloop.evaluate.results import new_results, write_results
from prefloop.evaluate.winrate import (_judge_stats, judge_adaptations, judge_both_orders, open_judge,
                                       read_eval_prompts, summarize)


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",")]


def leaderboard_command(out_dir: Path, models: str, model_names: str | None, baseline: str | None,
                        baseline_model_name: str | None, prompts, config, judge, judge_model, criteria, template_file,
                        judge_max_tokens: int, sampling: dict, seed: int, resamples: int, batch_size: int,
                        concurrency: int, api_key, limit) -> int:
    targets = [t for t in _split(models) if t]
    names = _split(model_names) if model_names else [""] * len(targets)
    if not baseline:
        raise ConfigError("--models needs --baseline MODEL_OR_URL: every model is judged against it")
    if not judge:
        raise ConfigError("--models needs --judge URL_OR_PATH (a leaderboard from human votes is not supported; use "
                          "--human-db with --before/--after for one pair)")
    if len(names) != len(targets):
        raise ConfigError(f"--model-names has {len(names)} entries for {len(targets)} --models; give one per model "
                          "(empty for local models), e.g. --model-names ',gpt-4o,'")
    if not targets:
        raise ConfigError("--models is empty; give a comma-separated list of model directories or endpoint URLs")
    specs = [ModelSpec.resolve(t, n or None, "--models") for t, n in zip(targets, names)]
    base_spec = ModelSpec.resolve(baseline, baseline_model_name, "--baseline")
    labels = [s.label() for s in specs]
    if len(set(labels + [base_spec.label()])) != len(labels) + 1:
        raise ConfigError(f"models and baseline need distinct names, got {labels} and baseline {base_spec.label()!r}; "
                          "give endpoint models distinct --model-names or use distinct directories")
    prompt_list, data = read_eval_prompts(prompts, config, limit)
    base_answers = generate_answers("baseline", base_spec, prompt_list, out_dir, sampling, seed, api_key, batch_size,
                                    concurrency, "--baseline")
    answers = {label: generate_answers(f"model-{i}-{_safe(label)}", spec, prompt_list, out_dir, sampling, seed,
                                       api_key, batch_size, concurrency, "--models")
               for i, (label, spec) in enumerate(zip(labels, specs))}
    pj, judge_prompt = open_judge(judge, judge_model, criteria, template_file, out_dir, api_key, concurrency,
                                  judge_max_tokens, seed)
    base_label = base_spec.label()
    per_model, battles_by_prompt = {}, [[] for _ in prompt_list]
    failed = 0
    for label in labels:
        rows = judge_both_orders(pj, prompt_list, answers[label], base_answers, f"{label} vs {base_label}")
        js = _judge_stats(rows)
        metrics, details = summarize(rows, answers[label], base_answers, resamples, seed, js)
        per_model[label] = {"metrics": metrics, "lc": details["lc"], "judge_stats": js,
                            "per_prompt": details["per_prompt"]}
        failed += sum(1 for r in rows if r["errors"])
        for i, r in enumerate(rows):
            if r["outcome"] is not None:
                battles_by_prompt[i].append((label, base_label, stats.OUTCOME_SCORES[r["outcome"]]))
    board = stats.bradley_terry_intervals(battles_by_prompt, base_label, resamples, seed)
    metrics = {"n_prompts": len(prompt_list)}
    for label in [base_label] + labels:
        b = board.get(label, {})
        metrics[f"rating/{label}"] = b.get("rating")
        metrics[f"rating_ci_low/{label}"] = b.get("low")
        metrics[f"rating_ci_high/{label}"] = b.get("high")
        if label in per_model:
            m = per_model[label]["metrics"]
            for k in ("win_rate", "win_rate_ci_low", "win_rate_ci_high", "win_rate_se", "raw_win_rate", "lc_win_rate",
                      "lc_win_rate_se", "judge_consistency", "n_failed_judgments", "n_excluded_prompts"):
                metrics[f"{k}/{label}"] = m[k]
    results = new_results(
        "leaderboard",
        models={**{label: spec.to_entry(answers[label].endpoint_adaptations()) for label, spec in zip(labels, specs)},
                base_label: base_spec.to_entry(base_answers.endpoint_adaptations())},
        data=data, judge={"name": pj.client.name, "target": judge, "template": judge_prompt.origin,
                          "criteria": list(judge_prompt.criteria), "max_tokens": judge_max_tokens,
                          "endpoint_adaptations": judge_adaptations(pj), "usage": pj.client.usage.to_dict()},
        seeds={"generation": seed, "bootstrap": seed, "judge": seed},
        config={"sampling": sampling, "resamples": resamples, "baseline": base_label, "prompts": prompts,
                "train_config": config},
        metrics=metrics, details={"leaderboard": board, "per_model": per_model})
    path = write_results(out_dir, results)
    leaderboard_report(results).write(out_dir)
    print(f"prefloop eval winrate: leaderboard against {base_label} on {len(prompt_list)} prompts:", file=sys.stderr)
    for label, b in sorted(board.items(), key=lambda kv: -kv[1]["rating"]):
        print(f"  {label:30s} {b['rating']:7.1f} [{b['low']:7.1f}, {b['high']:7.1f}]  win rate vs baseline "
              f"{percent(b['win_rate_vs_baseline'])}", file=sys.stderr)
    for note in endpoint_adaptation_notes(results):
        print(f"  warning: {note}", file=sys.stderr)
    print(f"prefloop eval winrate: wrote {path}, report.md and report.html", file=sys.stderr)
    if failed:
        print(f"prefloop eval winrate: {failed} comparison(s) had failed judge requests and are left out; run the same "
              "command again: finished judgments come from the cache", file=sys.stderr)
        return 1
    return 0


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)[:60]


def leaderboard_report(results: dict) -> Report:
    """Leaderboard table (rating with interval, win rate and LC win rate against the baseline) and a plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = results["details"]["leaderboard"]
    per_model = results["details"]["per_model"]
    base = results["config"]["baseline"]
    report = Report(f"Leaderboard against {base}", f"{results['data']['n']} prompts from {results['data']['path']}; "
                    f"judge {results['judge']['name']}; prefloop {results['prefloop_version']}, {results['created']}")
    s = report.section("Bradley–Terry ratings", (
        "Ratings on the Elo scale (baseline = 1000), fitted as Arena-Hard-Auto does (logistic regression without "
        "intercept; a tie is half a win for each side), with 95% intervals from a bootstrap over prompts."))
    ordered = sorted(board.items(), key=lambda kv: -kv[1]["rating"])
    rows = []
    for rank, (label, b) in enumerate(ordered, 1):
        m = per_model.get(label, {}).get("metrics", {})
        rows.append([rank, label, round(b["rating"], 1), f"[{b['low']:.1f}, {b['high']:.1f}]",
                     percent(m.get("win_rate")) if m else "(baseline)",
                     f"[{percent(m.get('win_rate_ci_low'))}, {percent(m.get('win_rate_ci_high'))}]" if m else "",
                     percent(m.get("lc_win_rate")) if m else "", percent(m.get("judge_consistency")) if m else ""])
    s.table(["rank", "model", "rating", "95% interval", "win rate vs baseline", "95% interval", "LC win rate",
             "judge consistency"], rows)
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(ordered)))
    labels = [label for label, _ in ordered][::-1]
    values = [board[label]["rating"] for label in labels]
    err = [[board[label]["rating"] - board[label]["low"] for label in labels],
           [board[label]["high"] - board[label]["rating"] for label in labels]]
    ax.errorbar(values, range(len(labels)), xerr=err, fmt="o", capsize=5)
    ax.set_yticks(range(len(labels)), labels)
    ax.axvline(1000, color="k", lw=0.8, ls="--")
    ax.set_xlabel("Bradley–Terry rating (baseline 1000)")
    fig.tight_layout()
    s.figure("leaderboard", fig, "ratings with 95% bootstrap intervals")
    for note in endpoint_adaptation_notes(results):
        s.warning(note)
    for label, info in per_model.items():
        if info["lc"].get("warning"):
            s.warning(f"{label}: {info['lc']['warning']}")
    return report
