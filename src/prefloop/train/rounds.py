"""Iterative DPO: `rounds:` in one training config, each round a DPO run on its own data.

    round 1: initial model ──DPO(data 1)──► policy 1 ──DPO(data 2)──► policy 2 ──► ...

Round k trains in `output_dir/round-k` (adapter or model, metrics, plots, checkpoints) with the base
config plus the round's own keys (`config.round_configs`). It starts from round k-1's policy (LoRA:
the same adapter trained further, `adapter_name_or_path`; full/freeze: round k-1's saved model).
Its reference follows `ref_update`:
- `initial`: the starting model (or `ref_model`) in every round. Its log-probs never change, so each
  round's data is computed against it once and the cache (shared: `output_dir/ref_cache`) is reused
  by later rounds, resumed runs and the cross-round evaluation.
- `previous`: round k-1's policy (round 1: the starting model); recomputed every round.
- `sync`: TR-DPO (`train/sync.py`) inside each round; round k starts from round k-1's final mixed
  reference (`round-(k-1)/sync_reference`).
After every round its policy is evaluated on every round's validation split against the starting
model (implicit-reward accuracy, so forgetting of round 1's preference shows as a falling number),
and `output_dir/rounds_report.json` (plus `rounds_accuracy.png`) holds the table across rounds.

Every round's data is read first (`check_round_data`; a resumed run's finished rounds excepted): a round
without training pairs stops the run before round 1 trains, a round without new pairs is said loudly. With MODPO and `ref_update: previous`,
the margin models' implicit rewards stay measured against the starting model (`margin_reference`).

A killed run continues with `resume_from_checkpoint: true`: finished rounds are skipped (their
`round_result.json`), the interrupted round resumes from its last checkpoint at the right step.
`registry: NAME` registers each round's output as a version of NAME (run_training -> register_output):
this module passes the round's identity (index, name, and the run's id from `output_dir/rounds_run.json`,
new for a fresh run, kept when resumed), so round k's parent is round k-1's version of the same run and
a resumed run registers no round twice. `run_rounds(cfg, on_round_end=f)` calls f(RoundResult) after
each round with its output directory and its parent's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from prefloop.config import Config, round_configs, save_config, validate
from prefloop.errors import ConfigError

RESULT_FILE = "round_result.json"  # a finished round: trained and evaluated
METRICS_FILE = "round_metrics.json"  # trained; the cross-round evaluation may still be missing
REPORT_FILE = "rounds_report.json"
RUN_FILE = "rounds_run.json"  # the run's id: a resumed run keeps it (registry: one version per round and run)


@dataclass
class RoundResult:
    """One finished round: where it is, what it started from, what it measured."""

    index: int
    name: str
    output_dir: str
    parent: str | None  # the previous round's output_dir (None: the starting model)
    reference: str  # what the reference was
    metrics: dict
    heldout: dict  # validation split name -> {"accuracy", "ranking_accuracy", "margin", "pairs"}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def round_dir(cfg: Config, index: int) -> Path:
    return Path(cfg.output_dir) / f"round-{index}"


def round_name(cfg: Config, index: int) -> str:
    return str((cfg.rounds[index - 1] or {}).get("name") or f"round-{index}")


def start_adapter(cfg: Config) -> str | None:
    """The LoRA adapter of the initial reference: `ref_model_adapters`, or without `ref_model` the adapter
    the policy starts from (`adapter_name_or_path`: the SFT model is base + adapter), as
    `models.build_reference` takes it in round 1."""
    return cfg.ref_model_adapters or (None if cfg.ref_model else cfg.adapter_name_or_path)


def plan_round(cfg: Config, round_cfg: Config, index: int) -> tuple[Config, str]:
    """The Config round `index` trains with (policy chained, reference per ref_update), and a description
    of its reference."""
    out = round_dir(cfg, index)
    start = cfg.ref_model or cfg.model_name_or_path  # the initial reference
    changes = {"output_dir": str(out), "ref_cache_dir": str(cfg.reference_cache_dir), "rounds": None,
               "resume_from_checkpoint": None, "overwrite_output_dir": cfg.overwrite_output_dir}
    if index == 1:
        reference = f"initial model {start}" + (f" + {start_adapter(cfg)}" if start_adapter(cfg) else "")
        changes["ref_model"] = cfg.ref_model
    else:
        prev = round_dir(cfg, index - 1)
        lora = cfg.finetuning_type == "lora"
        if lora:
            changes["adapter_name_or_path"] = str(prev)
        else:
            changes["model_name_or_path"] = str(prev)
        if cfg.ref_update == "initial":
            changes["ref_model"], changes["ref_model_adapters"] = start, start_adapter(cfg)
            reference = f"initial model {start}" + (f" + {start_adapter(cfg)}" if start_adapter(cfg) else "")
        elif cfg.ref_update == "previous":
            if lora:
                changes["ref_model"], changes["ref_model_adapters"] = cfg.model_name_or_path, str(prev)
            else:
                changes["ref_model"] = str(prev)
            reference = f"round {index - 1}'s policy {prev}"
        else:
            from prefloop.train.sync import FINAL_DIR

            changes["ref_model"] = str(prev / FINAL_DIR)
            reference = f"round {index - 1}'s final TR-DPO reference {prev / FINAL_DIR}"
    if cfg.ref_update == "sync":
        reference += f", mixed with the policy every {round_cfg.ref_sync_steps} steps (TR-DPO)"
    planned = dataclasses.replace(round_cfg, **changes)
    return planned, reference


def margin_reference(cfg: Config, planned: Config, index: int) -> dict:
    """{"margin_reference": the starting model} for a MODPO round whose reference is not the starting model
    (ref_update: previous, round >= 2): a margin model's implicit reward beta * log(pi_k / ref) is measured
    against the model it was trained from, not against the policy's moving reference. Else {}."""
    losses = planned.pref_loss if isinstance(planned.pref_loss, list) else str(planned.pref_loss).split(",")
    if index == 1 or cfg.ref_update != "previous" or "modpo" not in [str(n).strip() for n in losses]:
        return {}
    return {"margin_reference": {"model": cfg.ref_model or cfg.model_name_or_path, "adapter": start_adapter(cfg)}}


def run_rounds(cfg: Config, on_round_end: Callable[[RoundResult], None] | None = None, say=print) -> dict:
    """Train every round of `cfg.rounds` in order; returns the cross-round report (also written to
    output_dir/rounds_report.json). Raises ConfigError when output_dir holds rounds and neither
    resume_from_checkpoint nor overwrite_output_dir is set."""
    from prefloop.train.run import _resume_value, run_training

    rounds = round_configs(cfg)
    out = Path(cfg.output_dir)
    value = _resume_value(cfg)  # the text "true"/"false" (quoted in YAML) is the boolean, as for one run
    resume = bool(value)
    if value not in (None, False, True):
        raise ConfigError("with rounds, resume_from_checkpoint is true (continue in the interrupted round at its last "
                          "checkpoint), not a path")
    used = [d for d in sorted(out.glob("round-*")) if d.is_dir() and any(d.iterdir())]
    if used and not (resume or cfg.overwrite_output_dir):
        raise ConfigError(f"output_dir {out} already holds rounds ({', '.join(d.name for d in used)}); set "
                          f"resume_from_checkpoint: true to continue the run, overwrite_output_dir: true to train "
                          f"again, or pick another output_dir")
    from prefloop.train.distributed import is_main_process

    main = is_main_process()
    say = say if main else (lambda *a, **k: None)
    # finished rounds (resumed run) are skipped below, so their data is not read again (it may have moved)
    finished = {i for i in range(1, len(rounds) + 1) if resume and (round_dir(cfg, i) / RESULT_FILE).is_file()}
    check_round_data(cfg, rounds, say, finished)  # before round 1 trains: a round without pairs fails now
    if main:  # after the data checks: a run that fails them leaves the earlier run's config in place
        save_config(cfg, out)
    run_id = rounds_run_id(out, resume)
    evaluator = CrossRoundEvaluator(cfg, rounds, say, finished)
    results: list[RoundResult] = []
    for index, round_cfg in enumerate(rounds, 1):
        name, rdir = round_name(cfg, index), round_dir(cfg, index)
        planned, reference = plan_round(cfg, round_cfg, index)
        say(f"\n=== Round {index}/{len(rounds)} ({name}): data {planned.dataset}; reference: {reference} ===")
        if index in finished:
            result = RoundResult(**json.loads((rdir / RESULT_FILE).read_text()))
            say(f"Round {index} finished earlier: {rdir / RESULT_FILE} (skipped)")
        else:
            for stale in (RESULT_FILE, METRICS_FILE):
                if not resume and (rdir / stale).exists():
                    (rdir / stale).unlink()
            if resume and (rdir / METRICS_FILE).is_file():
                metrics = json.loads((rdir / METRICS_FILE).read_text())
                say(f"Round {index} trained earlier ({rdir / METRICS_FILE}); evaluating it")
            else:
                planned = _resume_or_restart(planned, rdir, resume, say)
                validate(planned)
                metrics = run_training(planned, {"index": index, "name": name, "run": run_id,
                                                 "output_dir": str(out.resolve()),
                                                 **margin_reference(cfg, planned, index)})
                _write_json(rdir / METRICS_FILE, metrics)
            heldout = evaluator.evaluate(index, planned)
            result = RoundResult(index, name, str(rdir), str(round_dir(cfg, index - 1)) if index > 1 else None,
                                 reference, metrics, heldout)
            _write_json(rdir / RESULT_FILE, result.to_dict())
        results.append(result)
        if on_round_end is not None:
            on_round_end(result)
    report = build_report(cfg, results, evaluator.cache_counts, evaluator.left_out)
    _write_json(out / REPORT_FILE, report)
    say(render_report(report))
    if main:
        plot_rounds(report, out)
    return report


def _pair_key(pair) -> str:
    """A pair's content (prompt turns, both answers with their fields): the same pair in two rounds' data."""
    return json.dumps([pair.prompt_messages(), pair.answer("chosen").to_dict(), pair.answer("rejected").to_dict(),
                       pair.tools], sort_keys=True, ensure_ascii=False, default=str)


def check_round_data(cfg: Config, rounds: list[Config], say=print, finished: set[int] = frozenset()) -> list[dict]:
    """Read every round's data before round 1 trains (the rows only; encoding comes in the round) and say,
    per round, how many of its training pairs are new. Raises (DataError/ConfigError, naming `rounds[i]`,
    the round's name and its dataset) when a round's data cannot be read or leaves no pair to train on,
    so a bad last round stops the run before the first round's hours, not after them. A round whose
    training pairs were all trained on in earlier rounds is not a new round of data (iterative DPO, e.g.
    Xu et al. 2023 and Yuan et al. 2024, trains each round on new pairs): said loudly, trained as asked.
    Rounds in `finished` (a resumed run's rounds with round_result.json, which it skips) are not read: their
    data may have moved since, and their pairs do not count as seen for the later rounds' new-pair counts.
    Returns per round {"pairs", "train", "new", "seen_in"} (the counts the messages give), or {"finished": True}."""
    from prefloop.data.dimensions import apply_dimensions
    from prefloop.data.loader import load_pairs, split_validation
    from prefloop.data.registry import CONFIG_KEYS
    from prefloop.data.words import count, plural
    from prefloop.errors import DataError, PrefloopError

    seen: dict[str, int] = {}  # pair key -> first round that trained on it
    summary = []
    for index, rcfg in enumerate(rounds, 1):
        if index in finished:
            summary.append({"finished": True})
            continue
        name = round_name(cfg, index)
        dataset = ",".join(rcfg.dataset) if isinstance(rcfg.dataset, list) else rcfg.dataset
        where = f"rounds[{index}] (round {index}, {name}, dataset {dataset})"  # 1-based, as the config errors
        try:
            pairs = load_pairs(dataset, rcfg.dataset_dir, skip_bad_rows=rcfg.skip_bad_rows,
                               max_samples=rcfg.max_samples, allow_empty=True, options=CONFIG_KEYS,
                               seed=rcfg.seed).pairs
            if rcfg.pref_dimensions:
                pairs, _ = apply_dimensions(pairs, rcfg.pref_dimensions, rcfg.dimension_conflicts,
                                            rcfg.dimension_weighting)
            val_size = int(rcfg.val_size) if rcfg.val_size >= 1 else rcfg.val_size
            train = split_validation(pairs, val_size, rcfg.seed)[0] if val_size and pairs else pairs
        except PrefloopError as err:
            raise type(err)(f"{where}: {err}") from None
        if rcfg.do_train and not train:
            held = f" ({count(len(pairs), 'pair')}, all held out by val_size {rcfg.val_size})" if pairs else " (no pairs)"
            raise DataError(f"{where}: no pairs to train on{held}; give the round preference pairs, lower its "
                            f"val_size, or remove the round")
        keys = [_pair_key(p) for p in train]
        earlier = [seen[k] for k in keys if k in seen]
        new = len(keys) - len(earlier)
        if earlier:
            rounds_seen = plural("round", len(set(earlier))) + " " + ", ".join(str(r) for r in sorted(set(earlier)))
            if new == 0:
                say(f"Warning: round {index} ({name}) has no new pairs: all its {count(len(keys), 'training pair')} "
                    f"{plural('was', len(keys))} trained on in {rounds_seen}; it trains on them again (iterative "
                    f"DPO trains each round on new pairs: give it new data, or remove the round)")
            else:
                say(f"Note: round {index} ({name}): {len(earlier)} of its {count(len(keys), 'training pair')} "
                    f"{plural('was', len(earlier))} trained on in {rounds_seen}; {new} {plural('is', new)} new")
        for k in keys:
            seen.setdefault(k, index)
        summary.append({"pairs": len(pairs), "train": len(keys), "new": new, "seen_in": sorted(set(earlier))})
    return summary


def rounds_run_id(out: Path, resume: bool) -> str:
    """The id of this rounds run: read from output_dir/rounds_run.json when resuming, else new (and written)."""
    import uuid

    path = out / RUN_FILE
    if resume and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["run"]
    run_id = uuid.uuid4().hex
    _write_json(path, {"run": run_id})
    return run_id


def _resume_or_restart(planned: Config, rdir: Path, resume: bool, say) -> Config:
    """Resume the interrupted round at its last checkpoint, or restart it when it has none."""
    if not resume:
        return planned
    if any(rdir.glob("checkpoint-*")):
        from prefloop.train.run import RunComplete, checkpoint_to_resume

        resumed = dataclasses.replace(planned, resume_from_checkpoint=True)
        try:
            checkpoint_to_resume(resumed)
        except RunComplete:  # killed after its last step, before its results were written: train it again
            say(f"{rdir}: the round's last checkpoint is its last step, but the round did not finish (killed while "
                f"evaluating or saving); the round starts again")
            shutil.rmtree(rdir, ignore_errors=True)
            return planned
        say(f"Resuming round in {rdir} from its last checkpoint")
        return resumed
    if rdir.exists():
        say(f"{rdir} has no checkpoint: the round starts again")
        shutil.rmtree(rdir, ignore_errors=True)
    return planned


def _write_json(path: Path, data) -> None:
    """Write `data` as JSON to `path` through `output_files.write_atomically` (a killed run never leaves half
    a result; a symlinked `path` keeps pointing at its file). Only rank 0 writes under torchrun."""
    from prefloop.output_files import write_atomically
    from prefloop.train.distributed import is_main_process

    if not is_main_process():  # under torchrun every rank runs the rounds; rank 0 writes
        return
    write_atomically(path, json.dumps(data, indent=2, default=float))


# ---------------------------------------------------------------------------------------------
# Held-out accuracy of every round's policy on every round's validation split


class CrossRoundEvaluator:
    """Implicit-reward accuracy beta * [(pi_c - ref0_c) - (pi_r - ref0_r)] > 0 (ties count 0.5) and
    reference-free ranking accuracy (mean log-prob per token, chosen > rejected) of a round's policy on
    each round's validation split, against the starting model ref0. The starting model's log-probs go
    through the reference cache, so splits already computed in training are reused (counted). A round in
    `finished` (done in an earlier, resumed run) whose data can no longer be read has its split left out,
    said and listed in `left_out` (round name -> why) for the report; any other round's data must read."""

    def __init__(self, cfg: Config, rounds: list[Config], say, finished: set[int] = frozenset()):
        from collections import Counter

        from prefloop.config import resolve_precision

        self.cfg, self.rounds, self.say, self.finished = resolve_precision(cfg), rounds, say, finished
        self.left_out: dict[str, str] = {}
        self.cache_counts: Counter = Counter()
        self._splits: dict[int, tuple] | None = None
        self.autocast = torch.bfloat16 if self.cfg.bf16 else torch.float16 if self.cfg.fp16 else None

    def _load_splits(self, tokenizer) -> dict[int, tuple]:
        from prefloop.errors import PrefloopError
        from prefloop.train.run import load_data

        if self._splits is None:
            self._splits = {}
            for j, rcfg in enumerate(self.rounds, 1):
                if rcfg.val_size <= 0:
                    continue
                quiet = dataclasses.replace(rcfg, do_train=False, rounds=None,
                                            ref_cache_dir=str(self.cfg.reference_cache_dir))
                try:
                    data = load_data(quiet, tokenizer, lambda *a, **k: None)
                except PrefloopError as err:
                    if j not in self.finished:
                        raise
                    name = round_name(self.cfg, j)
                    self.left_out[name] = f"its data cannot be read now: {err}"
                    self.say(f"Warning: round {j} ({name}) finished in an earlier run, but its data cannot be read now "
                             f"({err}); its validation split is left out of the held-out accuracy of the rounds "
                             f"trained or evaluated in this run (restore the file for a full table)")
                    continue
                if data.val:
                    self._splits[j] = (quiet, data)
        return self._splits

    def evaluate(self, index: int, planned: Config) -> dict:
        from prefloop.data.dimensions import dimension_accuracy
        from prefloop.models import Reference, load_causal_lm, load_tokenizer, same_model_path
        from prefloop.train.losses import reward_accuracy
        from prefloop.train.reference import compute_reference_logps, precompute_reference

        cfg = self.cfg
        device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer = load_tokenizer(cfg.model_name_or_path)
        splits = self._load_splits(tokenizer)
        if not splits:
            self.say(f"Round {index}: no validation split in any round (val_size), so no held-out accuracy")
            return {}
        rdir = round_dir(cfg, index)
        start = cfg.ref_model or cfg.model_name_or_path
        lora = cfg.finetuning_type == "lora"
        policy = load_causal_lm(cfg.model_name_or_path, adapter=str(rdir)) if lora else load_causal_lm(str(rdir))
        policy.to(device)
        # The starting model as the training reference of round 1 was (same weights fingerprint -> same cache).
        adapter = start_adapter(cfg)
        if adapter:  # base + the adapter the first round started from, named as build_reference names it
            ref0 = Reference(load_causal_lm(start, adapter=adapter).to(device).eval(), "separate", f"{start} + {adapter}")
        elif lora and same_model_path(start, cfg.model_name_or_path):
            ref0 = Reference(policy, "adapters_disabled", start)
        else:
            ref0 = Reference(load_causal_lm(start).to(device), "frozen_copy", start)
        heldout = {}
        for j, (rcfg, data) in splits.items():
            features = [dict(f) for f in data.val]
            status = precompute_reference(ref0, {"validation": features}, rcfg, tokenizer, data.template_name,
                                          self.autocast, device, log=lambda *a, **k: None)
            self.cache_counts["reference_reused" if status["validation"] == "cached" else "reference_computed"] += 1
            pi_c, pi_r = compute_reference_logps(Reference(policy, "separate", str(rdir)), features, rcfg.layout,
                                                 tokenizer.pad_token_id, rcfg.per_device_eval_batch_size,
                                                 rcfg.logps_chunk_size, self.autocast, device, desc=f"round {j} val")
            ref_c = torch.tensor([f["ref_chosen_logps"] for f in features])
            ref_r = torch.tensor([f["ref_rejected_logps"] for f in features])
            margins = cfg.pref_beta * ((pi_c - ref_c) - (pi_r - ref_r))
            n_c = torch.tensor([len(f["chosen_ids"]) for f in features], dtype=torch.float32)
            n_r = torch.tensor([len(f["rejected_ids"]) for f in features], dtype=torch.float32)
            heldout[round_name(cfg, j)] = {
                "pairs": len(features),
                "accuracy": float(reward_accuracy(margins.float()).mean()),
                "ranking_accuracy": float((pi_c / n_c > pi_r / n_r).float().mean()),
                "margin": float(margins.mean()),
            }
            if data.dimension_names:
                heldout[round_name(cfg, j)]["dimensions"] = dimension_accuracy(
                    margins.tolist(), [f["dimension_agree"] for f in features], data.dimension_names)
        self.say(f"Round {index} held-out accuracy (vs the starting model): "
                 + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in heldout.items()))
        return heldout


# ---------------------------------------------------------------------------------------------
# The report across rounds


def build_report(cfg: Config, results: list[RoundResult], eval_cache, left_out: dict | None = None) -> dict:
    """The cross-round table (rounds_report.json): per round its losses, steps, cache use and held-out
    accuracy; `left_out`: validation splits this run could not evaluate on (round name -> why)."""
    rows = []
    for r in results:
        m = r.metrics
        rows.append({
            "round": r.index, "name": r.name, "output_dir": r.output_dir, "parent": r.parent,
            "reference": r.reference, "train_loss": m.get("train_loss"), "steps": _steps(r.output_dir),
            "eval_loss": m.get("eval_loss"), "eval_margin": m.get("eval_rewards/margins"),
            "eval_accuracy": m.get("eval_rewards/accuracies"),
            "cache": {k[len("cache/"):]: v for k, v in m.items() if k.startswith("cache/")},
            "heldout": r.heldout,
            "dimensions": {k[len("eval_rewards/accuracies/"):]: v for k, v in m.items()
                           if k.startswith("eval_rewards/accuracies/")},
        })
    totals: dict[str, int] = dict(eval_cache)
    for row in rows:
        for k, v in row["cache"].items():
            totals[k] = totals.get(k, 0) + int(v)
    report = {"ref_update": cfg.ref_update, "rounds": rows, "cache_totals": totals}
    if left_out:
        report["heldout_left_out"] = dict(left_out)
    return report


def _steps(output_dir: str) -> int | None:
    path = Path(output_dir) / "trainer_state.json"
    return json.loads(path.read_text()).get("global_step") if path.is_file() else None


def _splits(rows: list[dict]) -> list[str]:
    """The validation splits any round was evaluated on, in order of first appearance."""
    return list(dict.fromkeys(name for row in rows for name in row["heldout"]))


def render_report(report: dict) -> str:
    """The cross-round report as a table for the terminal."""
    from prefloop.data.words import count

    rows = report["rounds"]
    splits = _splits(rows)
    lines = ["", f"Rounds (ref_update: {report['ref_update']}): held-out preference accuracy against the starting "
                 f"model on each round's validation split"]
    header = f"  {'round':<16}{'steps':>6}{'train loss':>12}{'margin':>9}  " + "".join(f"{s[:14]:>15}" for s in splits)
    lines.append(header)
    for row in rows:
        margin = row["eval_margin"]
        cells = "".join(f"{row['heldout'][s]['accuracy']:>15.3f}" if s in row["heldout"] else f"{'-':>15}"
                        for s in splits)
        lines.append(f"  {row['round']:<3}{row['name'][:12]:<13}"
                     f"{row['steps'] if row['steps'] is not None else '-':>6}"
                     f"{row['train_loss'] if row['train_loss'] is None else format(row['train_loss'], '.4f'):>12}"
                     f"{'-' if margin is None else format(margin, '+.3f'):>9}  {cells}")
    totals = report["cache_totals"]
    lines.append(f"  reference cache: {count(totals.get('reference_reused', 0), 'split')} reused, "
                 f"{totals.get('reference_computed', 0)} computed"
                 + (f"; MODPO margin cache: {totals.get('margin_reused', 0)} reused, "
                    f"{totals.get('margin_computed', 0)} computed" if any(k.startswith("margin") for k in totals) else ""))
    for name, why in report.get("heldout_left_out", {}).items():
        lines.append(f"  {name}'s validation split left out in this run's evaluations ({why})")
    return "\n".join(lines)


def plot_rounds(report: dict, out: Path) -> Path | None:
    """rounds_accuracy.png: held-out accuracy on each round's validation split after each round."""
    rows = report["rounds"]
    splits = _splits(rows)
    if not splits:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [row["round"] for row in rows]
    for split in splits:
        ax.plot(x, [row["heldout"].get(split, {}).get("accuracy", float("nan")) for row in rows], marker="o",
                label=f"{split} validation")
    ax.set_xlabel("after round")
    ax.set_ylabel("held-out preference accuracy")
    ax.set_xticks(x)
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.set_title(f"Iterative DPO (ref_update: {report['ref_update']})")
    path = out / "rounds_accuracy.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
