"""Training config: a LLaMA-Factory-style YAML file plus `key=value` overrides -> one typed `Config`.

The keys are grouped by concern (model, data, loss, speed, training, health, scale-out) in small
dataclasses; `Config` inherits them all so code reads `cfg.pref_beta`, exactly the YAML key. Every
value is coerced to its declared type and checked; an unknown key names the closest known one.
LLaMA-Factory / transformers keys that prefloop spells differently, ignores or lacks are translated,
noted or refused first (config_lf.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from prefloop.config_files import PlainText, Written, load_yaml, written_as
from prefloop.config_lf import OVERRIDE_SOURCES, Setting, translate
from prefloop.errors import ConfigError

CONFIG_FILENAME = "prefloop_config.yaml"


@dataclass
class ModelArgs:
    model_name_or_path: str | None = None  # local HF directory, hub id (org/name) or .gguf file
    ref_model: str | None = None  # omitted = the policy's starting weights
    adapter_name_or_path: str | None = None  # a LoRA adapter to continue training (LLaMA-Factory's key)
    ref_model_adapters: str | None = None  # a LoRA adapter applied to the reference (LLaMA-Factory's key)
    finetuning_type: Literal["lora", "full", "freeze"] = "lora"
    lora_target: Union[str, list[str]] = "all"  # "all" = every nn.Linear except the output head
    lora_rank: int = 8
    lora_alpha: int | None = None  # default: 2 * lora_rank
    lora_dropout: float = 0.0  # off while disable_dropout is true (as in TRL's and LLaMA-Factory's DPO)
    use_rslora: bool = False  # rank-stabilised LoRA scaling alpha / sqrt(rank) (LLaMA-Factory's key)
    use_dora: bool = False  # weight-decomposed LoRA (DoRA) (LLaMA-Factory's key)
    # finetuning_type: freeze trains the last N decoder layers (N > 0) or the first -N (N < 0), LLaMA-Factory's rule
    freeze_trainable_layers: int = 2
    freeze_trainable_modules: Union[str, list[str]] = "all"  # within those layers: "all" or names like mlp,self_attn
    freeze_extra_modules: Union[str, list[str], None] = None  # modules outside the layers to train too (embed_tokens)
    disable_dropout: bool = True  # dropout off in policy and reference (TRL's and LLaMA-Factory's DPO default)
    # true = every decoder layer (TRL's default); auto = only as many layers as max_memory_gb needs (train/memory.py)
    gradient_checkpointing: Union[bool, Literal["auto"]] = False
    max_memory_gb: float | None = None  # the budget of gradient_checkpointing: auto; default: what the device has


@dataclass
class DataArgs:
    dataset: Union[str, list[str], None] = None  # file(s) or names in dataset_dir/dataset_info.json
    dataset_dir: str = "data"
    template: str | None = None  # None = the tokenizer's own chat template
    cutoff_len: int = 2048
    max_samples: int | None = None
    val_size: float = 0.0  # a fraction in [0, 1), or a whole number of pairs
    skip_bad_rows: bool = False


@dataclass
class LossArgs:
    stage: Literal["dpo"] = "dpo"
    pref_beta: float = 0.1
    pref_loss: Union[str, list[str]] = "sigmoid"
    pref_loss_weights: list[float] | None = None
    simpo_gamma: float | None = None  # SimPO's target margin (default 0.5 when pref_loss: simpo)
    discopop_tau: float | None = None  # DiscoPOP's temperature (default 0.05 when pref_loss: discopop)
    dpo_label_smoothing: float = 0.0
    pref_ftx: float = 0.0
    ld_alpha: float | None = None


@dataclass
class MultiArgs:
    """Iterative DPO (rounds) and multi-objective DPO (dimensions, MODPO): issue 16, README "Rounds and dimensions"."""

    rounds: list[dict] | None = None  # each: {dataset: ..., any other key as a per-round override}
    ref_update: Literal["initial", "previous", "sync"] = "initial"
    ref_sync_alpha: float = 0.6  # TR-DPO's alpha (TRL's ref_model_mixup_alpha default)
    ref_sync_steps: int = 512  # TR-DPO's tau (TRL's ref_model_sync_steps default)
    pref_dimensions: dict | None = None  # {dimension: weight}; the weighted score gap decides each pair
    dimension_conflicts: Literal["flip", "drop", "keep"] = "flip"
    dimension_weighting: Literal["none", "weight", "margin"] = "none"
    modpo_weights: list[float] | None = None  # [w0 (this data's objective), w1.. (one per margin model)]
    modpo_margin_models: list[str] | None = None  # adapter dirs, causal LMs or reward models


@dataclass
class SpeedArgs:
    precompute_ref: bool = True  # reference log-probs computed once before training, cached on disk
    ref_cache_dir: str | None = None  # default: output_dir/ref_cache
    packing: bool = True  # padding-free rows; proven equal to the padded computation (tests/test_logps.py)
    prefix_sharing: bool = True  # the prompt computed once for chosen and rejected; proven equal likewise
    logps_chunk_size: int = 4096
    # packed / prefix-shared rows: auto = flex on CUDA, segments elsewhere (train/attention.py)
    attn_backend: Literal["auto", "segments", "varlen", "flex", "sdpa_mask"] = "auto"


@dataclass
class TrainArgs:
    output_dir: str | None = None
    overwrite_output_dir: bool = False
    do_train: bool = True
    do_eval: bool | None = None  # default: true when there is a validation split
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5.0e-5
    num_train_epochs: float = 3.0
    max_steps: int = -1
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: dict | None = None  # extra arguments of the schedule, e.g. {num_cycles: 0.5}, {min_lr_rate: 0.1}
    warmup_ratio: float = 0.0
    warmup_steps: int = 0  # a number of steps; give this or warmup_ratio
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    adam_beta1: float = 0.9  # AdamW's betas and epsilon (transformers' keys and defaults)
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    seed: int = 42
    fp16: bool = False
    bf16: bool = False
    pure_bf16: bool = False  # the weights themselves in bf16, no fp32 copy (LLaMA-Factory's key)
    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    eval_steps: int | None = None
    save_strategy: Literal["no", "steps", "epoch"] = "steps"
    save_steps: int = 500
    save_total_limit: int | None = None
    save_only_model: bool = False  # checkpoints without optimizer/scheduler/RNG state (smaller; cannot be resumed)
    logging_steps: int = 500
    report_to: Union[str, list[str]] = "tensorboard"
    plot_loss: bool = False
    resume_from_checkpoint: Union[bool, str, None] = None  # a checkpoint dir, or true = the latest one
    sample_prompts: int = 1  # validation prompts answered (greedy) before and after training
    dataloader_num_workers: int = 0
    registry: str | None = None  # register the trained model as a candidate version of this name (model registry)
    registry_db: str = "prefloop.sqlite"  # the prefloop store that holds the registry
    mlflow_tracking_uri: str | None = None  # also mirror the registered version into MLflow (prefloop[mlflow])


@dataclass
class HealthArgs:
    max_bad_steps: int = 3  # stop after this many NaN/Inf steps in a row
    early_stopping_patience: int | None = None
    early_stopping_threshold: float = 0.0
    length_probe_prompts: int = 4  # validation prompts answered (greedy) at each evaluation: eval_sampled_length


@dataclass
class ScaleArgs:
    deepspeed: str | None = None  # path to a DeepSpeed JSON config
    fsdp: Union[bool, str, list[str]] = ""  # true = "full_shard auto_wrap"
    fsdp_config: Union[str, dict, None] = None
    ddp_timeout: int = 1800
    ddp_find_unused_parameters: bool | None = None


@dataclass
class Config(ModelArgs, DataArgs, LossArgs, MultiArgs, SpeedArgs, TrainArgs, HealthArgs, ScaleArgs):
    """Every training key; grouped above, flat here."""

    @property
    def layout(self) -> str:
        """The batch layout `collate_pairs` builds, from `packing` and `prefix_sharing`."""
        if self.packing and self.prefix_sharing:
            return "packed_prefix_shared"
        return "packed" if self.packing else "prefix_shared" if self.prefix_sharing else "padded"

    @property
    def has_validation(self) -> bool:
        return self.val_size > 0

    @property
    def run_eval(self) -> bool:
        return self.has_validation if self.do_eval is None else self.do_eval

    @property
    def resolved_lora_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank

    @property
    def reference_cache_dir(self) -> Path:
        return Path(self.ref_cache_dir) if self.ref_cache_dir else Path(self.output_dir) / "ref_cache"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


KNOWN_KEYS = tuple(f.name for f in dataclasses.fields(Config))
_UNION_TYPES = (Union, types.UnionType)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(config_or_path=None, overrides=None) -> Config:
    """A checked `Config` from a YAML path, a dict or a Config, with overrides applied.

    `overrides` is a list of "key=value" strings (command line; values parsed as YAML scalars) or
    a dict of already-typed values (Python API). A key that takes text gets the text as written even
    where YAML would read another type (`save_strategy: no` is "no", not false); a key given twice in
    the file is an error (config_files.py). Raises ConfigError with file and key on any problem.
    """
    if isinstance(config_or_path, Config):
        raw, where = dataclasses.asdict(config_or_path), "config"
    elif isinstance(config_or_path, dict):
        raw, where = dict(config_or_path), "config"
    elif config_or_path is None:
        raw, where = {}, "config"
    else:
        where = str(config_or_path)
        raw = _read_yaml(Path(config_or_path))
    lines = _key_lines(Path(where)) if where != "config" else {}  # where each key of the file is
    raw = {k: _interpolate_env(v, f"{where}: {k}" + _on_line(lines, k)) for k, v in raw.items()}
    values = {k: Setting(v, where, _on_line(lines, k)) for k, v in raw.items()}
    for key, value in _parse_overrides(overrides).items():
        values[key] = Setting(value, "command line" if isinstance(overrides, (list, tuple)) else "overrides", "")
    values = translate(values)  # LLaMA-Factory / transformers names and settings (config_lf.py)
    hints = typing.get_type_hints(Config)
    unknown = [f"{source}: unknown key {key!r}{_suggest(key)}{line}"
               for key, (value, source, line) in values.items() if key not in hints]
    if unknown:  # every typo at once, each with its line, not one per run
        raise ConfigError("\n".join(unknown))
    kwargs = {}
    for key, (value, source, line) in values.items():
        shown = f"{value.text!r} (YAML reads it as {value.value!r})" if isinstance(value, Written) else None
        kwargs[key] = _coerce(key, written_as(value, hints[key]), hints[key], source, shown, line)
    cfg = Config(**kwargs)
    try:
        cfg = resolve_adapter_paths(cfg)
        validate(cfg)
    except ConfigError as err:
        if where == "config":
            raise
        raise ConfigError(located(str(err), where, values)) from None
    if cfg.rounds:
        lines = _round_lines(Path(where)) if where != "config" else []
        round_configs(cfg, where, lines)  # every round checked as the config it will train with
    return cfg


# ---------------------------------------------------------------------------------------------
# Rounds (iterative DPO): each item of `rounds:` is the base config plus its own keys

ROUND_ONLY_KEYS = ("name",)  # a round's label in logs and the report
NOT_PER_ROUND = ("rounds", "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "model_name_or_path",
                 "adapter_name_or_path", "ref_model", "ref_model_adapters", "ref_update", "finetuning_type",
                 "ref_cache_dir")


def _round_lines(path: Path) -> list[int]:
    """1-based line of each item of `rounds:` in the YAML file (for located errors); [] if unknown."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    for key, value in getattr(root, "value", []) or []:
        if getattr(key, "value", None) == "rounds" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def round_configs(cfg: Config, where: str = "config", lines: list[int] | None = None) -> list[Config]:
    """One checked Config per item of `cfg.rounds` (the base keys, then the round's own keys).

    A round must name its `dataset`; keys that belong to the whole run (NOT_PER_ROUND) are errors.
    Raises ConfigError naming the file, the round (rounds[i], line) and the key.
    """
    lines = lines or []
    base = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "rounds"}
    hints = typing.get_type_hints(Config)
    out = []
    for i, item in enumerate(cfg.rounds or [], 1):
        place = f"{where}: rounds[{i}]" + (f" (line {lines[i - 1]})" if len(lines) >= i else "")
        if not isinstance(item, dict):
            raise ConfigError(f"{place}: a round is a mapping like {{dataset: data/round1.jsonl, learning_rate: 1e-6}}, "
                              f"got {item!r}")
        if not item.get("dataset"):
            raise ConfigError(f"{place}: dataset is required in every round (a file, or names from dataset_info.json)")
        values = dict(base)
        settings = {k: Setting(v, place) for k, v in item.items()}
        if "pref_bco_weight" in item:  # it adds to the loss this round trains: the round's, else the base's
            settings.update({k: Setting(base[k], place) for k in ("pref_loss", "pref_loss_weights")
                             if k not in item and base.get(k) is not None})
        item = {k: v.value for k, v in translate(settings).items()}
        for key, value in item.items():
            if key in ROUND_ONLY_KEYS:
                continue
            if key in NOT_PER_ROUND:
                raise ConfigError(f"{place}: {key} belongs to the whole run, not to one round; set it at the top level")
            if key not in hints:
                raise ConfigError(f"{place}: unknown key {key!r}{_suggest(key)}")
            values[key] = _coerce(key, value, hints[key], place)
        try:
            round_cfg = Config(**values)
            validate(round_cfg)
        except ConfigError as err:
            raise ConfigError(f"{place}: {err}") from None
        out.append(round_cfg)
    return out


def located(message: str, where: str, values: dict[str, Setting]) -> str:
    """A validation error `message` with where each key it names was given: the config file `where` (and the key's
    line) or the command line. One source: it leads the message (`seed.yaml: ... (line 7)`, `command line: ...`);
    keys from both: each key's source follows it (`(fp16: seed.yaml, line 7; bf16: command line)`). Keys the
    message names that were not given (defaults) name no source."""
    found = {}
    for key in values:
        match = re.search(rf"(?<![\w./-]){re.escape(key)}(?![\w/-])", message)
        if match:
            found[key] = match.start()
    named = sorted(found, key=found.get)
    if not named:
        return f"{where}: {message}"
    sources = {values[k].source for k in named}
    if len(sources) == 1:
        source = sources.pop()
        if source in OVERRIDE_SOURCES or len(named) == 1:
            return f"{source}: {message}{values[named[0]].line}"
        return f"{source}: {message} ({', '.join(k + _line_number(values[k]) for k in named)})"
    return f"{message} ({'; '.join(f'{k}: {values[k].source}' + _line_number(values[k], ',') for k in named)})"


def _line_number(setting: Setting, sep: str = ":") -> str:
    """`setting`'s line in its file as ": line N" (or ", line N"); "" when it has none (command line)."""
    number = re.search(r"\d+", setting.line)
    return f"{sep} line {number.group()}" if number else ""


def _on_line(lines: dict[str, int], key: str) -> str:
    """" (line N)" for a key of the config file, to end its error messages with; "" when not known."""
    return f" (line {lines[key]})" if key in lines else ""


def _key_lines(path: Path) -> dict[str, int]:
    """1-based line of each top-level key of the YAML file at `path` (for located errors); {} if unknown."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(root, yaml.MappingNode):
        return {}
    return {key.value: key.start_mark.line + 1 for key, _ in root.value if isinstance(key, yaml.ScalarNode)}


# ${NAME}, ${NAME:-default} (shell) and ${oc.env:NAME}, ${oc.env:NAME,default} (OmegaConf, as LLaMA-Factory
# configs write it): the environment variable NAME, or the default when it is unset. `$${` is a literal `${`.
_ENV_REF = re.compile(r"\$\{(?:oc\.env:)?([A-Za-z_][A-Za-z0-9_]*)(?:(?::-|,)([^}]*))?\}")
_ESCAPED = "$${"
_HOLD = "\x00"  # stands for an escaped `$${` while references are replaced (a config value holds no NUL)


def _interpolate_env(value, where: str):
    """`value` (from the config file) with every `${NAME}` / `${oc.env:NAME}` replaced by the environment
    variable, and every `$${` by a literal `${`. A value that is one reference alone and was not quoted in the
    YAML (`PlainText`) is read like a command-line value (`${LR}` with LR=1e-5 is the number, `${TARGETS}` with
    TARGETS=[q_proj,v_proj] a list, `~` None); a quoted one (`"${NAME}"`), or one from a dict, stays the text.
    Raises ConfigError naming the file, line and key for a variable that is not set and has no default, or a
    `${...}` that is not such a reference."""
    import os

    if isinstance(value, dict):
        return {k: _interpolate_env(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate_env(v, where) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default.strip().strip("'\"")
        raise ConfigError(f"{where}: {match.group(0)} names the environment variable {name}, which is not set; "
                          f"set it (export {name}=...) or give a default: ${{{name}:-DEFAULT}}")

    held = str(value).replace(_ESCAPED, _HOLD)
    if "${" in _ENV_REF.sub("", held):
        raise ConfigError(f"{where}: {value!r} has a ${{...}} that is not an environment variable reference; write "
                          f"${{NAME}}, ${{NAME:-default}} or ${{oc.env:NAME}} (config keys are not interpolated), "
                          f"or $${{ for a literal ${{")
    text = _ENV_REF.sub(lambda m: lookup(m).replace(_HOLD, ""), held).replace(_HOLD, "${")
    if isinstance(value, PlainText) and _ENV_REF.fullmatch(held):
        try:  # one whole unquoted reference: typed like a `key=value` override
            return load_yaml(text, where) if text.strip() else None
        except ConfigError:
            return text
    return text


def resolve_adapter_paths(cfg: Config) -> Config:
    """A LoRA adapter directory given where a model belongs (as LLaMA-Factory users write adapter_name_or_path):

    - `model_name_or_path: ADAPTER` with LoRA = its recorded base, continuing that adapter (`adapter_name_or_path`);
      the reference is then the adapter's model, the policy's starting point (omit ref_model);
    - `ref_model: ADAPTER` = its recorded base with `ref_model_adapters: ADAPTER`.
    Full or freeze fine-tuning of an adapter is an error that says to merge it first. A note says what was done."""
    def adapter_dir(path) -> bool:
        p = Path(str(path)) if path else None
        return bool(p and p.is_dir() and (p / "adapter_config.json").is_file() and not (p / "config.json").is_file())

    def base_of(adapter: str, key: str) -> str:
        from prefloop.adapters import resolve_base
        from prefloop.models import ModelLoadError

        try:
            return resolve_base(adapter, flag=key)
        except ModelLoadError as err:
            raise ConfigError(f"{key}: {adapter} is a LoRA adapter whose base model cannot be used: {err}") from None

    changes = {}
    if adapter_dir(cfg.model_name_or_path):
        adapter = cfg.model_name_or_path
        if cfg.finetuning_type != "lora" or cfg.adapter_name_or_path:
            raise ConfigError(
                f"model_name_or_path: {adapter} is a LoRA adapter, not a model; "
                + ("give its base as model_name_or_path and the adapter as adapter_name_or_path"
                   if cfg.finetuning_type == "lora" else
                   f"{cfg.finetuning_type} fine-tuning needs a whole model: `prefloop merge {adapter} --out MERGED` "
                   f"and train MERGED"))
        changes["model_name_or_path"], changes["adapter_name_or_path"] = base_of(adapter, "model_name_or_path"), adapter
        print(f"prefloop: note: model_name_or_path {adapter} is a LoRA adapter: training continues it on its base "
              f"{changes['model_name_or_path']} (adapter_name_or_path)", file=sys.stderr)
    if adapter_dir(cfg.ref_model):
        adapter = cfg.ref_model
        if cfg.ref_model_adapters:
            raise ConfigError(f"ref_model: {adapter} is a LoRA adapter and ref_model_adapters is set too; give the "
                              f"base model as ref_model and the adapter as ref_model_adapters")
        changes["ref_model"], changes["ref_model_adapters"] = base_of(adapter, "ref_model"), adapter
        print(f"prefloop: note: ref_model {adapter} is a LoRA adapter: the reference is its base "
              f"{changes['ref_model']} with that adapter (ref_model_adapters)", file=sys.stderr)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = load_yaml(path.read_text(encoding="utf-8"), str(path))  # duplicate keys refused, text kept
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of `key: value` lines, got a {type(data).__name__}")
    return data


def _parse_overrides(overrides) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"command line: override {item!r} is not of the form key=value (e.g. learning_rate=1e-6)")
        try:  # parsed like a line of the config file: `save_strategy=no` is the text "no"
            value = load_yaml(text, f"command line: {key.strip()}") if text.strip() else None
        except ConfigError:
            value = text
        parsed[key.strip()] = value
    return parsed


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else "; see examples/seed_config.yaml for the known keys"


# ---------------------------------------------------------------------------------------------
# Types


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in _UNION_TYPES:
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(
        tp, str(tp)
    )


def _coerce(key: str, value, tp, source: str, shown: str | None = None, line: str = ""):
    """`value` as type `tp`, or ConfigError saying what is allowed (`shown`: the value as written; `line`:
    " (line N)" of the config file)."""
    try:
        value = coerce_value(value, tp)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key}: {shown or repr(value)} is not allowed; expected {_describe(tp)}"
                          f"{line}") from None
    if key == "lr_scheduler_kwargs" and isinstance(value, dict):  # YAML 1.1 reads `min_lr: 1e-6` as text
        value = {k: float(v) if isinstance(v, str) and _NUMBER.fullmatch(v.strip()) else v for k, v in value.items()}
    return value


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def coerce_value(value, tp):
    """`value` as type `tp` (a config field's annotation: int, float, bool, str, a Literal, a list or a union of
    these), accepting what YAML may give as text ("1e-6", "true", "0.5"); the one coercion of config values, used
    by every config file (training, gate rules). Raises ValueError/TypeError when it cannot be read as `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in _UNION_TYPES:
        if value is None and type(None) in args:
            return None
        # Try the exact types first so "all" stays a str and [a, b] stays a list.
        for arg in args:
            if arg is not type(None) and _is_instance(value, arg):
                return coerce_value(value, arg)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(value, arg)
            except (TypeError, ValueError):
                continue
        raise ValueError(value)
    if origin is Literal:
        if value in args:
            return value
        raise ValueError(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        return [coerce_value(v, args[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if isinstance(value, (int, str)) and str(value).strip() in ("0", "1"):  # `fp16=1`, as HfArgumentParser reads it
            return str(value).strip() == "1"
        raise TypeError(value)
    if tp is int:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:  # `save_steps: 1e3`: YAML 1.1 reads it as the text "1e3"
                number = float(value.strip())
                if number.is_integer():
                    return int(number)
                raise
        raise TypeError(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-6" (no dot) as a string
            return float(value.strip())
        raise TypeError(value)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(value)
    if tp is dict:
        if isinstance(value, dict):
            return value
        raise TypeError(value)
    raise TypeError(f"unsupported config type {tp}")


def _is_instance(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin is list:
        return isinstance(value, (list, tuple))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is float:
        return isinstance(value, float)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(tp, type) and isinstance(value, tp)


# ---------------------------------------------------------------------------------------------
# Values


def validate(cfg: Config) -> None:
    """Checks that need more than a type: ranges, required keys, combinations."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(cfg.model_name_or_path is not None, "model_name_or_path is required: a local model directory, a .gguf file or a hub id")
    _check_model_path("model_name_or_path", cfg.model_name_or_path)
    if cfg.ref_model is not None:
        _check_model_path("ref_model", cfg.ref_model)
    need(cfg.output_dir is not None, "output_dir is required: the directory for the adapter/model, logs and checkpoints")
    if cfg.rounds is not None:
        need(bool(cfg.rounds), "rounds: is empty; give a list of rounds, each with its dataset, or remove the key")
        need(not cfg.dataset, "dataset and rounds are both set: with rounds, each round names its own dataset "
                              "(move the top-level dataset into the first round)")
    elif cfg.do_train or cfg.run_eval:
        need(bool(cfg.dataset), "dataset is required: a file, or names registered in dataset_dir/dataset_info.json")
    need(cfg.learning_rate > 0, f"learning_rate: {cfg.learning_rate} is not allowed; it must be > 0")
    need(cfg.cutoff_len > 0, f"cutoff_len: {cfg.cutoff_len} is not allowed; it must be a positive number of tokens")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "lora_rank", "logging_steps", "save_steps", "logps_chunk_size", "max_bad_steps"):
        need(getattr(cfg, key) >= 1, f"{key}: {getattr(cfg, key)} is not allowed; it must be >= 1")
    for key in ("eval_steps", "save_total_limit", "early_stopping_patience", "max_samples"):
        value = getattr(cfg, key)
        need(value is None or value >= 1, f"{key}: {value} is not allowed; it must be >= 1 (or left out)")
    need(cfg.lora_alpha is None or cfg.lora_alpha > 0, f"lora_alpha: {cfg.lora_alpha} is not allowed; it must be > 0")
    need(0 <= cfg.lora_dropout < 1, f"lora_dropout: {cfg.lora_dropout} is not allowed; it must be in [0, 1)")
    need(cfg.freeze_trainable_layers != 0, "freeze_trainable_layers: 0 is not allowed; N > 0 trains the last N decoder "
                                           "layers, N < 0 the first -N (LLaMA-Factory's rule)")
    need(bool(_names(cfg.freeze_trainable_modules)), "freeze_trainable_modules is empty; give all or module names "
                                                     "of a decoder layer like mlp,self_attn")
    need(not (cfg.use_dora and cfg.finetuning_type != "lora"), "use_dora needs finetuning_type: lora")
    need(not (cfg.use_rslora and cfg.finetuning_type != "lora"), "use_rslora needs finetuning_type: lora")
    need(cfg.seed >= 0, f"seed: {cfg.seed} is not allowed; it must be >= 0")
    need(0 <= cfg.warmup_ratio < 1, f"warmup_ratio: {cfg.warmup_ratio} is not allowed; it must be in [0, 1)")
    need(cfg.warmup_steps >= 0, f"warmup_steps: {cfg.warmup_steps} is not allowed; it must be >= 0")
    need(not (cfg.warmup_ratio and cfg.warmup_steps),
         f"warmup_steps: {cfg.warmup_steps} and warmup_ratio: {cfg.warmup_ratio} are both set; give one of them "
         f"(transformers refuses both too)")
    for key in ("adam_beta1", "adam_beta2"):
        need(0 <= getattr(cfg, key) < 1, f"{key}: {getattr(cfg, key)} is not allowed; it must be in [0, 1) "
                                         f"(AdamW's default: {0.9 if key == 'adam_beta1' else 0.999})")
    need(0 < cfg.adam_epsilon < 1, f"adam_epsilon: {cfg.adam_epsilon} is not allowed; it must be > 0 and small "
                                   f"(AdamW's default: 1e-8)")
    adam_set = [k for k, default in (("adam_beta1", 0.9), ("adam_beta2", 0.999), ("adam_epsilon", 1e-8))
                if getattr(cfg, k) != default]
    need(not adam_set or "adam" in cfg.optim,
         f"{(adam_set or [''])[0]}: optim: {cfg.optim} does not use {', '.join(adam_set)}, so the setting would be "
         f"lost; use an Adam optim (adamw_torch) or remove it")
    need(not (cfg.save_only_model and cfg.resume_from_checkpoint),
         "save_only_model: true writes checkpoints without the optimizer, scheduler and RNG state that "
         "resume_from_checkpoint needs to continue the run exactly; remove one of them")
    need(cfg.num_train_epochs > 0 or cfg.max_steps > 0, "num_train_epochs must be > 0 (or set max_steps)")
    need(cfg.max_grad_norm >= 0, f"max_grad_norm: {cfg.max_grad_norm} is not allowed; it must be >= 0 (0 = no clipping)")
    need(cfg.weight_decay >= 0, f"weight_decay: {cfg.weight_decay} is not allowed; it must be >= 0")
    need(cfg.val_size >= 0 and (cfg.val_size < 1 or float(cfg.val_size).is_integer()),
         f"val_size: {cfg.val_size} is not allowed; give a fraction in [0, 1) or a whole number of pairs")
    need(not (cfg.fp16 and cfg.bf16), "fp16 and bf16 are both true: choose one")
    need(not (cfg.fp16 and cfg.pure_bf16), "fp16 and pure_bf16 are both true: choose one (pure_bf16 keeps the weights "
                                           "in bf16; fp16 trains fp32 weights under fp16 autocast)")
    need(cfg.sample_prompts >= 0, "sample_prompts must be >= 0")
    need(cfg.max_memory_gb is None or cfg.max_memory_gb > 0,
         f"max_memory_gb: {cfg.max_memory_gb} is not allowed; give the memory budget in GB (> 0) or leave it out")
    need(cfg.registry is None or re.fullmatch(r"[A-Za-z0-9][\w.-]*", cfg.registry) is not None,
         f"registry: {cfg.registry!r} is not allowed; a model name uses letters, digits, '-', '_' and '.'")
    need(cfg.length_probe_prompts >= 0, f"length_probe_prompts: {cfg.length_probe_prompts} is not allowed; it must be "
                                        f">= 0 (0 = no sampled-answer-length check)")
    _check_choice("lr_scheduler_type", cfg.lr_scheduler_type, "transformers.trainer_utils", "SchedulerType")
    check_scheduler_kwargs(cfg)
    check_template(cfg.template)
    _check_choice("optim", cfg.optim, "transformers.training_args", "OptimizerNames")
    if cfg.eval_strategy != "no":
        need(cfg.has_validation, f"eval_strategy: {cfg.eval_strategy} needs a validation split; set val_size (e.g. 0.1)")
    if cfg.do_eval:
        need(cfg.has_validation, "do_eval: true needs a validation split; set val_size (e.g. 0.1)")
    if cfg.early_stopping_patience is not None:
        need(cfg.eval_strategy != "no", "early_stopping_patience needs evaluation: set eval_strategy: steps and val_size")
    if cfg.deepspeed is not None:
        need(Path(cfg.deepspeed).is_file(), f"deepspeed: {cfg.deepspeed} does not exist; give the path of a DeepSpeed JSON config")

    _validate_multi(cfg, need)
    check_integrations(cfg)

    from prefloop.train.losses import build_loss_spec

    # The loss keys (pref_loss*, pref_beta, dpo_label_smoothing, pref_ftx, simpo_gamma, discopop_tau,
    # ld_alpha) are checked in one place, the loss construction, whose bounds depend on the loss.
    build_loss_spec(cfg)


# report_to name -> (module to import, pip package): transformers' integrations, which it imports only when
# the Trainer is built, after the model has loaded.
_REPORT_TO_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow"),
    "comet_ml": ("comet_ml", "comet_ml"), "neptune": ("neptune", "neptune"), "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"), "codecarbon": ("codecarbon", "codecarbon"),
    "azure_ml": ("azureml", "azureml-core"), "dagshub": ("dagshub", "dagshub"), "flyte": ("flytekit", "flytekit"),
    "swanlab": ("swanlab", "swanlab"), "trackio": ("trackio", "trackio"), "kubeflow": ("kubeflow", "kubeflow-katib"),
}
# optim name fragment -> (module, pip package) for the optimizers transformers takes from other packages.
_OPTIM_PACKAGES = (("bnb", ("bitsandbytes", "bitsandbytes")), ("8bit", ("bitsandbytes", "bitsandbytes")),
                   ("paged", ("bitsandbytes", "bitsandbytes")), ("galore", ("galore_torch", "galore-torch")),
                   ("lomo", ("lomo_optim", "lomo-optim")), ("schedule_free", ("schedulefree", "schedulefree")),
                   ("apollo", ("apollo_torch", "apollo-torch")), ("grokadamw", ("grokadamw", "grokadamw")),
                   ("anyprecision", ("torchdistx", "torchdistx")))


def report_to_names(report_to) -> list[str]:
    """`report_to` as a list of integration names ("wandb,tensorboard" and lists both work)."""
    items = report_to if isinstance(report_to, list) else [report_to]
    return [n.strip() for item in items for n in str(item).split(",") if n.strip()]


def check_integrations(cfg: Config) -> None:
    """Every optional integration the config names (report_to, deepspeed, optim) must be installed: a
    ConfigError naming the package now, before any model loads (transformers fails only when it builds
    the Trainer, with a traceback)."""
    import importlib.util

    def missing(module: str) -> bool:
        return importlib.util.find_spec(module) is None

    names = report_to_names(cfg.report_to)
    if len(names) > 1 and ("none" in names or "all" in names):
        raise ConfigError(f"report_to: {names} mixes 'none'/'all' with named integrations; give one or the other")
    for name in names:
        if name in ("none", "all"):
            continue
        if name not in _REPORT_TO_PACKAGES:
            close = difflib.get_close_matches(name, list(_REPORT_TO_PACKAGES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"report_to: {name!r} is not an integration transformers knows{hint}; choose from "
                              f"{', '.join(_REPORT_TO_PACKAGES)}, or none")
        module, package = _REPORT_TO_PACKAGES[name]
        if missing(module):
            raise ConfigError(f"report_to: {name} needs the Python package {package!r}, which is not installed: "
                              f"`pip install {package}`, or remove {name} from report_to (tensorboard is built in)")
    if cfg.deepspeed is not None and missing("deepspeed"):
        raise ConfigError("deepspeed: a DeepSpeed config is given but the Python package 'deepspeed' is not installed: "
                          "`pip install deepspeed`, or remove the deepspeed key (see docs/distributed.md)")
    for fragment, (module, package) in _OPTIM_PACKAGES:
        if fragment in cfg.optim and missing(module):
            raise ConfigError(f"optim: {cfg.optim} needs the Python package {package!r}, which is not installed: "
                              f"`pip install {package}`, or use optim: adamw_torch")


def _validate_multi(cfg: Config, need) -> None:
    """Rounds' reference updates (TR-DPO), dimension weights and MODPO's weights and margin models."""
    need(0 < cfg.ref_sync_alpha <= 1, f"ref_sync_alpha: {cfg.ref_sync_alpha} is not allowed; it must be in (0, 1] "
                                      f"(TR-DPO's alpha; 0.6 is TRL's default)")
    need(cfg.ref_sync_steps >= 1, f"ref_sync_steps: {cfg.ref_sync_steps} is not allowed; it must be >= 1")
    if cfg.adapter_name_or_path is not None:
        need(cfg.finetuning_type == "lora", "adapter_name_or_path continues a LoRA adapter; it needs finetuning_type: lora")
        need((Path(cfg.adapter_name_or_path) / "adapter_config.json").is_file(),
             f"adapter_name_or_path: {cfg.adapter_name_or_path} holds no LoRA adapter (adapter_config.json is missing)")
    if cfg.ref_model_adapters is not None:
        need((Path(cfg.ref_model_adapters) / "adapter_config.json").is_file(),
             f"ref_model_adapters: {cfg.ref_model_adapters} holds no LoRA adapter (adapter_config.json is missing)")
    if cfg.pref_dimensions is not None:
        need(bool(cfg.pref_dimensions), "pref_dimensions is empty; give weights like {helpfulness: 1.0, safety: 2.0}")
        for name, weight in cfg.pref_dimensions.items():
            ok = isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight >= 0 and weight == weight
            need(ok and weight != float("inf"), f"pref_dimensions: {name}: {weight!r} is not allowed; "
                                                f"a weight is a finite number >= 0")
        need(any(w > 0 for w in cfg.pref_dimensions.values()), "pref_dimensions: every weight is 0; give one > 0")
    else:
        need(cfg.dimension_weighting == "none", "dimension_weighting needs pref_dimensions (the weight of each dimension)")
        need(cfg.dimension_conflicts == "flip", "dimension_conflicts needs pref_dimensions (the weight of each "
                                                "dimension decides which pairs conflict)")
    modpo = "modpo" in (cfg.pref_loss if isinstance(cfg.pref_loss, list) else str(cfg.pref_loss).split(","))
    if modpo:
        models = cfg.modpo_margin_models or []
        need(bool(models), "pref_loss: modpo needs modpo_margin_models: one adapter, model or reward model per "
                           "other objective")
        need(cfg.modpo_weights is not None and len(cfg.modpo_weights) == len(models) + 1,
             f"modpo_weights needs {len(models) + 1} values: w0 for this data's objective, then one per margin "
             f"model ({len(models)}); got {cfg.modpo_weights}")
        # w0 = inf makes z = 0 for every pair (a constant loss log 2, nothing trains); w_k = inf an inf/NaN loss
        bad = next((i for i, w in enumerate(cfg.modpo_weights) if not math.isfinite(float(w))), None)
        need(bad is None, f"modpo_weights {cfg.modpo_weights}: weight {bad} ({cfg.modpo_weights[bad or 0]}) is not a "
                          "finite number; give finite weights, w0 > 0 and the others >= 0 (the paper's lie on the "
                          "simplex, e.g. [0.5, 0.5])")
        need(cfg.modpo_weights[0] > 0, f"modpo_weights: w0 = {cfg.modpo_weights[0]} is not allowed; it must be > 0")
        need(all(w >= 0 for w in cfg.modpo_weights), f"modpo_weights {cfg.modpo_weights}: every weight must be >= 0")
        for path in models:
            need(Path(path).exists(), f"modpo_margin_models: {path} does not exist; give a LoRA adapter directory, "
                                      f"a model directory or a reward-model directory")
        need(cfg.precompute_ref, "pref_loss: modpo needs precompute_ref: true (the margin rewards are computed once "
                                 "against the cached reference)")
        need(cfg.ref_update != "sync", "pref_loss: modpo needs a fixed reference; use ref_update: initial or previous")
    else:
        need(cfg.modpo_weights is None and cfg.modpo_margin_models is None,
             "modpo_weights / modpo_margin_models are set but pref_loss is not modpo; set pref_loss: modpo or remove them")


def _names(value) -> list[str]:
    """A comma list or a list of names, as a list without blanks (lora_target, freeze_*_modules)."""
    items = value if isinstance(value, list) else str(value or "").split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def _check_model_path(key: str, path: str) -> None:
    if Path(path).exists() or (_HUB_ID.match(path) and not path.startswith(".")):
        if path.endswith(".gguf") and not Path(path).is_file():
            raise ConfigError(f"{key}: GGUF file {path} does not exist")
        return
    raise ConfigError(
        f"{key}: {path!r} does not exist; give a local model directory, a .gguf file, or a hub id like org/name"
    )


# Schedules whose extra arguments transformers' get_scheduler drops without a word.
_SCHEDULES_WITHOUT_KWARGS = ("constant", "constant_with_warmup")
_SCHEDULE_SET_BY_TRAINER = ("optimizer", "num_warmup_steps", "num_training_steps", "last_epoch")


def check_scheduler_kwargs(cfg: Config) -> None:
    """`lr_scheduler_kwargs` must be arguments of `lr_scheduler_type`'s schedule (closest names suggested) with
    values it accepts: the schedule is built once here on a stand-in optimizer, as the Trainer will build it."""
    import inspect

    import torch
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, get_scheduler
    from transformers.trainer_utils import SchedulerType

    kwargs = cfg.lr_scheduler_kwargs or {}
    name = cfg.lr_scheduler_type
    function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]
    params = inspect.signature(function).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    known = [] if name in _SCHEDULES_WITHOUT_KWARGS else [
        p.name for p in params if p.kind in named and p.name not in _SCHEDULE_SET_BY_TRAINER]
    any_name = name not in _SCHEDULES_WITHOUT_KWARGS and any(p.kind is p.VAR_KEYWORD for p in params)
    for key in kwargs:
        if key not in known and not any_name:
            close = difflib.get_close_matches(str(key), known, n=2)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            takes = f"it takes {', '.join(known)}" if known else "it takes none"
            raise ConfigError(f"lr_scheduler_kwargs: {key!r} is not an argument of lr_scheduler_type: {name}{hint}; "
                              f"{takes}")
    if name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr") and not {"min_lr", "min_lr_rate"} & set(kwargs):
        raise ConfigError(f"lr_scheduler_kwargs: lr_scheduler_type: {name} needs min_lr (an absolute rate) or "
                          f"min_lr_rate (a fraction of learning_rate), e.g. lr_scheduler_kwargs: {{min_lr_rate: 0.1}}")
    required = [p.name for p in params
                if p.name in known and p.default is inspect.Parameter.empty and p.name not in kwargs]
    if required:
        raise ConfigError(f"lr_scheduler_kwargs: lr_scheduler_type: {name} needs {', '.join(required)}, e.g. "
                          f"lr_scheduler_kwargs: {{{required[0]}: ...}}")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.learning_rate)
    try:
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=10,
                                  scheduler_specific_kwargs=dict(kwargs))
        for _ in range(3):
            optimizer.step()
            scheduler.step(1.0) if name in ("reduce_lr_on_plateau", "greedy") else scheduler.step()
    except (TypeError, ValueError, ZeroDivisionError, AssertionError) as err:
        raise ConfigError(f"lr_scheduler_kwargs: {kwargs} is not allowed for lr_scheduler_type: {name}: {err}") from None


def check_template(name: str | None) -> None:
    """`template:` must be a built-in chat template (or unset / "tokenizer": the tokenizer's own); the error
    names the closest ones, before any model loads."""
    from prefloop.data.template import known_templates

    if name is None or name.strip().lower() in ("tokenizer", *known_templates()):
        return
    known = known_templates()
    close = difflib.get_close_matches(name.strip().lower(), known, n=3, cutoff=0.4)
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise ConfigError(f"template: {name!r} is not a chat template prefloop knows{hint}; choose from "
                      f"{', '.join(known)}, or leave template unset to use the tokenizer's own chat template")


def _check_choice(key: str, value: str, module: str, enum_name: str) -> None:
    import importlib

    allowed = [e.value for e in getattr(importlib.import_module(module), enum_name)]
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}: {value!r} is not allowed{hint}; choose from {', '.join(allowed)}")


# ---------------------------------------------------------------------------------------------
# Machine-dependent resolution and saving


def cpu_supports_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(cfg: Config) -> Config:
    """`fp16: true` without CUDA falls back to bf16 (if the CPU has it) or fp32, with a one-line warning."""
    import torch

    if not cfg.fp16 or torch.cuda.is_available():
        return cfg
    use_bf16 = cpu_supports_bf16()
    print(
        f"prefloop: warning: fp16: true needs a CUDA GPU and none is available; "
        f"training in {'bf16 (this CPU supports it)' if use_bf16 else 'fp32'} instead",
        file=sys.stderr,
    )
    return dataclasses.replace(cfg, fp16=False, bf16=use_bf16)


def save_config(cfg: Config, output_dir: str | Path) -> Path:
    """Write the resolved config (every key, defaults included) to output_dir/prefloop_config.yaml."""
    path = Path(output_dir) / CONFIG_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    return path
