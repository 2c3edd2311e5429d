"""`loop.yaml`: the one place the online loop's settings are read and checked.

Every key is known here; an unknown key, a wrong type or an impossible combination is a ConfigError
naming the file, the line and the key, raised before any step runs (exit code 2 from the CLI).

    name: smollm2                 # registry name (required): the champion is NAME@champion
    store: prefloop.sqlite        # the prefloop store serve logs into (relative to loop.yaml)
    workdir: loop/smollm2         # where each iteration's files go (default: <store>.loop/NAME)
    sample:   {strategy: feedback_first, size: 64, per_conversation: 2, seed: 0, scrub_pii: true,
               pii_hook: "module:function", pool: null}   # strategy: random | recent | feedback_first |
                                                          # low_confidence (pool: default 4 x size)
    generate: {k: 4, temperature: 0.8, top_p: 1.0, max_new_tokens: 256, seed: 0, batch_size: 8,
               endpoint: null, api_key_env: null, model_name: null, concurrency: 8}   # endpoint: the serving URL
    label:    {mode: judge, judge: URL_OR_PATH, judge_model: NAME, criteria: "...", max_tokens: 1024,
               pairing: best_worst, seed: 0,                     # pairing: best_worst | all
               reward_model: PATH, reward_template: own, device: auto, precision: auto, batch_size: 8,
               template_file: null, deadline_hours: 48, min_votes: 1, items_per_prompt: null}
               # mode: judge | reward_model | human | human_then_judge
    train:    {config: train.yaml, overrides: {max_steps: 50}, replay_share: 0.2,
               launcher: null}       # e.g. "torchrun --nproc_per_node 8": train in launched processes
    eval:     {prompts: eval.jsonl, judge: URL_OR_PATH, judge_model: NAME, limit: null, max_new_tokens: 256,
               template_file: null, judge_max_tokens: 512}   # judge and template_file default to label's
    gate:     {rules: gate.yaml}
    promote:  {auto: true}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prefloop.config_files import load_yaml, plain
from prefloop.errors import ConfigError

STRATEGIES = ("random", "recent", "feedback_first", "low_confidence")
LABEL_MODES = ("judge", "reward_model", "human", "human_then_judge")
LABEL_PAIRINGS = ("best_worst", "all")
REWARD_TEMPLATES = ("own", "policy")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOOP_SET_KEYS = ("model_name_or_path", "adapter_name_or_path", "ref_model", "dataset", "output_dir", "registry",
                 "registry_db")

# section -> key -> (type(s), default); None default with `required` marks a required key
_SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    "sample": {"strategy": ((str,), "feedback_first"), "size": ((int,), 64), "per_conversation": ((int,), 2),
               "seed": ((int,), 0), "scrub_pii": ((bool,), True), "pii_hook": ((str, type(None)), None),
               "pool": ((int, type(None)), None)},
    "generate": {"k": ((int,), 4), "temperature": ((int, float), 0.8), "top_p": ((int, float), 1.0),
                 "max_new_tokens": ((int,), 256), "seed": ((int,), 0), "batch_size": ((int,), 8),
                 "endpoint": ((str, type(None)), None), "api_key_env": ((str, type(None)), None),
                 "model_name": ((str, type(None)), None), "concurrency": ((int,), 8)},
    "label": {"mode": ((str,), "judge"), "judge": ((str, type(None)), None), "judge_model": ((str, type(None)), None),
              "criteria": ((str,), "helpfulness,accuracy,clarity,safety"), "max_tokens": ((int,), 1024),
              "concurrency": ((int,), 8), "deadline_hours": ((int, float), 48), "min_votes": ((int,), 1),
              "pairing": ((str,), "best_worst"), "seed": ((int,), 0), "items_per_prompt": ((int, type(None)), None),
              "reward_model": ((str, type(None)), None), "reward_template": ((str,), "own"),
              "device": ((str,), "auto"), "precision": ((str,), "auto"), "batch_size": ((int,), 8),
              "template_file": ((str, type(None)), None)},
    "train": {"config": ((str,), None), "overrides": ((dict,), {}), "replay_share": ((int, float), 0.0),
              "launcher": ((str, type(None)), None)},
    "eval": {"prompts": ((str,), None), "judge": ((str, type(None)), None), "judge_model": ((str, type(None)), None),
             "limit": ((int, type(None)), None), "max_new_tokens": ((int,), 256), "temperature": ((int, float), 0.7),
             "resamples": ((int,), 1000), "seed": ((int,), 0), "template_file": ((str, type(None)), None),
             "judge_max_tokens": ((int,), 512)},
    "gate": {"rules": ((str, type(None)), None)},
    "promote": {"auto": ((bool,), True)},
}
_TOP = {"name": ((str,), None), "store": ((str,), "prefloop.sqlite"), "workdir": ((str, type(None)), None)}
_REQUIRED = {("name",), ("train", "config"), ("eval", "prompts")}


@dataclass
class LoopConfig:
    """The checked contents of a loop.yaml; paths are absolute (relative ones are taken from the file's folder)."""

    source: str
    name: str
    store: str
    workdir: str
    sample: dict = field(default_factory=dict)
    generate: dict = field(default_factory=dict)
    label: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    gate: dict = field(default_factory=dict)
    promote: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "store", "workdir", "sample", "generate", "label", "train",
                                              "eval", "gate", "promote")}


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """(section, key) -> line number of each mapping key of the first two levels."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            lines[(k.value,)] = k.start_mark.line + 1
            if isinstance(v, yaml.MappingNode):
                for k2, _ in v.value:
                    lines[(k.value, k2.value)] = k2.start_mark.line + 1
    return lines


def _suggest(key: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(known))}"


def load_loop_config(path: str | Path) -> LoopConfig:
    """Read and check loop.yaml; raises ConfigError "FILE, line N: key: what is wrong and what to do"."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such loop config file; write one (see README, 'The online loop')")
    text = p.read_text(encoding="utf-8")
    raw = load_yaml(text, str(p))
    lines = _key_lines(text)

    def where(*keys: str) -> str:
        line = lines.get(tuple(keys)) or lines.get(tuple(keys[:1]))
        return f"{p}" + (f", line {line}" if line else "") + f": {'.'.join(keys)}"

    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a loop config is a YAML mapping of keys (name, store, sample, ...)")
    raw = {k: plain(v) if k in _TOP else v for k, v in raw.items()}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _TOP and key not in _SCHEMA:
            raise ConfigError(f"{where(key)}: unknown key{_suggest(key, [*_TOP, *_SCHEMA])}")
        if key in _TOP:
            _check_type(value, _TOP[key][0], where(key))
            values[key] = value
    for section, keys in _SCHEMA.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{where(section)}: must be a mapping of keys ({', '.join(keys)})")
        out = {}
        for key, value in given.items():
            if key not in keys:
                raise ConfigError(f"{where(section, str(key))}: unknown key{_suggest(str(key), keys)}")
            value = _plain_deep(value)
            _check_type(value, keys[key][0], where(section, key))
            out[key] = value
        values[section] = {k: out.get(k, default) for k, (_, default) in keys.items()}
    for keys in _REQUIRED:
        holder = values.get(keys[0]) if len(keys) > 1 else values
        if (holder or {}).get(keys[-1]) is None:
            raise ConfigError(f"{p}: {'.'.join(keys)} is required" + {
                "name": " (the registry name; the champion is NAME@champion)",
                "config": " (the training config to inherit, e.g. examples/demo.yaml)",
                "prompts": " (the held-out prompts the candidate and the champion answer for the win rate)"}[keys[-1]])
    base = p.parent
    store = _abs(base, values.get("store", _TOP["store"][1]))
    cfg = LoopConfig(source=str(p), name=values["name"], store=store,
                     workdir=_abs(base, values.get("workdir") or f"{store}.loop/{values['name']}"),
                     **{s: values[s] for s in _SCHEMA})
    cfg.train["config"] = _abs(base, cfg.train["config"])
    cfg.eval["prompts"] = _abs(base, cfg.eval["prompts"])
    if cfg.gate["rules"]:
        cfg.gate["rules"] = _abs(base, cfg.gate["rules"])
    for section in ("label", "eval"):
        judge = cfg.__dict__[section]["judge"]
        if judge and "://" not in judge:
            cfg.__dict__[section]["judge"] = _abs(base, judge)
        if cfg.__dict__[section]["template_file"]:
            cfg.__dict__[section]["template_file"] = _abs(base, cfg.__dict__[section]["template_file"])
    if cfg.label["reward_model"]:
        cfg.label["reward_model"] = _abs(base, cfg.label["reward_model"])
    _check_combinations(cfg, where)
    return cfg


def _plain_deep(value):
    if isinstance(value, dict):
        return {plain(k): _plain_deep(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_deep(v) for v in value]
    return plain(value)


def _abs(base: Path, path: str) -> str:
    q = Path(path).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def _check_type(value, types: tuple[type, ...], where: str) -> None:
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ConfigError(f"{where}: must be {names}, got {value!r}")


def _launcher_found(launcher: str) -> bool:
    import shlex
    import shutil

    try:
        argv = shlex.split(launcher)
    except ValueError:
        return False
    return bool(argv) and shutil.which(argv[0]) is not None


def _check_combinations(cfg: LoopConfig, where) -> None:
    s, g, lab, t, e = cfg.sample, cfg.generate, cfg.label, cfg.train, cfg.eval
    checks = [
        (s["strategy"] in STRATEGIES, ("sample", "strategy"), f"must be one of {', '.join(STRATEGIES)}"),
        (s["size"] >= 1, ("sample", "size"), "must be at least 1"),
        (s["per_conversation"] >= 1, ("sample", "per_conversation"), "must be at least 1"),
        (s["pool"] is None or s["strategy"] == "low_confidence", ("sample", "pool"),
         f"is used only with sample.strategy low_confidence (the strategy is {s['strategy']}); remove it"),
        (s["pool"] is None or s["pool"] >= s["size"], ("sample", "pool"),
         f"must be at least sample.size ({s['size']}): the low-confidence strategy keeps the size least sure "
         "of the pool's prompts"),
        (s["pii_hook"] is None or ":" in s["pii_hook"], ("sample", "pii_hook"),
         "must be 'module:function' (a function taking a text and returning the scrubbed text)"),
        (g["k"] >= 2, ("generate", "k"), "must be at least 2: best vs worst of K needs two candidates"),
        (0 <= g["temperature"] <= 2, ("generate", "temperature"), "must be in [0, 2]"),
        (g["temperature"] > 0, ("generate", "temperature"),
         "0 (greedy) makes the K candidates identical, so no pair can be made; use e.g. 0.8"),
        (0 < g["top_p"] <= 1, ("generate", "top_p"), "must be in (0, 1]"),
        (not g["endpoint"] or str(g["endpoint"]).startswith(("http://", "https://")), ("generate", "endpoint"),
         "must be an http:// or https:// URL of an OpenAI-compatible server (e.g. the one `prefloop serve "
         "--registry NAME` runs)"),
        (g["endpoint"] or not (g["api_key_env"] or g["model_name"]), ("generate", "api_key_env" if g["api_key_env"]
                                                                        else "model_name"),
         "is used only with generate.endpoint; set the endpoint or remove it"),
        (g["concurrency"] >= 1, ("generate", "concurrency"), "must be at least 1"),
        (g["max_new_tokens"] >= 1 and e["max_new_tokens"] >= 1, ("generate", "max_new_tokens"), "must be at least 1"),
        (lab["mode"] in LABEL_MODES, ("label", "mode"), f"must be one of {', '.join(LABEL_MODES)}"),
        (lab["mode"] in ("human", "reward_model") or bool(lab["judge"]), ("label", "judge"),
         f"mode {lab['mode']} needs label.judge: an OpenAI-compatible URL or a local model directory"),
        (lab["mode"] != "reward_model" or bool(lab["reward_model"]), ("label", "reward_model"),
         "mode reward_model needs label.reward_model: a local AutoModelForSequenceClassification directory "
         "with one output label (a scalar reward model)"),
        (not lab["reward_model"] or lab["mode"] == "reward_model", ("label", "reward_model"),
         f"is used only with label.mode reward_model (the mode is {lab['mode']}); remove it or set the mode"),
        (not lab["reward_model"] or Path(lab["reward_model"] or "").is_dir(), ("label", "reward_model"),
         f"{lab['reward_model']} is not a directory; give a local reward-model directory (config.json, weights, "
         "tokenizer)"),
        (lab["reward_template"] in REWARD_TEMPLATES, ("label", "reward_template"),
         "must be own (the reward model's chat template) or policy (the champion's)"),
        (lab["precision"] in PRECISIONS, ("label", "precision"), f"must be one of {', '.join(PRECISIONS)}"),
        (lab["batch_size"] >= 1, ("label", "batch_size"), "must be at least 1"),
        (lab["pairing"] in LABEL_PAIRINGS, ("label", "pairing"),
         "must be best_worst (the best answer against the worst of K) or all (every decisive comparison)"),
        (lab["items_per_prompt"] is None or lab["items_per_prompt"] >= g["k"] - 1, ("label", "items_per_prompt"),
         f"must be at least generate.k - 1 = {g['k'] - 1} (fewer comparisons leave answers unconnected, so "
         "no ranking) or left out for all K(K-1)/2 pairs"),
        (lab["deadline_hours"] >= 0, ("label", "deadline_hours"), "must be 0 or more"),
        (lab["min_votes"] >= 1, ("label", "min_votes"), "must be at least 1"),
        (not t["launcher"] or _launcher_found(t["launcher"]), ("train", "launcher"),
         f"{t['launcher']!r}: its program is not found (a command prefix such as 'torchrun --nproc_per_node 8' "
         "or 'accelerate launch --num_processes 2', to which the loop appends '-m prefloop train CONFIG ...')"),
        (0 <= t["replay_share"] < 1, ("train", "replay_share"),
         "must be in [0, 1): the share of older pairs in each iteration's training data"),
        (bool(e["judge"] or lab["judge"]), ("eval", "judge"), "is needed (or label.judge, which it defaults to)"),
        (e["limit"] is None or e["limit"] >= 1, ("eval", "limit"), "must be at least 1 or left out"),
        (Path(t["config"]).is_file(), ("train", "config"), f"{t['config']} does not exist"),
        (Path(e["prompts"]).is_file(), ("eval", "prompts"), f"{e['prompts']} does not exist"),
        (not cfg.gate["rules"] or Path(cfg.gate["rules"]).is_file(), ("gate", "rules"),
         f"{cfg.gate['rules']} does not exist"),
        (not lab["template_file"] or Path(lab["template_file"]).is_file(), ("label", "template_file"),
         f"{lab['template_file']} does not exist"),
        (not e["template_file"] or Path(e["template_file"]).is_file(), ("eval", "template_file"),
         f"{e['template_file']} does not exist"),
        (e["judge_max_tokens"] >= 1, ("eval", "judge_max_tokens"), "must be at least 1"),
    ]
    for ok, keys, message in checks:
        if not ok:
            raise ConfigError(f"{where(*keys)}: {message}")
    import typing

    from prefloop.config import Config, _suggest as suggest_training_key
    from prefloop.config_lf import handled_keys

    known = set(typing.get_type_hints(Config)) | handled_keys()  # LLaMA-Factory keys: checked when training loads
    for key in t["overrides"]:
        if key not in known:
            raise ConfigError(f"{where('train', 'overrides')}: unknown training key {key!r}"
                              f"{suggest_training_key(str(key))}")
    taken = sorted(set(t["overrides"]) & set(LOOP_SET_KEYS))
    if taken:
        raise ConfigError(f"{where('train', 'overrides')}: {', '.join(taken)} are set by the loop (the champion "
                          "is the starting point and the reference, the iteration's pairs are the data); remove them")
    if not e["judge"]:
        e["judge"], e["judge_model"] = lab["judge"], e["judge_model"] or lab["judge_model"]
    if not e["template_file"]:
        e["template_file"] = lab["template_file"]
