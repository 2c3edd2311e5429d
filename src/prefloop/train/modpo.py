"""MODPO's margin rewards (`pref_loss: modpo`): each frozen margin model's score gap per pair,
computed once before training, cached on disk like the reference log-probs, carried in the batch.

For margin model k (`modpo_margin_models[k]`), the gap of a pair is

    implicit reward (a LoRA adapter directory, or a causal LM directory), Zhou et al. 2023, sec. 4:
        r_k(x, y_c) - r_k(x, y_r) = beta * [(log pi_k(y_c|x) - log ref(y_c|x)) - (log pi_k(y_r|x) - log ref(y_r|x))]
    with beta the one the margin model was trained with (`margin_beta`: its saved prefloop_config.yaml's
    pref_beta; without one this run's pref_beta, the reference code's ImplicitRewardWrapper choice) and
    ref the margin model's own reference: the run's reference (whose log-probs are already cached),
    except in a round whose policy reference moved (`rounds` with `ref_update: previous`, round >= 2):
    r_k is objective k's reward and does not change when the policy's reference does, so there it stays
    the starting model the margin models were trained against (`margin_reference`, from
    train/rounds.py), whose log-probs go through the same cache;
    sequence-classification reward model (a directory whose config names a *ForSequenceClassification):
        r_k(x, y_c) - r_k(x, y_r) = score(x, y_c) - score(x, y_r)

The policy log-probs of an implicit-reward model are computed by the same code and cache as the
reference (`reference.precompute_reference`, split names "margin<k>-train" / "margin<k>-validation"),
so a MODPO step runs only the policy, as a DPO step does. The gaps land in each feature as
"margin_rewards" ([K] floats), which the collator stacks to [B, K] for `losses.modpo_loss`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch


def margin_model_kind(path: str) -> str:
    """"adapter" (LoRA adapter dir), "reward_model" (sequence classification) or "causal_lm"."""
    p = Path(path)
    if (p / "adapter_config.json").is_file():
        return "adapter"
    config = p / "config.json"
    if config.is_file():
        architectures = json.loads(config.read_text()).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            return "reward_model"
    return "causal_lm"


def margin_beta(path: str, index: int, beta: float, say) -> float:
    """The beta of margin model `index`'s implicit reward r_k = beta_k * log(pi_k / ref): a DPO model trained
    with beta_k estimates the reward at that scale (Rafailov et al. 2023; Zhou et al. 2023, sec. 4), so
    beta_k is its own `pref_beta` when its directory holds the prefloop_config.yaml it was trained with;
    else this run's `beta` (the reference code's choice: one beta for all), and that is said."""
    import yaml

    from prefloop.config import CONFIG_FILENAME
    from prefloop.data.schema import is_number

    saved = Path(path) / CONFIG_FILENAME
    own = None
    if saved.is_file():
        try:
            own = (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("pref_beta")
        except yaml.YAMLError:
            own = None
    if not is_number(own) or own <= 0:
        say(f"MODPO margin model {index}: no pref_beta it was trained with ({saved} is missing or has none); its "
            f"implicit reward uses this run's pref_beta {beta}, which is right only if it was trained with it")
        return beta
    if own != beta:
        say(f"MODPO margin model {index}: implicit reward at beta {own:g} (its own pref_beta, from {saved}), "
            f"not this run's {beta:g}")
    return float(own)


def _implicit_reward_gaps(path: str, kind: str, index: int, cfg, tokenizer, splits: dict, template_name: str,
                          autocast_dtype, device, say, reference_splits: dict) -> tuple[dict[str, list[float]], Counter]:
    from prefloop.models import Reference, load_causal_lm, weights_dtype
    from prefloop.train.reference import precompute_reference

    # in the reference's precision (pure_bf16: bf16 weights), so a margin model equal to the reference gives 0
    dtype = weights_dtype(cfg)
    if kind == "adapter":
        base = json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        model = load_causal_lm(base or cfg.model_name_or_path, dtype=dtype, adapter=path)
    else:
        model = load_causal_lm(path, dtype=dtype)
    model.to(device)
    margin_model = Reference(model, "separate", path)
    copies = {f"margin{index}-{split}": [dict(f) for f in features] for split, features in splits.items() if features}
    status = precompute_reference(margin_model, copies, cfg, tokenizer, template_name, autocast_dtype, device, log=say)
    counts = Counter(f"margin_{'reused' if v == 'cached' else v}" for k, v in status.items() if k != "seconds")
    beta = margin_beta(path, index, cfg.pref_beta, say)
    gaps = {}
    for split, features in reference_splits.items():
        if not features:
            continue
        gaps[split] = [beta * ((m["ref_chosen_logps"] - f["ref_chosen_logps"])
                                        - (m["ref_rejected_logps"] - f["ref_rejected_logps"]))
                       for m, f in zip(copies[f"margin{index}-{split}"], features, strict=True)]
    return gaps, counts


def _reward_model_gaps(path: str, index: int, cfg, splits: dict, split_pairs: dict, say) -> tuple[dict, Counter]:
    from prefloop.errors import ConfigError
    from prefloop.judge.reward import RewardModel
    from prefloop.train.reference import ReferenceCache, _sha, data_fingerprint, weights_fingerprint

    refused = [(pair.source or pair.id, extras) for split in splits for pair in split_pairs[split]
               for extras in [pair.answer_extras()] if extras]
    if refused:
        where, extras = refused[0]
        raise ConfigError(
            f"MODPO margin model {index} ({path}) is a reward model, which scores an answer's text only; "
            f"{len(refused)} pair(s) have answers with more than text (first at {where}: field(s) "
            f"{', '.join(extras)}), whose tool calls / reasoning / names it would not see. Use an adapter or "
            "causal-LM margin model (scored on the encoded turns), or leave those pairs out")
    rm = RewardModel(path, batch_size=cfg.per_device_eval_batch_size)
    cache = ReferenceCache(cfg.reference_cache_dir)
    weights = weights_fingerprint(rm.model, "reward_model")
    gaps, counts = {}, Counter()
    for split, features in splits.items():
        if not features:
            continue
        # the pair behind each feature by position (ids come from the data and may repeat)
        texts = [(p.prompt_messages(), p) for p in split_pairs[split]]
        key = _sha(weights, data_fingerprint(features),
                   json.dumps([[m, p.chosen, p.rejected] for m, p in texts], ensure_ascii=False))
        name = f"margin{index}-{split}"
        cached = cache.load(name, key, len(features))
        if cached is None:
            chosen = torch.tensor(rm.score([(m, p.chosen) for m, p in texts]))
            rejected = torch.tensor(rm.score([(m, p.rejected) for m, p in texts]))
            cache.save(name, key, chosen, rejected, metadata={"reward_model": path, "pairs": len(features)})
            counts["margin_computed"] += 1
            say(f"MODPO margin rewards ({split}, {len(features)} pairs) from reward model {path}: computed, "
                f"cached at {cache.path(name, key)}")
        else:
            chosen, rejected = cached
            counts["margin_reused"] += 1
            say(f"MODPO margin rewards ({split}, {len(features)} pairs): reused {cache.path(name, key)}")
        gaps[split] = (chosen - rejected).tolist()
    return gaps, counts


def _margin_reference_splits(margin_reference: dict, cfg, tokenizer, splits: dict, template_name: str,
                             autocast_dtype, device, say) -> tuple[dict[str, list[dict]], Counter]:
    """Copies of the splits' features carrying the log-probs of `margin_reference` ({"model", "adapter"}:
    the starting model of a rounds run) as ref_chosen_logps / ref_rejected_logps, through the reference
    cache (the split names are the run's, so round 1's cache files of the same data are reused)."""
    from prefloop.models import Reference, load_causal_lm, weights_dtype
    from prefloop.train.reference import precompute_reference

    path, adapter = margin_reference["model"], margin_reference.get("adapter")
    name = f"{path} + {adapter}" if adapter else path
    say(f"MODPO margin rewards are measured against the starting model {name} (the margin models' reference), "
        f"not this round's reference")
    model = load_causal_lm(path, dtype=weights_dtype(cfg), adapter=adapter).to(device)
    copies = {split: [dict(f) for f in features] for split, features in splits.items() if features}
    status = precompute_reference(Reference(model, "separate", name), copies, cfg, tokenizer, template_name,
                                  autocast_dtype, device, log=say)
    del model
    return copies, Counter(f"reference_{'reused' if v == 'cached' else v}" for k, v in status.items()
                           if k != "seconds")


def weights_note(weights: list[float], beta: float) -> str | None:
    """A note when `modpo_weights` do not sum to 1: the paper's weights lie on the simplex, and scaling
    them all by c is the same loss as the normalised weights with beta / c (z = beta/w0 * h - sum w_k/w0 * gap)."""
    total = float(sum(weights))
    if abs(total - 1.0) <= 1e-6:
        return None
    normalised = ", ".join(f"{w / total:g}" for w in weights)
    return (f"modpo_weights {list(weights)} sum to {total:g}, not 1 (MODPO's weights lie on the simplex): "
            f"trained as written, which is the same loss as modpo_weights [{normalised}] with pref_beta "
            f"{beta / total:g}; the policy's KL strength is beta / w0 = {beta / weights[0]:g}")


def prepare_margin_rewards(cfg, policy, tokenizer, data, autocast_dtype, device, say=print,
                           margin_reference: dict | None = None) -> Counter:
    """Attach "margin_rewards" ([K] gaps, one per `modpo_margin_models` entry) to every feature of
    `data` (train and validation). Needs the reference log-probs already attached (precompute_ref).
    `margin_reference` ({"model", "adapter"}): the model implicit margin rewards are measured against
    when it is not the run's reference (a rounds run's starting model, after the reference moved).

    Returns the counts of cache files reused / computed. Raises ConfigError when the reference
    log-probs are missing."""
    from prefloop.errors import ConfigError

    splits = {"train": data.train, "validation": data.val}
    if any(f.get("ref_chosen_logps") is None for features in splits.values() for f in features):
        raise ConfigError("pref_loss: modpo needs the cached reference log-probs (precompute_ref: true)")
    note = weights_note(cfg.modpo_weights, cfg.pref_beta)
    if note:
        say(note)
    per_model, counts = [], Counter()
    reference_splits = splits
    if margin_reference and any(margin_model_kind(p) != "reward_model" for p in cfg.modpo_margin_models):
        reference_splits, c = _margin_reference_splits(margin_reference, cfg, tokenizer, splits, data.template_name,
                                                       autocast_dtype, device, say)
        counts += c
    for index, path in enumerate(cfg.modpo_margin_models, 1):
        kind = margin_model_kind(path)
        say(f"MODPO margin model {index}: {path} ({kind.replace('_', ' ')}), weight {cfg.modpo_weights[index]}")
        if kind == "reward_model":
            gaps, c = _reward_model_gaps(path, index, cfg, splits, data.split_pairs, say)
        else:
            gaps, c = _implicit_reward_gaps(path, kind, index, cfg, tokenizer, splits, data.template_name,
                                            autocast_dtype, device, say, reference_splits)
        per_model.append(gaps)
        counts += c
    for split, features in splits.items():
        for i, f in enumerate(features):
            f["margin_rewards"] = [gaps[split][i] for gaps in per_model]
    return counts
