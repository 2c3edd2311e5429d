"""The model card (`README.md`) of a trained adapter or model: what it is, from what, and how it scored.

PEFT saves a blank template ("More Information Needed"); this card states the base model (path or hub id
and its fingerprint), the data (dataset names, files with their sha256, pair counts before and after
encoding), the training config, the held-out evaluation before and after training, and the prefloop,
torch and transformers versions. Its YAML front matter (`base_model`, `library_name`, `tags`) is what the
Hugging Face hub reads.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import yaml

CARD_NAME = "README.md"
# (label, metric key without the eval_ prefix, format)
_EVAL_ROWS = (("held-out preference accuracy (implicit reward, ties 0.5)", "rewards/accuracies", ".3f"),
              ("reference-free ranking accuracy (mean log-prob per token)", "ranking/accuracies", ".3f"),
              ("eval loss", "loss", ".4f"), ("reward margin (chosen - rejected)", "rewards/margins", "+.4f"),
              ("reward of chosen", "rewards/chosen", "+.4f"), ("reward of rejected", "rewards/rejected", "+.4f"),
              ("mean length of greedy answers to probe prompts (tokens)", "sampled_length", ".1f"))
_CONFIG_KEYS = ("stage", "finetuning_type", "adapter_name_or_path", "ref_model", "ref_model_adapters", "pref_loss",
                "pref_loss_weights", "pref_beta", "dpo_label_smoothing", "pref_ftx", "simpo_gamma", "ld_alpha",
                "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_rslora", "use_dora",
                "freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules", "disable_dropout",
                "template", "cutoff_len", "val_size", "learning_rate", "lr_scheduler_type", "warmup_ratio",
                "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                "bf16", "fp16", "pure_bf16", "seed")
_LORA_ONLY = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_rslora", "use_dora")
_FREEZE_ONLY = ("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules")


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_provenance(loaded, train_pairs: int, val_pairs: int, train_encoded: int, val_encoded: int) -> dict:
    """What the card says about the data, from a `loader.LoadResult` and the split/encoding counts."""
    datasets = []
    for source in loaded.sources:
        datasets.append({"name": source.name, "pairs": loaded.pairs_per_dataset.get(source.name),
                         "files": [{"path": str(Path(f).resolve()), "sha256": file_sha256(f)} for f in source.files]})
    return {"datasets": datasets, "loaded": len(loaded.pairs), "skipped_rows": loaded.skipped.count,
            "train": {"split": train_pairs, "encoded": train_encoded},
            "validation": {"split": val_pairs, "encoded": val_encoded}}


def _versions() -> dict:
    import torch
    import transformers

    import prefloop

    versions = {"prefloop": prefloop.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import peft

        versions["peft"] = peft.__version__
    except ImportError:  # pragma: no cover - peft is a dependency
        pass
    return versions


def render_card(cfg, base: dict, data: dict, before: dict, after: dict, steps: int) -> str:
    """The card's Markdown. `base`: {"base_model_name_or_path", "fingerprint"} (adapters.record_base);
    `data`: `data_provenance(...)`; `before`/`after`: eval metrics (`eval_` names, {} when none ran);
    `after` may carry `train_loss`."""
    versions = _versions()
    kind = "LoRA adapter" if cfg.finetuning_type == "lora" else f"{cfg.finetuning_type}-fine-tuned model"
    front = {"base_model": base["base_model_name_or_path"], "library_name": "peft" if cfg.finetuning_type == "lora"
             else "transformers", "tags": ["prefloop", "dpo", cfg.finetuning_type]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {Path(cfg.output_dir).name}", "",
             f"A {kind} trained with preference optimization ({'+'.join(_as_list(cfg.pref_loss))}) by prefloop "
             f"{versions['prefloop']} on {datetime.date.today().isoformat()}, in {steps} optimizer steps.", "",
             "## Base model", "",
             f"- `{base['base_model_name_or_path']}`",
             f"- fingerprint (sha256 of config.json and the weight files' names, sizes and edges): "
             f"`{base.get('fingerprint') or 'none (a hub id)'}`", "",
             "## Data", "",
             "| dataset | pairs | file | sha256 |", "|---|---|---|---|"]
    for d in data["datasets"]:
        for i, f in enumerate(d["files"]):
            lines.append(f"| {d['name'] if i == 0 else ''} | {d['pairs'] if i == 0 else ''} | `{f['path']}` | "
                         f"`{f['sha256']}` |")
    train, val = data["train"], data["validation"]
    lines += ["", f"{data['loaded']} pairs loaded ({data['skipped_rows']} bad rows skipped); train split "
                  f"{train['split']} pairs, {train['encoded']} kept after encoding at cutoff_len {cfg.cutoff_len}; "
                  f"validation split {val['split']} pairs, {val['encoded']} kept.", "",
              "## Training config", "", "| key | value |", "|---|---|"]
    for key in _CONFIG_KEYS:
        if ((key in _LORA_ONLY and cfg.finetuning_type != "lora")
                or (key in _FREEZE_ONLY and cfg.finetuning_type != "freeze")):
            continue
        value = cfg.resolved_lora_alpha if key == "lora_alpha" else getattr(cfg, key, None)
        if value is not None:
            off = key == "lora_dropout" and value and getattr(cfg, "disable_dropout", False)
            lines.append(f"| `{key}` | `{value}`{' (off: disable_dropout)' if off else ''} |")
    lines += ["", "Every key, defaults included: `prefloop_config.yaml` beside this card.", "",
              "## Evaluation on the held-out pairs", ""]
    if after.get("eval_loss") is None and before.get("eval_loss") is None:
        lines.append("No evaluation ran (no validation split, or every held-out pair was dropped in encoding).")
    else:
        lines += ["| metric | before training | after training |", "|---|---|---|"]
        for label, key, fmt in _EVAL_ROWS:
            b, a = before.get(f"eval_{key}"), after.get(f"eval_{key}")
            if b is not None or a is not None:
                lines.append(f"| {label} | {_fmt(b, fmt)} | {_fmt(a, fmt)} |")
    if after.get("train_loss") is not None:
        lines += ["", f"Mean training loss: {after['train_loss']:.4f}."]
    lines += ["", "## Use", ""]
    if cfg.finetuning_type == "lora":
        lines += [f"    prefloop merge {cfg.output_dir} --out MERGED_DIR",
                  f"    prefloop serve {base['base_model_name_or_path']} --adapter {cfg.output_dir}"]
    else:
        lines += [f"    prefloop serve {cfg.output_dir}"]
    lines += ["", "## Software", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def write_model_card(cfg, base: dict, data: dict, before: dict, after: dict, steps: int) -> Path:
    """Write `render_card(...)` to `cfg.output_dir/README.md` (replacing PEFT's template); returns the path."""
    path = Path(cfg.output_dir) / CARD_NAME
    path.write_text(render_card(cfg, base, data, before, after, steps), encoding="utf-8")
    return path


def _fmt(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [v.strip() for v in str(value).split(",")]
