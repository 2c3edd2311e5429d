"""`prefloop train` and `prefloop.train()`: config -> data -> models -> reference cache -> Trainer -> outputs.

One function per stage, called in order by `run_training`, so the whole run reads top to bottom.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefloop.config import Config, load_config, resolve_precision, save_config
from prefloop.errors import ConfigError, DataError

SAMPLE_MAX_NEW_TOKENS = 64
_RUN_MARKERS = ("trainer_state.json", "adapter_config.json", "model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "train_results.json")
# What a prefloop training run writes into output_dir (and `overwrite_output_dir: true` removes before training there
# again, only in a directory that holds prefloop's run marker, prefloop_config.yaml): weights, state, results and logs
# of the previous run, and its `checkpoint-<digits>` directories (_CHECKPOINT_DIR). The reference cache (keyed, reused
# when still valid), the TensorBoard runs/ (one folder per run), the tokenizer files and anything else are kept.
_RUN_OUTPUTS = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin",
                "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json", "config.json", "generation_config.json",
                "trainer_state.json", "training_args.bin", "train_results.json", "eval_results.json",
                "all_results.json", "samples.jsonl", "health.jsonl", "prefloop_base.json", "training_*.png",
                "sync_reference")
_CHECKPOINT_DIR = re.compile(r"checkpoint-\d+")
# Config keys that name inputs of a run (files or directories); `overwrite_output_dir` refuses to remove any of them.
_INPUT_KEYS = ("model_name_or_path", "adapter_name_or_path", "ref_model", "ref_model_adapters", "dataset_dir",
               "deepspeed", "modpo_margin_models", "resume_from_checkpoint")


def train(config_or_path=None, **overrides) -> dict:
    """Run DPO training like `prefloop train`; returns the final metrics (train, eval, and `before_`
    eval metrics measured before the first step), or with `rounds:` the report across rounds."""
    return run_config(load_config(config_or_path, overrides))


def run_config(cfg: Config) -> dict:
    """One training run, or every round of `rounds:` (train/rounds.py)."""
    if cfg.rounds:
        from prefloop.train.rounds import run_rounds

        return run_rounds(cfg)
    return run_training(cfg)


def train_command(config: str | None = None, config_file: str | None = None, overrides=(),
                  local_rank: int | None = None) -> int:
    """CLI entry: `prefloop train CONFIG.yaml [key=value ...]` or `--config_file CONFIG.yaml`.

    `local_rank` (from the deepspeed launcher) is ignored: the launcher also sets LOCAL_RANK."""
    overrides = list(overrides or [])
    if config and config_file:
        if "=" in config and not Path(config).is_file():  # argparse gave the first override to `config`
            overrides.insert(0, config)
            config = None
        else:
            raise ConfigError(f"two config files given ({config} and --config_file {config_file}); give one")
    path = config or config_file
    if path is None:
        raise ConfigError("no config file: run `prefloop train CONFIG.yaml [key=value ...]` "
                          "(see examples/seed_config.yaml)")
    run_config(load_config(path, overrides))
    return 0


# ---------------------------------------------------------------------------------------------


@dataclass
class Data:
    train: list[dict]
    val: list[dict]
    template_name: str
    stop_ids: list[int]  # token ids that end a reply (for sample answers)
    template: object = None  # the data.template.ChatTemplate the pairs were rendered with
    dimension_names: list[str] = field(default_factory=list)  # per-dimension metrics (data/dimensions.py)
    # split name -> the PreferencePairs behind that split's features, in the features' order (reward-model
    # margins, per-dimension agreement); by position, since ids come from the data and may repeat
    split_pairs: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)  # datasets, files, sha256, counts (model card)


def run_training(cfg: Config, round_info: dict | None = None) -> dict:
    """One DPO run of `cfg`; returns the final metrics. `round_info` ({"index", "name", "run", "output_dir"}):
    this run is a round of iterative DPO (train/rounds.py), passed on to the registry (`register_output`).

    Each stage is timed (train/timing.py): the summary ends with a `Time:` line, and the `time/<stage>_s`
    keys go into the returned metrics and the saved results (train_results.json, all_results.json)."""
    from prefloop.train.timing import Stopwatch

    watch = Stopwatch()
    with watch.stage("setup"):
        from transformers import set_seed

        from prefloop.models import apply_finetuning, count_parameters, load_causal_lm, load_tokenizer, weights_dtype
        from prefloop.train.console import StepZeroEvaluation, quiet_library_bars, use_metrics_printer
        from prefloop.train.distributed import check_resume_world_size, prepare_environment
        from prefloop.train.health import install_health
        from prefloop.train.losses import build_loss_spec

        quiet_library_bars()  # no progress-bar escape codes in a log file
        prepare_environment(cfg)  # torchrun / accelerate / a scheduler's WORLD_SIZE: data-parallel
        doomed = check_output_dir(cfg)  # removed (and prefloop_config.yaml written) only when training starts
        cfg = resolve_precision(cfg)
        given_cfg = cfg  # the config saved as prefloop_config.yaml (before any change the data forces)
        args = build_args(cfg)
        watch.sync_cuda = args.device.type == "cuda"  # stage times include the GPU work they queued
        say = print if args.process_index == 0 else (lambda *a, **k: None)
        set_seed(cfg.seed)
        resume_from = checkpoint_to_resume(cfg, say)  # checked now, before any model loads

    with watch.stage("data"):
        tokenizer = load_tokenizer(cfg.model_name_or_path)
        data = load_data(cfg, tokenizer, say)
        if cfg.run_eval and not data.val:  # every held-out pair was dropped in encoding: train without evaluation
            cfg = dataclasses.replace(cfg, eval_strategy="no", do_eval=False)
            args = build_args(cfg)
        loss_spec = build_loss_spec(cfg)
        check_pair_options(data, loss_spec)
    with watch.stage("model"):
        model = apply_finetuning(load_causal_lm(cfg.model_name_or_path, dtype=weights_dtype(cfg)), cfg)
        trainable, total = count_parameters(model)
        say(f"Model {cfg.model_name_or_path}"
            + (f" + adapter {cfg.adapter_name_or_path} (trained further)" if cfg.adapter_name_or_path else "")
            + f": {cfg.finetuning_type} fine-tuning, {trainable:,} of {total:,} parameters trainable "
              f"({100 * trainable / total:.2f}%)" + (", weights in bf16 (pure_bf16)" if cfg.pure_bf16 else "") + ".")
        for note in (dropout_note(cfg, model), continued_adapter_note(cfg, model)):
            if note:
                say(note)
        if data.template_name != "tokenizer" and getattr(model, "generation_config", None) is not None:
            from prefloop.models import use_chat_template

            # the saved model stops where the trained replies end (full/freeze; `prefloop merge` for LoRA)
            use_chat_template(tokenizer, data.template, model.generation_config)
        check_token_ids_fit(cfg, data, model)
        model.to(args.device)
        autocast_dtype = torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else None
        say(describe_attention(cfg, model))
    with watch.stage("reference"):
        in_step_reference, cache_status = prepare_reference(cfg, args, loss_spec, model, tokenizer, data,
                                                            autocast_dtype, say, in_rounds=round_info is not None)
        if "modpo" in loss_spec.names:
            from prefloop.train.modpo import prepare_margin_rewards

            cache_status += prepare_margin_rewards(cfg, model, tokenizer, data, autocast_dtype, args.device, say,
                                                   (round_info or {}).get("margin_reference"))
    with watch.stage("model"):  # after the reference pass: the reference cache's key fingerprints fp32 weights
        cast = keep_frozen_weights_in_compute_dtype(cfg, model, autocast_dtype)
        if cast:
            say(cast)
    if cfg.gradient_checkpointing == "auto" and cfg.do_train:
        with watch.stage("memory_plan"):
            say(plan_memory(cfg, model, tokenizer, data, autocast_dtype))

    with watch.stage("trainer"):
        # Every input is loaded and checked: only now may the previous run go and this run's config be written.
        replace_previous_run(cfg, doomed)
        if args.process_index == 0:
            save_config(given_cfg, cfg.output_dir)
        trainer = make_trainer(cfg, args, model, tokenizer, data, loss_spec, in_step_reference, autocast_dtype)
        use_metrics_printer(trainer)  # log lines as numbers, bars only on a terminal
        trainer.health = install_health(trainer, cfg)
        if cfg.ref_update == "sync" and in_step_reference is not None:
            from prefloop.train.sync import install_sync

            install_sync(trainer, in_step_reference.model, cfg, resume_from, say)
    with watch.stage("eval_before"):
        before = evaluation_before_training(cfg, trainer, data, say)
    trainer.add_callback(StepZeroEvaluation(trainer, before))  # history, TensorBoard and plots start at step 0
    with watch.stage("samples"):
        samples = sample_answers(trainer.model, tokenizer, data, cfg.sample_prompts, "before", say)
    report_quality("Before training", before, say, first=True)

    metrics, train_metrics, eval_metrics = {}, {}, {}
    if cfg.do_train:
        with watch.stage("train"):
            result = trainer.train(resume_from_checkpoint=check_resume_world_size(resume_from))
        with watch.stage("save"):
            trainer.save_model()
            trainer.save_state()
            train_metrics = dict(result.metrics)
            trainer.log_metrics("train", train_metrics)
            trainer.save_metrics("train", train_metrics)
        metrics.update(train_metrics)
    if data.val and cfg.run_eval:
        with watch.stage("eval_after"):
            eval_metrics = final_evaluation(trainer)
            trainer.log_metrics("eval", eval_metrics)
            trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    metrics.update({f"before_{k}": v for k, v in before.items()})
    metrics.update({f"cache/{k}": v for k, v in sorted(cache_status.items())})  # reference/margin caches

    with watch.stage("samples"):
        sample_answers(trainer.model, tokenizer, data, cfg.sample_prompts, "after", say, samples)
    report_quality("After training", metrics, say)
    if args.process_index == 0:
        with watch.stage("outputs"):
            if cfg.do_train:
                write_model_card_and_base(cfg, data, before, metrics, trainer.state.global_step, say)
            write_samples(samples, cfg.output_dir, say)
            if cfg.plot_loss:
                from prefloop.train.plots import plot_history

                paths = plot_history(trainer.state.log_history, cfg.output_dir)
                say(f"Plots: {', '.join(p.name for p in paths) or 'none (nothing logged)'} in {cfg.output_dir}")
    # Before the registration, which fingerprints output_dir's files: the registry stage is only printed.
    timings = watch.metrics()
    metrics.update(timings)
    save_timings(trainer, timings, train_metrics if cfg.do_train else None, eval_metrics or None)
    if cfg.registry and cfg.do_train and args.process_index == 0:
        with watch.stage("registry"):
            register_output(cfg, metrics, data, say,
                            round_info and {k: v for k, v in round_info.items() if k != "margin_reference"})
    total = watch.total()
    say(summary(cfg, trainer, metrics, before, total) + "\n" + watch.line(total))
    return metrics


def save_timings(trainer, timings: dict, train_metrics: dict | None, eval_metrics: dict | None) -> None:
    """Add the `time/<stage>_s` keys to train_results.json (or, without training, eval_results.json) and
    all_results.json, where readers of a run's results find them (rank 0 writes; nothing when no results
    file is written)."""
    if train_metrics is not None:
        trainer.save_metrics("train", {**train_metrics, **timings})
    elif eval_metrics is not None:
        trainer.save_metrics("eval", {**eval_metrics, **timings})


# ---------------------------------------------------------------------------------------------
# Stages


def check_output_dir(cfg: Config) -> list[Path]:
    """output_dir must not be an input of the run (the model, the reference, an adapter): saving would overwrite it.
    One that holds a training run is refused unless the run is resumed (`resume_from_checkpoint`) or replaced
    (`overwrite_output_dir: true`). Returns what replacing the previous run removes (`replace_previous_run` removes
    it once every input of the run is loaded and checked); [] when nothing is to go.
    Replacing a *prefloop* run (output_dir holds prefloop_config.yaml) removes
    its weights, checkpoint-<digits> directories, state, results and health log (`previous_run_outputs`), so that
    nothing of it mixes into the new run: no stale checkpoint-N that `resume_from_checkpoint: true` or
    `save_total_limit` would take for this run's, no adapter files beside a full model. Before removing anything,
    a run whose inputs (model, adapters, reference, data, DeepSpeed config, MODPO margin models) lie inside what
    would be removed is refused. Without the marker nothing is removed (as in transformers and LLaMA-Factory):
    the run trains over the directory. The reference cache and anything else in the directory stay."""
    out = Path(cfg.output_dir)
    for key in ("model_name_or_path", "ref_model", "adapter_name_or_path", "ref_model_adapters"):
        given = getattr(cfg, key, None)
        if given and Path(given).exists() and out.exists() and Path(given).resolve() == out.resolve():
            raise ConfigError(f"output_dir {out} is the {key} this run loads; saving there would overwrite it: pick "
                              f"another output_dir")
    used = out.is_dir() and (any((out / m).exists() for m in _RUN_MARKERS) or bool(_checkpoint_dirs(out)))
    resuming = bool(_resume_value(cfg))
    if used and not (cfg.overwrite_output_dir or resuming):
        raise ConfigError(f"output_dir {out} already holds a training run; set overwrite_output_dir: true to "
                          f"train again there, resume_from_checkpoint: true to continue it, or pick another output_dir")
    if used and cfg.overwrite_output_dir and not resuming:
        from prefloop.config import CONFIG_FILENAME
        from prefloop.train.distributed import is_main_process

        if not (out / CONFIG_FILENAME).is_file():
            if is_main_process():
                print(f"overwrite_output_dir: {out} holds no {CONFIG_FILENAME} (not a prefloop run), so nothing is "
                      f"removed: the run writes over it", file=sys.stderr)
            return []
        doomed = previous_run_outputs(out)
        for key, given in input_paths(cfg):
            for path in doomed:
                if _is_within(given, path):
                    raise ConfigError(f"overwrite_output_dir: true would remove {path}, which holds {key} {given} "
                                      f"that this run reads; move it out of output_dir {out} or pick another "
                                      f"output_dir")
        return doomed
    return []


def replace_previous_run(cfg: Config, doomed: list[Path]) -> None:
    """Remove `doomed` (what `check_output_dir` found of the previous prefloop run in output_dir) on the main
    process, and say what went. Called only when training is about to start, after the config, the data, the
    model and the reference were loaded and checked: a run that fails on its input leaves the previous run whole."""
    from prefloop.train.distributed import is_main_process

    if doomed and is_main_process():
        out = Path(cfg.output_dir)
        removed = clear_previous_run(out, doomed)
        if removed:
            print(f"overwrite_output_dir: removed the previous run's {', '.join(removed)} from {out}",
                  file=sys.stderr)


def _checkpoint_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if _CHECKPOINT_DIR.fullmatch(p.name) and p.is_dir()) if out.is_dir() else []


def previous_run_outputs(out: Path) -> list[Path]:
    """What `overwrite_output_dir: true` removes from a prefloop run's output_dir: `_RUN_OUTPUTS` and the
    checkpoint-<digits> directories."""
    found = _checkpoint_dirs(out)
    for pattern in _RUN_OUTPUTS:
        found.extend(p for p in sorted(out.glob(pattern)) if p not in found)
    return found


def input_paths(cfg: Config) -> list[tuple[str, Path]]:
    """(key, path) for each local file or directory the run reads: `_INPUT_KEYS` and the dataset files (each
    name as a path, in dataset_dir, or registered in dataset_info.json). Hub ids and missing paths are left out."""
    found = []

    def add(key, value):
        if isinstance(value, str) and value and Path(value).exists():
            found.append((key, Path(value)))

    for key in _INPUT_KEYS:
        value = _resume_value(cfg) if key == "resume_from_checkpoint" else getattr(cfg, key, None)
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            add(key, item)
            if key == "resume_from_checkpoint" and isinstance(item, str) and cfg.output_dir:
                add(key, str(Path(cfg.output_dir) / item))
    names = cfg.dataset if isinstance(cfg.dataset, list) else [cfg.dataset] if cfg.dataset else []
    for name in names:
        for part in str(name).split(","):
            part = part.strip()
            if part:
                add("dataset", part)
                add("dataset", str(Path(cfg.dataset_dir or ".") / part))
        try:
            from prefloop.data.registry import resolve_dataset

            for source in resolve_dataset(str(name), cfg.dataset_dir or "data"):
                for file in source.files or []:
                    add("dataset", str(file))
        except Exception:  # noqa: BLE001 - a name the loader cannot resolve fails later, with its own message
            pass
    return found


def _is_within(path: Path, container: Path) -> bool:
    """Whether `path` is `container` or inside it, by the absolute paths as written or with links resolved."""
    for a, b in ((os.path.abspath(path), os.path.abspath(container)), (str(path.resolve()), str(container.resolve()))):
        if a == b or a.startswith(b.rstrip(os.sep) + os.sep):
            return True
    return False


def clear_previous_run(out: Path, paths: list[Path] | None = None) -> list[str]:
    """Remove what an earlier prefloop run wrote into `out` (`previous_run_outputs`); returns the names removed."""
    import shutil

    removed = []
    for path in previous_run_outputs(out) if paths is None else paths:
        if not os.path.lexists(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def evaluation_before_training(cfg: Config, trainer, data: Data, say) -> dict:
    """Eval metrics of the untrained policy. Skipped under FSDP/DeepSpeed: accelerate prepares a sharded model
    only together with its optimizer (seen with FSDP2 on an H100), so an evaluation cannot come first there."""
    if not data.val:
        return {}
    if cfg.fsdp or cfg.deepspeed:
        say("Before training: evaluation skipped under FSDP/DeepSpeed (the model is sharded with its optimizer "
            "when training starts); the evaluations during and after training run as usual.")
        return {}
    return trainer.evaluate_quietly(description="Before training")


def final_evaluation(trainer) -> dict:
    """Eval metrics after training; reuses the evaluation the Trainer already ran at the last step."""
    history = trainer.state.log_history
    last_eval = next((h for h in reversed(history) if "eval_loss" in h), None)
    if last_eval is not None and last_eval.get("step") == trainer.state.global_step:
        return {k: v for k, v in last_eval.items() if k.startswith("eval_") or k == "epoch"}
    return trainer.evaluate()


def check_pair_options(data: Data, loss_spec) -> None:
    """Per-pair margins or weights in the data that the chosen loss cannot use: an error now, not at step N."""
    features = data.train + data.val
    with_margin = sum(1 for f in features if f.get("margin", 0.0) != 0.0)
    with_weight = sum(1 for f in features if f.get("weight", 1.0) != 1.0)
    if with_margin and not loss_spec.uses_margin:
        raise ConfigError(f"{with_margin} pairs carry a 'margin' but pref_loss {loss_spec.names} cannot use margins; "
                          f"use sigmoid, hinge, ipo, simpo, ... or remove the margins from the data")
    if with_weight and not loss_spec.uses_pair_weight:
        raise ConfigError(f"{with_weight} pairs carry a 'weight' but pref_loss {loss_spec.names} sorts the batch "
                          f"(aot), so rows are not pairs; drop the weights or pick another loss")


def build_args(cfg: Config):
    from prefloop.train.trainer import build_training_arguments

    return build_training_arguments(cfg)


_SKIPPED_SHOWN = 5  # skipped bad rows listed with file:line when training


def load_data(cfg: Config, tokenizer, say) -> Data:
    from prefloop.data.encode import encode_pairs
    from prefloop.data.loader import load_pairs, split_validation
    from prefloop.data.registry import CONFIG_KEYS
    from prefloop.data.template import dropped_by_builtin, get_template
    from prefloop.train.dataset import to_feature
    from prefloop.train.model_card import data_provenance

    dataset = ",".join(cfg.dataset) if isinstance(cfg.dataset, list) else cfg.dataset
    loaded = load_pairs(dataset, cfg.dataset_dir, skip_bad_rows=cfg.skip_bad_rows, max_samples=cfg.max_samples,
                        options=CONFIG_KEYS, seed=cfg.seed)
    say(f"Data {dataset}: {loaded.summary()}")
    if loaded.skipped.count:  # where: the summary groups reasons without lines (`data check` lists them too)
        shown = loaded.skipped.problems[:_SKIPPED_SHOWN]
        say(f"  skipped row(s), first {len(shown)} of {loaded.skipped.count}:" if loaded.skipped.count > len(shown)
            else "  skipped row(s):")
        for problem in shown:
            say(f"    {problem}")
    all_pairs = loaded.pairs
    if cfg.pref_dimensions:
        from prefloop.data.dimensions import apply_dimensions

        all_pairs, dim_report = apply_dimensions(all_pairs, cfg.pref_dimensions, cfg.dimension_conflicts,
                                             cfg.dimension_weighting)
        say(f"  {dim_report.summary()}")
    val_size = int(cfg.val_size) if cfg.val_size >= 1 else cfg.val_size
    train_pairs, val_pairs = split_validation(all_pairs, val_size, cfg.seed) if val_size else (all_pairs, [])
    template = get_template(cfg.template, tokenizer)
    duplicates = duplicates_note(all_pairs, template.stop_strings(tokenizer))
    if duplicates:
        say(f"  {duplicates}")
    dropped = dropped_by_builtin(tokenizer, cfg.template)
    if dropped:
        say(f"Warning: template: {cfg.template} replaces {cfg.model_name_or_path}'s own chat template in the saved "
            f"model and its checkpoints; the built-in does not render {', '.join(dropped)}, so a model served or "
            f"merged from this run loses them (e.g. tool calling). Leave `template` unset to keep the model's own.")
    if template.name != "tokenizer":
        # The tokenizer saved with the model (and its checkpoints) carries the template the model was trained
        # with, so serving, generation and `prefloop merge` render prompts the same way (LLaMA-Factory does too).
        tokenizer.chat_template = template.source
    splits, reports, split_pairs = {}, {}, {}
    for name, pairs in (("train", train_pairs), ("validation", val_pairs)):
        if not pairs:
            splits[name], split_pairs[name] = [], []
            continue
        encoded, reports[name] = encode_pairs(pairs, tokenizer, template, cfg.cutoff_len)
        say(f"  {name}: {reports[name].summary()}")
        splits[name] = [to_feature(p, i) for i, p in enumerate(encoded)]
        split_pairs[name] = [pairs[p.index] for p in encoded]
    if cfg.do_train and not splits["train"]:
        raise DataError(f"{dataset}: no training pairs are left: encoding dropped all {len(train_pairs)} "
                        f"({_drop_causes(reports['train'])}); raise cutoff_len (now {cfg.cutoff_len}) or fix "
                        f"those pairs (`{data_check_command(cfg, dataset)}` lists them)")
    if val_pairs and not splits["validation"]:
        check_evaluation_can_be_skipped(cfg, dataset, len(val_pairs), reports["validation"])
    from prefloop.data.dimensions import attach_agreement, dimension_names

    names = dimension_names(all_pairs)
    if names:  # per-dimension metrics: each feature's agreement of every dimension with its direction
        for name, features in splits.items():
            attach_agreement(features, split_pairs[name], names)
    provenance = data_provenance(loaded, len(train_pairs), len(val_pairs), len(splits["train"]), len(splits["validation"]))
    return Data(splits["train"], splits["validation"], template.name, template.stop_token_ids(tokenizer),
                template=template, dimension_names=names, split_pairs=split_pairs,
                provenance=provenance)


def duplicates_note(pairs: list, stops) -> str:
    """"N exact duplicate pairs kept ..." when `pairs` hold exact duplicates (`quality.check_duplicates`, the rule
    of `data check`); "" when none. They are trained on, as LLaMA-Factory and TRL do, but never silently."""
    from prefloop.data.quality import check_duplicates
    from prefloop.data.words import count

    finding, flagged = check_duplicates(pairs, stops)
    if not flagged:
        return ""
    shown = "; ".join(f"{e['source'] or e['id']} {e['detail']}" for e in finding.examples[:3])
    return (f"{count(len(flagged), 'exact duplicate pair')} (beyond the first copy) kept and trained on, as "
            f"LLaMA-Factory and TRL do (e.g. {shown}); `prefloop data check --write-clean` writes a copy with one of "
            "each")


def data_check_command(cfg: Config, dataset: str) -> str:
    """The `prefloop data check` command that reads and encodes `dataset` as this run does: dataset_dir when not
    the default, the template when set, --skip-bad-rows when set; quoted for a shell."""
    import shlex

    words = ["prefloop", "data", "check", dataset]
    if cfg.dataset_dir and cfg.dataset_dir != "data":
        words += ["--dataset-dir", str(cfg.dataset_dir)]
    words += ["--tokenizer", str(cfg.model_name_or_path)]
    if cfg.template:
        words += ["--template", cfg.template]
    words += ["--cutoff-len", str(cfg.cutoff_len)]
    if cfg.skip_bad_rows:
        words.append("--skip-bad-rows")
    return shlex.join(words)


def _drop_causes(report) -> str:
    return "; ".join(f"{n} {reason}" for reason, n in report.drop_reasons().most_common()) or "no reason recorded"


def check_evaluation_can_be_skipped(cfg: Config, dataset: str, held_out: int, report) -> None:
    """Encoding dropped every held-out pair: a warning, and training runs without evaluation; a DataError
    when the config depends on evaluation (early stopping), since skipping it would change the run."""
    cause = (f"validation: encoding dropped all {held_out} held-out pairs of {dataset} ({_drop_causes(report)}) "
             f"at cutoff_len {cfg.cutoff_len}")
    fix = "raise cutoff_len, or val_size so that some held-out pairs fit"
    if cfg.early_stopping_patience is not None:
        raise DataError(f"{cause}; early_stopping_patience needs evaluation: {fix}, or remove early_stopping_patience")
    if cfg.run_eval:
        print(f"prefloop: warning: {cause}; evaluation is skipped (to evaluate: {fix})", file=sys.stderr)


def prepare_reference(cfg: Config, args, loss_spec, model, tokenizer, data: Data, autocast_dtype, say,
                      in_rounds: bool = False):
    """Cache reference log-probs into the features (precompute_ref), or return the Reference the step
    runs (None when the loss is reference-free or the cache covers everything), with a Counter of the
    cache files reused and computed ("reference_reused", "reference_computed"). `in_rounds`: a round of
    iterative DPO, whose reference train/rounds.py chose (no note about it)."""
    from collections import Counter

    from prefloop.models import build_reference
    from prefloop.train.reference import precompute_reference

    counts: Counter = Counter()
    if not loss_spec.needs_reference:
        say(f"pref_loss {'+'.join(loss_spec.names)} is reference-free: no reference model is loaded.")
        return None, counts
    sync = cfg.ref_update == "sync"
    reference = build_reference(cfg, model, tokenizer, before_training_only=cfg.precompute_ref and not sync)
    reference.model.to(args.device)
    use_backend(cfg, reference.model)
    say(f"Reference: {reference.describe()}")
    if cfg.adapter_name_or_path and reference.kind == "adapters_disabled" and not in_rounds:
        say(f"Note: the reference is the base without the adapter this run continues ({cfg.adapter_name_or_path}), "
            f"because ref_model names the base; leave ref_model out (or set ref_model_adapters) to measure the policy "
            f"against the adapter's model it starts from.")
    if sync:
        say(f"ref_update: sync (TR-DPO): reference <- {cfg.ref_sync_alpha} * policy + {1 - cfg.ref_sync_alpha:g} * "
            f"reference every {cfg.ref_sync_steps} steps, so it runs in the step (precompute_ref does not apply).")
    if not cfg.precompute_ref or sync:
        return reference, counts
    # Several processes (torchrun): each computes its shard, rank 0 writes the cache (reference.py).
    status = precompute_reference(reference, {"train": data.train, "validation": data.val}, cfg, tokenizer,
                                  data.template_name, autocast_dtype, args.device, log=say)
    counts.update(f"reference_{'reused' if v == 'cached' else v}" for k, v in status.items() if k != "seconds")
    return None, counts  # a separately loaded reference is dropped here: the step needs only the policy


def check_token_ids_fit(cfg: Config, data: Data, model) -> None:
    """Every token id of the encoded data must have a row in the model's embeddings: a tokenizer with tokens
    added after the model was made (a template's special tokens, a new pad token) gave an index error deep in
    the forward pass. DataError naming the sizes and what to do."""
    rows = model.get_input_embeddings().weight.shape[0]
    top = max((max(f[k]) for f in data.train + data.val for k in ("prompt_ids", "chosen_ids", "rejected_ids")
               if f[k]), default=-1)
    if top >= rows:
        raise DataError(f"the encoded data uses token id {top}, but {cfg.model_name_or_path} has embeddings for "
                        f"{rows} tokens: its tokenizer has tokens the model was not trained with. Use the model's "
                        f"own tokenizer (and a template whose special tokens it has), or resize the model's "
                        f"embeddings (model.resize_token_embeddings(len(tokenizer))) and save it first")


def continued_adapter_note(cfg: Config, model) -> str | None:
    """Continuing an adapter (`adapter_name_or_path`) trains it with its own rank, alpha and targets: a line
    saying so when the config's LoRA keys say otherwise (LLaMA-Factory ignores them silently there)."""
    if not cfg.adapter_name_or_path or not hasattr(model, "peft_config"):
        return None
    own = model.peft_config["default"]
    differs = [f"{key} {mine} -> {theirs}" for key, mine, theirs in (
        ("lora_rank", cfg.lora_rank, own.r), ("lora_alpha", cfg.resolved_lora_alpha, own.lora_alpha))
        if mine != theirs]
    if not differs:
        return None
    return (f"Note: the adapter {cfg.adapter_name_or_path} keeps its own shape while trained further "
            f"({', '.join(differs)}; its targets: {', '.join(sorted(own.target_modules or []))}).")


def dropout_note(cfg: Config, model) -> str | None:
    """`disable_dropout` (default true, as TRL's and LLaMA-Factory's DPO): every dropout of the policy off (the
    reference computes in eval mode either way, `models.Reference.context`). One line saying so, or that dropout
    stays on, and that `lora_dropout` is off too (TRL and LLaMA-Factory drop it the same way); None when the
    model has no dropout."""
    from prefloop.models import disable_dropout

    if cfg.disable_dropout:
        switched = disable_dropout(model)
        if cfg.finetuning_type == "lora" and cfg.lora_dropout > 0:
            return (f"Dropout: off (disable_dropout: true), lora_dropout {cfg.lora_dropout:g} included, as in TRL and "
                    f"LLaMA-Factory; set disable_dropout: false to train with dropout.")
        if not switched:
            return None
        return (f"Dropout: {switched} dropout rates of the model set to 0 (disable_dropout: true, as TRL and "
                f"LLaMA-Factory do: the policy's log-probs without dropout noise, like the reference's).")
    import torch

    active = sum(1 for m in model.modules() for attr, value in vars(m).items()
                 if (isinstance(m, torch.nn.modules.dropout._DropoutNd) and attr == "p" and value > 0)
                 or (("dropout" in attr or "pdrop" in attr) and isinstance(value, float) and value > 0))
    return (f"Dropout: kept on in the policy (disable_dropout: false, {active} dropout rates); the reference runs "
            f"in eval mode, without it.") if active else None


def keep_frozen_weights_in_compute_dtype(cfg: Config, model, autocast_dtype) -> str | None:
    """A bf16/fp16 LoRA run: store the frozen base's linear weights in that dtype (`models.frozen_linears_to`:
    bit-identical under autocast, no per-call cast); None when the run is not one, or under FSDP /
    DeepSpeed (uniform parameter dtypes) or `ref_update: sync` (the reference copies the policy's weights)."""
    if (cfg.finetuning_type != "lora" or autocast_dtype is None or cfg.fsdp or cfg.deepspeed
            or cfg.ref_update == "sync"):
        return None
    from prefloop.models import frozen_linears_to

    count = frozen_linears_to(model, autocast_dtype)
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype]
    return (f"Frozen base weights: {count} linear layers kept in {name} (autocast would cast them to {name} in "
            f"every call; the same numbers without the copies); the adapter trains in fp32.") if count else None


def plan_memory(cfg: Config, model, tokenizer, data: Data, autocast_dtype) -> str:
    """`gradient_checkpointing: auto`: checkpoint the layers `max_memory_gb` needs (train/memory.py)."""
    from prefloop.train.dataset import PairCollator
    from prefloop.train.logps import packed_row_tokens
    from prefloop.train.memory import auto_checkpointing, checkpoint_layers, decoder_layers

    if cfg.deepspeed or cfg.fsdp:  # sharded weights: a probe forward outside the wrapper cannot run
        checkpoint_layers(model, len(decoder_layers(model)))
        return ("Gradient checkpointing (auto): every decoder layer (under FSDP / DeepSpeed the footprint is not "
                "measured; set gradient_checkpointing: false if the run fits without it)")
    collator = PairCollator(cfg.layout, tokenizer.pad_token_id, packed_row_tokens(model))
    try:
        plan = auto_checkpointing(model, data.train, collator, cfg.per_device_train_batch_size, cfg.logps_chunk_size,
                                  autocast_dtype, cfg.max_memory_gb)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"gradient_checkpointing: auto: {err}") from err
    return plan.describe()


def use_backend(cfg: Config, model) -> str | None:
    """Switch `model` to `cfg.attn_backend` (train/attention.py); ConfigError when it cannot run it."""
    from prefloop.train.attention import use_attention_backend

    dtype = torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else None  # None: the weights' dtype
    try:
        return use_attention_backend(model, cfg.attn_backend, dtype=dtype)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def describe_attention(cfg: Config, model) -> str:
    """Switch the policy to its attention backend; one line saying which runs and why."""
    backend = use_backend(cfg, model)
    device = next(model.parameters()).device
    if backend is None:
        return (f"Attention: the model's own {model.config._attn_implementation!r} with an explicit mask "
                f"(attn_backend needs an SDPA model)")
    precision = "bf16" if cfg.bf16 else "fp16" if cfg.fp16 else "fp32"
    why = (f"attn_backend: auto on {device.type} in {precision}" if cfg.attn_backend == "auto"
           else f"attn_backend: {backend}")
    if cfg.attn_backend == "auto" and device.type == "cuda" and backend != "varlen":
        from prefloop.train.varlen import kernel_ok

        why += f"; not varlen: {kernel_ok('cuda', torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else torch.float32)}"
    return f"Attention: {backend} ({why})"


def make_trainer(cfg, args, model, tokenizer, data: Data, loss_spec, reference, autocast_dtype):
    from prefloop.train.dataset import PairCollator, PairDataset
    from prefloop.train.logps import packed_row_tokens
    from prefloop.train.trainer import PreferenceTrainer

    return PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=PairDataset(data.train),
        eval_dataset=PairDataset(data.val) if data.val else None,
        data_collator=PairCollator(cfg.layout, tokenizer.pad_token_id, packed_row_tokens(model)),
        processing_class=tokenizer,
        loss_spec=loss_spec,
        reference=reference,
        chunk_size=cfg.logps_chunk_size,
        ld_alpha=cfg.ld_alpha,
        autocast_dtype=autocast_dtype,
        dimension_names=data.dimension_names,
        probe_prompts=[f["prompt_ids"] for f in spread(data.val, cfg.length_probe_prompts)],
    )


def register_output(cfg: Config, metrics: dict, data: Data, say, round_info: dict | None = None) -> dict:
    """`registry: NAME`: register output_dir as a candidate version of NAME with its parent (the registered
    version it started from, found by path), the config, the data fingerprints and the final metrics;
    `mlflow_tracking_uri` mirrors it into MLflow.

    `round_info` (a round of iterative DPO, from train/rounds.py: {"index", "name", "run", "output_dir"}) goes
    into the version's meta as `round`; the parent of round k > 1 is the version of round k-1 of the same run
    (`run`: the rounds run's id, kept across resumes), round 1's is found by path as above. A round this run
    already registered (a killed run resumed) is not registered again: its version is returned."""
    from prefloop.registry import versions as vs
    from prefloop.registry.commands import register_model
    from prefloop.store import Store
    from prefloop.train.reference import data_fingerprint

    fingerprints = {"dataset": cfg.dataset, "train": data_fingerprint(data.train),
                    "validation": data_fingerprint(data.val) if data.val else None}
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    extra = {"data": fingerprints, **({"round": round_info} if round_info else {})}
    with Store(cfg.registry_db) as store:
        parent_ref = None
        if round_info:
            done = vs.find_round(store, cfg.registry, round_info["run"], round_info["index"])
            if done is not None:
                say(f"Round {round_info['index']} of this run is already registered as {vs.label(done)} in "
                    f"{cfg.registry_db} (a resumed run registers each round once)")
                if vs.manifest_of(Path(cfg.output_dir))[1] != done["meta"].get("fingerprint"):
                    say(f"Note: {cfg.output_dir} now differs from the files registered as {vs.label(done)} (the "
                        f"resume retrained from a checkpoint after the registration); {vs.label(done)} keeps the "
                        f"registered copy")
                return done
            previous = vs.find_round(store, cfg.registry, round_info["run"], round_info["index"] - 1)
            parent_ref = vs.label(previous) if previous else None
            if previous is None and round_info["index"] > 1:
                say(f"Round {round_info['index'] - 1} of this run is not registered (registry: was set after it "
                    f"ran?), so round {round_info['index']}'s parent is found by path")
        version = register_model(store, cfg.output_dir, cfg.registry, parent=parent_ref, extra_meta=extra,
                                 metrics=numeric)
        parent = store.model_version(version["parent_id"]) if version["parent_id"] else None
        say(f"Registered {cfg.registry}:{version['version']} in {cfg.registry_db} as the candidate"
            + (f" (round {round_info['index']})" if round_info else "")
            + (f" (parent {parent['name']}:{parent['version']})" if parent else
               f" (no parent: {cfg.model_name_or_path} is not a registered version)"))
        if cfg.mlflow_tracking_uri:
            from prefloop.registry.mlflow_mirror import sync

            sync(store, cfg.registry, cfg.mlflow_tracking_uri)
            say(f"Mirrored {cfg.registry} into MLflow at {cfg.mlflow_tracking_uri}")
    return version


def _resume_value(cfg: Config):
    """`resume_from_checkpoint` with the text "true"/"false" (quoted in YAML) read as the boolean."""
    value = cfg.resume_from_checkpoint
    if isinstance(value, str) and value.strip().lower() in ("true", "false") and not Path(value).is_dir():
        return value.strip().lower() == "true"
    return value


def checkpoint_to_resume(cfg: Config, say=None):
    """The checkpoint directory `resume_from_checkpoint` names, checked; None when not resuming.

    `true` (or the text "true") = the latest *complete* checkpoint-N in output_dir: one a crash cut short while
    saving (no trainer_state.json, which the Trainer writes last) is skipped with a note, where transformers'
    get_last_checkpoint would hand it to the Trainer. A path is taken as given, or inside output_dir when it
    is not a directory from here (`resume_from_checkpoint: checkpoint-500`); it must be a checkpoint."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    value = _resume_value(cfg)
    if not value:
        return None
    out = Path(cfg.output_dir)
    if value is True:
        checkpoints = sorted((p for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()
                              and p.name.split("-", 1)[1].isdigit()), key=lambda p: int(p.name.split("-", 1)[1]))
        complete = [p for p in checkpoints if (p / "trainer_state.json").is_file()]
        if not complete:
            cut = f" ({', '.join(p.name for p in checkpoints)} lack trainer_state.json)" if checkpoints else ""
            raise ConfigError(f"resume_from_checkpoint: true, but {cfg.output_dir} has no complete checkpoint-* "
                              f"directory{cut}; give a checkpoint path or train from the start")
        skipped = [p.name for p in checkpoints[checkpoints.index(complete[-1]) + 1:]]
        if skipped and say is not None:
            say(f"Resume: skipped {', '.join(skipped)} (cut short while saving: no trainer_state.json); resuming from "
                f"{complete[-1].name}")
        return check_run_not_complete(cfg, complete[-1], say)
    path = Path(value)
    if not path.is_dir() and (out / path).is_dir():
        path = out / path
    if not path.is_dir():
        raise ConfigError(f"resume_from_checkpoint: {value} is not a directory")
    if not (path / "trainer_state.json").is_file():
        from transformers.trainer_utils import get_last_checkpoint

        inside = get_last_checkpoint(str(path))
        hint = (f"; it holds {Path(inside).name}: give that, or resume_from_checkpoint: true" if inside else
                "; give a checkpoint-N directory of an interrupted run (or true: the latest in output_dir)")
        raise ConfigError(f"resume_from_checkpoint: {path} is not a checkpoint (no trainer_state.json){hint}")
    return check_run_not_complete(cfg, path, say)


class RunComplete(ConfigError):
    """Resuming would train past the run's end (`check_run_not_complete`)."""


def check_run_not_complete(cfg: Config, checkpoint: Path, say=None) -> str:
    """`checkpoint` (a directory holding trainer_state.json) as a string, when resuming from it trains further.

    A run that already reached its end is refused (ConfigError): the Trainer would otherwise train one more
    step past max_steps each time (checkpoint-4 after checkpoint-3 of 3), restart the LR schedule and replace
    the run's train_loss. The end is cfg.max_steps when set (> 0); for an epoch-based run, the max_steps the
    checkpoint recorded, when num_train_epochs is unchanged (a changed one recomputes the total). Prints
    which checkpoint the run continues from."""
    state_file = Path(checkpoint) / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text())
        step = int(state.get("global_step") or 0)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"resume_from_checkpoint: {state_file} cannot be read ({err}); give another checkpoint "
                          f"or train from the start") from err
    if cfg.max_steps and cfg.max_steps > 0:
        total = cfg.max_steps
    else:
        recorded_epochs, recorded_total = state.get("num_train_epochs"), state.get("max_steps")
        same_epochs = (isinstance(recorded_epochs, (int, float)) and not isinstance(recorded_epochs, bool)
                       and float(recorded_epochs) == float(cfg.num_train_epochs))
        total = int(recorded_total) if same_epochs and isinstance(recorded_total, int) and recorded_total > 0 else None
    name = Path(checkpoint).name
    if total is not None and step >= total:
        raise RunComplete(f"output_dir {cfg.output_dir}: the run is already complete at step {step} of {total} "
                          f"({name}); raise max_steps / num_train_epochs to train further, or "
                          f"overwrite_output_dir: true to train again")
    if say is not None:
        say(f"Resuming from {name} (step {step}" + (f" of {total})" if total is not None else ")"))
    return str(checkpoint)


# ---------------------------------------------------------------------------------------------
# What a person reads


def report_quality(when: str, metrics: dict, say, first: bool = False) -> None:
    """The held-out accuracy line. Before training (`first`) it says why the accuracy is 0.5 only when the
    measurement shows it (every pair a tie: margins 0); a round that starts from an earlier round's policy, or
    a reference other than the starting model, starts with real margins."""
    if "eval_rewards/accuracies" not in metrics:
        return
    tied = metrics["eval_rewards/accuracies"] == 0.5 and abs(metrics.get("eval_rewards/margins", 1.0)) < 1e-6
    note = " (policy = reference, so every pair is a tie; ties count as 0.5)" if first and tied else ""
    say(f"{when}: held-out preference accuracy {metrics['eval_rewards/accuracies']:.3f}{note}; "
        f"reference-free ranking accuracy (mean log-prob per token, chosen > rejected) "
        f"{metrics['eval_ranking/accuracies']:.3f}")


def spread(items: list, count: int) -> list:
    """`count` items spread evenly over `items` (all of them when there are fewer), in order."""
    count = min(count, len(items))
    return [items[i * len(items) // count] for i in range(count)] if count else []


@torch.no_grad()
def sample_answers(model, tokenizer, data: Data, count: int, label: str, say=print, samples: list[dict] | None = None):
    """Greedy short answers to `count` validation prompts spread evenly over the split, added under `label`."""
    samples = samples if samples is not None else []
    features = spread(data.val, count)
    if not features:
        return samples
    from prefloop.models import autocast_for

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # as the server stops: the template's stops plus the model's generation-config EOS
    stops = data.template.stop_token_ids(tokenizer, model) if data.template else data.stop_ids
    for i, feature in enumerate(features):
        prompt = torch.tensor([feature["prompt_ids"]], device=device)
        with autocast_for(model):  # frozen weights kept in bf16 (keep_frozen_weights_in_compute_dtype)
            output = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                    max_new_tokens=SAMPLE_MAX_NEW_TOKENS, pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=stops, use_cache=True)
        answer = tokenizer.decode(output[0, prompt.shape[1]:], skip_special_tokens=True).strip()
        if len(samples) <= i:
            samples.append({"id": feature["id"], "prompt": tokenizer.decode(feature["prompt_ids"]),
                            "chosen": tokenizer.decode(feature["chosen_ids"], skip_special_tokens=True)})
        samples[i][label] = answer
        say(f"Sample answer {label} training [{feature['id']}]: {answer[:300]!r}")
    model.train(was_training)
    return samples


def write_model_card_and_base(cfg: Config, data: Data, before: dict, metrics: dict, steps: int, say) -> None:
    """Record the base model (absolute path or hub id + fingerprint; adapters.py) and write the model card."""
    from prefloop.adapters import base_fingerprint, portable_base, record_base
    from prefloop.train.model_card import write_model_card

    if cfg.finetuning_type == "lora":
        base = record_base(cfg.output_dir, cfg.model_name_or_path)  # into adapter_config.json too
    else:
        base = {"base_model_name_or_path": portable_base(cfg.model_name_or_path),
                "fingerprint": base_fingerprint(cfg.model_name_or_path)}
    after = {k: v for k, v in metrics.items() if not k.startswith("before_")}
    path = write_model_card(cfg, base, data.provenance, before, after, steps)
    say(f"Model card: {path}")


def write_samples(samples: list[dict], output_dir: str, say) -> None:
    if not samples:
        return
    path = Path(output_dir) / "samples.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")
    say(f"Sample answers before/after training: {path}")


def summary(cfg: Config, trainer, metrics: dict, before: dict, seconds: float) -> str:
    lines = [f"Done in {seconds:.0f} s: {trainer.state.global_step} steps, "
             f"train loss {metrics.get('train_loss', float('nan')):.4f}."]
    if "eval_rewards/accuracies" in metrics:
        acc_before = before.get("eval_rewards/accuracies", float("nan"))  # none under FSDP/DeepSpeed
        lines.append(f"Held-out preference accuracy: {acc_before:.3f} -> {metrics['eval_rewards/accuracies']:.3f}; "
                     f"ranking accuracy {before.get('eval_ranking/accuracies', float('nan')):.3f} -> "
                     f"{metrics['eval_ranking/accuracies']:.3f}; eval margin "
                     f"{metrics['eval_rewards/margins']:+.4f}.")
    what = "LoRA adapter" if cfg.finetuning_type == "lora" else "model"
    lines.append(f"Saved the {what}, tokenizer, config, trainer_state.json and results to {cfg.output_dir}"
                 + (" (merge the adapter with `prefloop merge`)." if cfg.finetuning_type == "lora" else "."))
    return "\n".join(lines)
