"""`prefloop eval prefs`: held-out preference accuracy of a policy on preference pairs.

For every pair (prompt x, chosen y_w, rejected y_l) the summed response log-probs of the policy
pi and of its reference pi_ref come from the trainer's own log-prob path (`train/logps.py` through
`train/reference.compute_reference_logps`, the one model call site), on pairs read and encoded by
the data layer exactly as training reads them. From them:

- implicit reward (Rafailov et al. 2023, "Direct Preference Optimization", eq. 5):
  r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)); the pair is ranked correctly when
  r(x, y_w) > r(x, y_l), wrongly when <, and is a tie when equal (the policy *is* its reference,
  e.g. before training or a zero LoRA). `pref_accuracy` counts only correct rankings;
  `pref_ties` is the number of ties; `pref_accuracy_ties_half` counts a tie as half (the trainer's
  `eval_rewards/accuracies`);
- reward margin: mean of r(x, y_w) - r(x, y_l) (TRL's `rewards/margins`);
- reference-free ranking (SimPO's length-normalised likelihood, Meng et al. 2024): chosen ranked
  above rejected when its mean per-token log-prob under the policy is higher (the trainer's
  `eval_ranking/accuracies`); needs no reference;
- the same numbers per `source` (the pair's `source` field, or its file for pairs without one)
  and per dimension for pairs carrying `dimensions` (see `dimension_direction`).

The reference: with `--adapter` the base with its LoRA adapters disabled (no second copy, as in
training); otherwise `--reference MODEL`. Without either there is no implicit reward, only the
reference-free ranking, and the report says so.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefloop.errors import ConfigError, DataError

DEFAULT_BETA = 0.1
_AUTO_SOURCE = re.compile(r"[:#]\d+$")  # the loader's "file:line" / "file#record" default


@dataclass
class PrefsSetup:
    """What `eval prefs` runs on: policy, adapter, reference, data and how it is encoded."""

    model: str
    adapter: str | None
    reference: str | None
    data: str
    dataset_dir: str = "data"
    split: str = "all"  # "all" or "validation" (the held-out split of a training config)
    val_size: float = 0.0
    seed: int = 42
    template: str | None = None
    cutoff_len: int | None = 2048
    beta: float = DEFAULT_BETA
    max_samples: int | None = None
    config_path: str | None = None
    precision: str = "fp32"  # "fp32", "bf16" or "fp16": autocast of the forward passes, as in training
    model_option: str = "--model"  # what set `model` / `reference`, named in errors
    reference_option: str = "--reference"

    @property
    def autocast_dtype(self):
        import torch

        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]


def setup_from_config(config_path: str, model=None, adapter=None, reference=None, data=None, beta=None,
                      no_adapter: bool = False) -> PrefsSetup:
    """The held-out split, template, cutoff, beta and models of a training config; explicit options win.

    LoRA runs: the policy is `model_name_or_path` plus the adapter in `output_dir`; full/freeze runs:
    the trained model in `output_dir` against `ref_model` (default: the starting weights). `no_adapter`: the
    model alone (`model`, else the config's base) against the config's reference: a baseline's score."""
    from prefloop.config import load_config

    cfg = load_config(config_path)
    trained = Path(cfg.output_dir)
    if no_adapter:
        model = model or cfg.model_name_or_path
        reference = reference or cfg.ref_model or cfg.model_name_or_path
    elif cfg.finetuning_type == "lora":
        model = model or cfg.model_name_or_path
        if adapter is None and (trained / "adapter_config.json").is_file():
            adapter = str(trained)
        if adapter is None:
            print(f"prefloop eval prefs: {trained} holds no adapter yet (not trained?); evaluating the base model "
                  f"{model} (policy = reference: every pair ties)", file=sys.stderr)
            reference = reference or cfg.ref_model or cfg.model_name_or_path
    else:
        model = model or (str(trained) if (trained / "config.json").is_file() else cfg.model_name_or_path)
        reference = reference or cfg.ref_model or cfg.model_name_or_path
    if data is None and not cfg.val_size:
        raise ConfigError(f"{config_path}: val_size is 0, so the config has no held-out split; pass --data FILE "
                          f"with held-out pairs, or set val_size in the config")
    dataset = ",".join(cfg.dataset) if isinstance(cfg.dataset, list) else cfg.dataset
    return PrefsSetup(model=model, adapter=adapter, reference=reference, data=data or dataset,
                      dataset_dir=cfg.dataset_dir, split="all" if data else "validation",
                      val_size=cfg.val_size, seed=cfg.seed, template=cfg.template, cutoff_len=cfg.cutoff_len,
                      beta=beta if beta is not None else cfg.pref_beta, max_samples=cfg.max_samples,
                      config_path=config_path, precision=training_precision(cfg))


def training_precision(cfg) -> str:
    """The precision the config trains (and evaluates) in: "bf16", "fp16" or "fp32". `fp16: true` without
    CUDA is bf16 where the CPU has it, else fp32 (as `config.resolve_precision` decides for training).
    A LoRA trained under bf16 autocast can rank pairs differently when scored in fp32 (its small deltas
    are rounded away in bf16), so eval prefs scores as the trainer's evaluation did unless told otherwise."""
    import torch

    from prefloop.config import cpu_supports_bf16

    if cfg.bf16:
        return "bf16"
    if cfg.fp16:
        return "fp16" if torch.cuda.is_available() else ("bf16" if cpu_supports_bf16() else "fp32")
    return "fp32"


# ---------------------------------------------------------------------------------------------
# Data


def load_eval_pairs(setup: PrefsSetup, tokenizer, skip_bad_rows: bool = False):
    """(pairs kept after encoding, their encoded ids, the load and encode reports, template name)."""
    from prefloop.data.encode import encode_pairs
    from prefloop.data.loader import load_pairs, split_validation
    from prefloop.data.template import get_template

    loaded = load_pairs(setup.data, setup.dataset_dir, skip_bad_rows=skip_bad_rows, max_samples=setup.max_samples,
                        seed=setup.seed)
    pairs = loaded.pairs
    if setup.split == "validation":
        val_size = int(setup.val_size) if setup.val_size >= 1 else setup.val_size
        pairs = split_validation(pairs, val_size, setup.seed)[1]
    template = get_template(setup.template, tokenizer)
    encoded, report = encode_pairs(pairs, tokenizer, template, setup.cutoff_len)
    if not encoded:
        raise DataError(f"no pair of {setup.data!r} is left after encoding ({report.summary()}); raise --cutoff-len "
                        f"or check the data")
    kept = [pairs[e.index] for e in encoded]  # by position: ids can repeat (two files' "train:12")
    return kept, encoded, loaded, report, template.name


def source_group(pair) -> str:
    """The pair's `source`, or its file when the loader filled in "file:line"."""
    source = pair.source or "(none)"
    stripped = _AUTO_SOURCE.sub("", source)
    return Path(stripped).name if stripped != source and "." in Path(stripped).name else source


def dimension_direction(pair, name: str) -> int | None:
    """+1 when dimension `name` prefers the chosen response, -1 the rejected one, 0 no preference,
    None when the pair has no score for it.

    Accepted: {"name": {"chosen": s_w, "rejected": s_l}} (the labeling export and multi-objective
    data; the sign of s_w - s_l), or a number per dimension describing the pair as a whole (the
    direction is the pair's label, +1). Anything else is a DataError naming the pair."""
    entry = (pair.dimensions or {}).get(name)
    if entry is None:
        return None
    if isinstance(entry, dict) and "chosen" in entry and "rejected" in entry:
        try:
            gap = float(entry["chosen"]) - float(entry["rejected"])
        except (TypeError, ValueError):
            gap = math.nan
        if math.isfinite(gap):
            return (gap > 0) - (gap < 0)
    elif isinstance(entry, (int, float)) and not isinstance(entry, bool):
        return 1
    raise DataError(f"{pair.source or pair.id}: field 'dimensions.{name}': {entry!r} is neither a number nor "
                    f"{{\"chosen\": score, \"rejected\": score}} -> fix the scores of this dimension")


# ---------------------------------------------------------------------------------------------
# Numbers


@dataclass
class PairLogps:
    """Summed response log-probs [N] (policy and, when there is one, reference) and token counts [N]."""

    policy_chosen: np.ndarray
    policy_rejected: np.ndarray
    chosen_tokens: np.ndarray
    rejected_tokens: np.ndarray
    ref_chosen: np.ndarray | None = None
    ref_rejected: np.ndarray | None = None


def summarize(logps: PairLogps, beta: float, mask: np.ndarray | None = None) -> dict:
    """Accuracies, ties and margins over the pairs selected by `mask` (all when None); see the module doc.

    `flip` semantics are the caller's: pass logps whose chosen side is the preferred one."""
    sel = np.ones(len(logps.policy_chosen), bool) if mask is None else mask
    n = int(sel.sum())
    out: dict = {"n_pairs": n}
    if n == 0:
        return out
    chosen_mean = logps.policy_chosen[sel] / np.maximum(logps.chosen_tokens[sel], 1)
    rejected_mean = logps.policy_rejected[sel] / np.maximum(logps.rejected_tokens[sel], 1)
    out["ref_free_accuracy"] = float(np.mean(chosen_mean > rejected_mean))
    out["ref_free_ties"] = int(np.sum(chosen_mean == rejected_mean))
    if logps.ref_chosen is not None:
        chosen_reward = beta * (logps.policy_chosen[sel] - logps.ref_chosen[sel])
        rejected_reward = beta * (logps.policy_rejected[sel] - logps.ref_rejected[sel])
        margin = chosen_reward - rejected_reward
        wins, ties = int(np.sum(margin > 0)), int(np.sum(margin == 0))
        out.update(pref_accuracy=wins / n, pref_ties=ties, pref_losses=n - wins - ties,
                   pref_accuracy_ties_half=(wins + 0.5 * ties) / n, reward_margin=float(np.mean(margin)),
                   reward_chosen=float(np.mean(chosen_reward)), reward_rejected=float(np.mean(rejected_reward)))
    return out


def breakdowns(pairs, logps: PairLogps, beta: float) -> dict:
    """Per-source and per-dimension tables (dimension k: its pairs with a preference, oriented so that
    the response dimension k prefers is the 'chosen' one)."""
    sources = [source_group(p) for p in pairs]
    per_source = {s: summarize(logps, beta, np.array([x == s for x in sources])) for s in sorted(set(sources))}
    names = sorted({name for p in pairs for name in (p.dimensions or {})})
    per_dimension = {}
    for name in names:
        direction = np.array([dimension_direction(p, name) or 0 for p in pairs])
        carried = sum(1 for p in pairs if (p.dimensions or {}).get(name) is not None)
        flip = direction < 0
        oriented = PairLogps(
            np.where(flip, logps.policy_rejected, logps.policy_chosen), np.where(flip, logps.policy_chosen, logps.policy_rejected),
            np.where(flip, logps.rejected_tokens, logps.chosen_tokens), np.where(flip, logps.chosen_tokens, logps.rejected_tokens),
            None if logps.ref_chosen is None else np.where(flip, logps.ref_rejected, logps.ref_chosen),
            None if logps.ref_chosen is None else np.where(flip, logps.ref_chosen, logps.ref_rejected))
        row = summarize(oriented, beta, direction != 0)
        row.update(n_with_scores=carried, n_no_preference=carried - int(np.sum(direction != 0)),
                   n_against_label=int(np.sum(flip)))
        per_dimension[name] = row
    return {"per_source": per_source, "per_dimension": per_dimension}


def compute_logps(policy_model, reference, encoded, pad_token_id: int, batch_size: int, chunk_size: int,
                  layout: str = "packed_prefix_shared", autocast_dtype=None) -> PairLogps:
    """Policy (and reference) summed log-probs of every encoded pair, through the trainer's log-prob loop,
    under `autocast_dtype` (None: fp32)."""
    import torch

    from prefloop.models import Reference
    from prefloop.train.dataset import to_feature
    from prefloop.train.reference import compute_reference_logps

    features = [to_feature(p, i) for i, p in enumerate(encoded)]
    policy = Reference(policy_model, "separate", "policy")  # runs the model as it is, no context
    with torch.no_grad():
        chosen, rejected = compute_reference_logps(policy, features, layout, pad_token_id, batch_size, chunk_size,
                                                   autocast_dtype, desc="policy", what="log-probs")
        ref = None
        if reference is not None and reference.kind == "policy_start":
            ref = chosen, rejected  # the same weights give the same numbers: every pair ties
        elif reference is not None:
            ref = compute_reference_logps(reference, features, layout, pad_token_id, batch_size, chunk_size,
                                          autocast_dtype, desc="reference", what="log-probs")
    counts = [np.array([len(getattr(p, f"{side}_ids")) for p in encoded], dtype=np.float64) for side in ("chosen", "rejected")]
    return PairLogps(chosen.double().numpy(), rejected.double().numpy(), *counts,
                     *(None, None) if ref is None else (ref[0].double().numpy(), ref[1].double().numpy()))


# ---------------------------------------------------------------------------------------------
# Command


def load_models(setup: PrefsSetup):
    """(tokenizer, policy model, Reference or None)."""
    from prefloop.models import (Reference, check_same_vocabulary, load_causal_lm, load_tokenizer, same_model_path,
                                 tokenizer_dir)

    source = tokenizer_dir(setup.model, setup.adapter)
    tokenizer = load_tokenizer(source, key="--adapter" if source == setup.adapter else setup.model_option)
    from prefloop.evaluate.scoring import scoring_device

    device = scoring_device()
    policy = load_causal_lm(setup.model, adapter=setup.adapter, device=device, key=setup.model_option)
    if setup.adapter and (setup.reference is None or same_model_path(setup.reference, setup.model)):
        return tokenizer, policy, Reference(policy, "adapters_disabled", setup.model)
    if setup.reference is None:
        return tokenizer, policy, None
    if same_model_path(setup.reference, setup.model):  # the policy is its own reference: no second copy
        return tokenizer, policy, Reference(policy, "policy_start", setup.model)
    check_same_vocabulary(tokenizer, load_tokenizer(setup.reference, key=setup.reference_option), setup.reference)
    return tokenizer, policy, Reference(load_causal_lm(setup.reference, device=device, key=setup.reference_option),
                                        "separate", setup.reference)


def evaluate_prefs(setup: PrefsSetup, batch_size: int = 8, chunk_size: int = 1024, skip_bad_rows: bool = False) -> dict:
    """Run the evaluation; returns the results dict of the shared contract (kind "prefs")."""
    from prefloop.evaluate.results import new_results
    from prefloop.train.dataset import to_feature
    from prefloop.train.reference import data_fingerprint

    if setup.beta <= 0:
        raise ConfigError(f"--beta must be > 0 (the DPO beta the model was trained with), got {setup.beta}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    tokenizer, policy, reference = load_models(setup)
    pairs, encoded, loaded, report, template_name = load_eval_pairs(setup, tokenizer, skip_bad_rows)
    logps = compute_logps(policy, reference, encoded, tokenizer.pad_token_id, batch_size, chunk_size,
                          autocast_dtype=setup.autocast_dtype)
    fingerprint = data_fingerprint([to_feature(e, i) for i, e in enumerate(encoded)])[:16]  # the encoded token ids
    metrics = summarize(logps, setup.beta)
    tables = breakdowns(pairs, logps, setup.beta)
    per_pair = [{"id": e.id, "source": p.source, "policy_chosen": float(logps.policy_chosen[i]),
                 "policy_rejected": float(logps.policy_rejected[i]),
                 "chosen_tokens": int(logps.chosen_tokens[i]), "rejected_tokens": int(logps.rejected_tokens[i]),
                 **({} if reference is None else {"ref_chosen": float(logps.ref_chosen[i]),
                                                  "ref_rejected": float(logps.ref_rejected[i])})}
                for i, (p, e) in enumerate(zip(pairs, encoded))]
    results = new_results(
        kind="prefs", benchmark=None,
        models={"model": {"path": setup.model, "adapter": setup.adapter, "url": None, "name": Path(setup.model).name,
                          "fingerprint": None}},
        data={"path": setup.data, "n": len(encoded), "split": setup.split, "files": loaded.files, "fingerprint": fingerprint},
        config={"beta": setup.beta, "reference": None if reference is None else reference.describe(),
                "template": template_name, "cutoff_len": setup.cutoff_len, "val_size": setup.val_size,
                "training_config": setup.config_path, "batch_size": batch_size, "precision": setup.precision},
        seeds={"split": setup.seed} if setup.split == "validation" else {},
        metrics={k: v for k, v in metrics.items() if not isinstance(v, bool)},
        details={"skipped_rows": loaded.skipped.to_dict(), "encoding": report.summary(),
                 "dropped_in_encoding": len(report.dropped), **tables, "pairs": per_pair,
                 "no_reference": reference is None})
    return results


def prefs_lines(results: dict) -> list[str]:
    """What a person reads on the console."""
    m, d = results["metrics"], results["details"]
    lines = [f"Held-out pairs: {m['n_pairs']} ({d['encoding']})"]
    if "pref_accuracy" in m:
        lines.append(f"Preference accuracy (implicit reward, beta {results['config']['beta']}): "
                     f"{m['pref_accuracy']:.3f} correct, {m['pref_ties']} tie(s), {m['pref_losses']} wrong "
                     f"(ties as half: {m['pref_accuracy_ties_half']:.3f}); reward margin {m['reward_margin']:+.4f}")
    else:
        lines.append("Preference accuracy (implicit reward): not computed, no reference (give --adapter or --reference)")
    lines.append(f"Reference-free ranking accuracy (mean log-prob per token): {m['ref_free_accuracy']:.3f}")
    for title, table in (("source", d["per_source"]), ("dimension", d["per_dimension"])):
        if len(table) > 1 or title == "dimension":
            for name, row in table.items():
                acc = f"pref {row['pref_accuracy']:.3f}, " if "pref_accuracy" in row else ""
                if row["n_pairs"]:
                    lines.append(f"  {title} {name}: {row['n_pairs']} pairs, {acc}ref-free {row['ref_free_accuracy']:.3f}")
                else:
                    lines.append(f"  {title} {name}: no pair with a preference on it")
    return lines


def prefs_report(results: dict):
    """The report people read: summary, per-source and per-dimension tables, a per-dimension accuracy plot."""
    from prefloop.evaluate.report import Report, percent

    m, d, c = results["metrics"], results["details"], results["config"]
    model = results["models"]["model"]
    report = Report("Held-out preference accuracy",
                    f"{model['path']}" + (f" + adapter {model['adapter']}" if model["adapter"] else "")
                    + f" on {results['data']['path']} ({m['n_pairs']} pairs)")
    summary = report.section("Summary", f"Reference: {c['reference'] or 'none (reference-free ranking only)'}; "
                                        f"beta {c['beta']}; template {c['template']}; {d['encoding'].rstrip('.')}.")
    rows = [["pairs", m["n_pairs"]]]
    if "pref_accuracy" in m:
        rows += [["preference accuracy (implicit reward, ties apart)", percent(m["pref_accuracy"])],
                 ["ties (policy reward equal on both)", m["pref_ties"]], ["wrong", m["pref_losses"]],
                 ["accuracy with ties as half (trainer's eval_rewards/accuracies)", percent(m["pref_accuracy_ties_half"])],
                 ["mean reward margin", f"{m['reward_margin']:+.4f}"],
                 ["mean reward chosen / rejected", f"{m['reward_chosen']:+.4f} / {m['reward_rejected']:+.4f}"]]
    else:
        summary.warning("No reference model: the implicit reward needs one. Give --adapter (reference = the base "
                        "with adapters disabled) or --reference MODEL.")
    rows.append(["reference-free ranking accuracy (mean log-prob per token)", percent(m["ref_free_accuracy"])])
    summary.table(["metric", "value"], rows)
    if d["skipped_rows"]["count"] or d["dropped_in_encoding"]:
        summary.warning(f"{d['skipped_rows']['count']} unreadable row(s) skipped, {d['dropped_in_encoding']} pair(s) "
                        f"dropped in encoding: they are not in these numbers.")
    for title, key in (("Per source", "per_source"), ("Per dimension", "per_dimension")):
        table = d[key]
        if not table:
            continue
        section = report.section(title, None if key == "per_source" else
                                 "Pairs a dimension has a preference on, oriented so that the response the "
                                 "dimension prefers counts as chosen.")
        section.table([key[4:], "pairs", "preference accuracy", "ties", "reward margin", "reference-free accuracy"],
                      [[name, row["n_pairs"], percent(row.get("pref_accuracy")), row.get("pref_ties"),
                        row.get("reward_margin"), percent(row.get("ref_free_accuracy"))] for name, row in table.items()],
                      digits=4)
        if key == "per_dimension":
            section.figure("per_dimension_accuracy", _accuracy_bars(table), "Accuracy per dimension")
    return report


def _accuracy_bars(table: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.2))
    x = np.arange(len(names))
    implicit = [table[n].get("pref_accuracy", np.nan) for n in names]
    free = [table[n].get("ref_free_accuracy", np.nan) for n in names]
    ax.bar(x - 0.2, implicit, 0.4, label="implicit reward")
    ax.bar(x + 0.2, free, 0.4, label="reference-free")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    return fig


def write_outputs(out: str, results: dict, report) -> list[Path]:
    """results.json (the shared contract) and report.md/report.html in `out`."""
    from prefloop.evaluate.results import write_results

    paths = [write_results(out, results)]
    paths += list(report.write(out).values())
    return paths


def prefs_command(model=None, adapter=None, reference=None, data=None, config=None, out="eval/prefs", beta=None,
                  template=None, cutoff_len=None, dataset_dir="data", batch_size=8, skip_bad_rows=False,
                  precision="auto", no_adapter=False) -> int:
    """`prefloop eval prefs`: writes results.json, report.md and report.html into `out`. `no_adapter`: with a
    config, score the model alone, not the adapter its output_dir holds (a baseline such as the champion)."""
    from prefloop.evaluate.checks import check_model_path
    from prefloop.evaluate.results import check_out_dir

    check_out_dir(out)
    if no_adapter and adapter:
        raise ConfigError("--no-adapter and --adapter contradict each other; give one")
    if adapter and reference:
        raise ConfigError("--reference works only without --adapter: with --adapter the reference is the base "
                          "model (--model) with the adapters disabled; drop --reference, or drop --adapter and give "
                          "a merged policy as --model")
    if cutoff_len is not None and cutoff_len < 1:
        raise ConfigError(f"--cutoff-len must be at least 1, got {cutoff_len}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if config:
        setup = setup_from_config(config, model, adapter, reference, data, beta, no_adapter=no_adapter)
    else:
        if not model or not data:
            raise ConfigError("eval prefs needs --model and --data (or --config TRAIN.yaml for a training run's "
                              "held-out split)")
        setup = PrefsSetup(model=model, adapter=adapter, reference=reference, data=data, dataset_dir=dataset_dir,
                           beta=DEFAULT_BETA if beta is None else beta)
    if config:
        if not model:
            setup.model_option = f"model_name_or_path (in {config})"
        if not reference:
            setup.reference_option = f"ref_model or model_name_or_path (in {config})"
    check_model_path(setup.model, setup.model_option)
    check_model_path(setup.reference, setup.reference_option)
    if template is not None:
        setup.template = template
    if cutoff_len is not None:
        setup.cutoff_len = cutoff_len
    if precision != "auto":
        setup.precision = precision
    print(f"Scoring in {setup.precision}" + (" (as the training config trains and evaluates)"
                                             if config and precision == "auto" else ""))
    results = evaluate_prefs(setup, batch_size=batch_size, skip_bad_rows=skip_bad_rows)
    for line in prefs_lines(results):
        print(line)
    paths = write_outputs(out, results, prefs_report(results))
    print(f"Wrote {', '.join(str(p) for p in paths)}")
    return 0
