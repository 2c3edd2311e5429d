"""LLaMA-Factory and transformers-Trainer keys that prefloop spells differently or does not implement.

A user pastes a LLaMA-Factory DPO YAML (or a transformers `TrainingArguments` dict) and gets one of four
answers per key, before the keys are typed and checked (config.py `load_config` calls `translate` first):

- RENAMED: a former or peer name of a prefloop key (`evaluation_strategy` -> `eval_strategy`): read as that
  key, with a note; given together with the new name and another value it is an error naming both lines.
- Translated (`disable_gradient_checkpointing`, `pref_bco_weight`, `neat_packing`, `report_to: null`): read
  as the prefloop setting that does the same, with a note saying what it became.
- NO_EFFECT: makes no difference to what prefloop trains (speed, logging, inference, hub access): accepted
  with a note saying why.
- DEFAULT_ONLY: a setting prefloop does not implement: its default is accepted (one note lists them),
  any other value is an error (exit 2) naming the file, line and key and saying what to do, so a setting
  is never silently lost. Keys of LLaMA-Factory's other stages (sft, rm, ppo, kto) say so.

A `stage:` other than dpo is refused with what prefloop offers for that stage (STAGE_ADVICE).
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

from prefloop.config_files import plain
from prefloop.errors import ConfigError


class Setting(NamedTuple):
    """One key's value and where it was written: `source` is the config file, "command line" or
    "overrides"; `line` is " (line N)" for a key of the file, else ""."""

    value: Any
    source: str
    line: str = ""


OVERRIDE_SOURCES = ("command line", "overrides")

# former or peer name -> (prefloop key, why the name differs)
RENAMED = {
    "evaluation_strategy": ("eval_strategy", "transformers' name before 4.41"),
    "early_stopping_steps": ("early_stopping_patience", "LLaMA-Factory's name; both count evaluations without "
                                                        "improvement of eval_loss (transformers' EarlyStoppingCallback)"),
    "per_gpu_train_batch_size": ("per_device_train_batch_size", "transformers' former name"),
    "per_gpu_eval_batch_size": ("per_device_eval_batch_size", "transformers' former name"),
}

_SPEED = "a speed setting; prefloop runs its own kernels (attn_backend, chunked log-probs without full logits)"
_INFERENCE = "LLaMA-Factory's inference setting (chat, export, vLLM), not used in training"
_HUB_TOKEN = "prefloop reads the hub token from the environment: export HF_TOKEN=..."
_LOG = "a logging detail; prefloop logs every metric at logging_steps, tokens_per_second included"

# key -> why it makes no difference here (accepted with a note)
NO_EFFECT = {
    "flash_attn": "prefloop chooses the attention kernel itself: attn_backend, auto by default",
    "trust_remote_code": "prefloop loads architectures transformers has built in and runs no code from the Hub",
    "preprocessing_num_workers": "prefloop encodes the pairs itself (data/encode.py)",
    "preprocessing_batch_size": "prefloop encodes the pairs itself (data/encode.py)",
    "overwrite_cache": "prefloop keeps no tokenized-dataset cache of LLaMA-Factory's kind",
    "low_cpu_mem_usage": "transformers loads weights this way by default",
    "offload_folder": "prefloop does not offload weights to disk",
    "enable_liger_kernel": _SPEED,
    "use_liger_kernel": _SPEED,
    "use_unsloth": _SPEED,
    "use_unsloth_gc": _SPEED,
    "use_v1_kernels": _SPEED,
    "use_reentrant_gc": "prefloop's gradient checkpointing is always non-reentrant",
    "torch_empty_cache_steps": "prefloop manages device memory itself (gradient_checkpointing: auto, max_memory_gb)",
    "eval_accumulation_steps": "prefloop's evaluation keeps no predictions, only per-pair metrics",
    "prediction_loss_only": "prefloop's evaluation keeps no predictions, only per-pair metrics",
    "infer_backend": _INFERENCE,
    "infer_dtype": _INFERENCE,
    "use_kv_cache": _INFERENCE,
    "vllm_maxlen": _INFERENCE,
    "vllm_gpu_util": _INFERENCE,
    "vllm_enforce_eager": _INFERENCE,
    "print_param_status": "a debugging printout; prefloop prints the trainable parameter count",
    "hf_hub_token": _HUB_TOKEN,
    "ms_hub_token": _HUB_TOKEN,
    "om_hub_token": _HUB_TOKEN,
    "cache_dir": "downloads go to the Hugging Face cache; set HF_HOME to move it",
    "logging_dir": "TensorBoard logs go to output_dir/runs",
    "run_name": "the run is named by output_dir",
    "logging_first_step": _LOG,
    "logging_nan_inf_filter": "prefloop's health monitor skips NaN/Inf steps itself (max_bad_steps)",
    "include_tokens_per_second": _LOG,
    "include_num_input_tokens_seen": _LOG,
    "include_effective_tokens_per_second": _LOG,
    "disable_tqdm": "progress bars are drawn only when stderr is a terminal",
    "dataloader_pin_memory": "a data-loading speed setting",
    "dataloader_persistent_workers": "a data-loading speed setting",
    "dataloader_prefetch_factor": "a data-loading speed setting",
    "save_safetensors": "prefloop always saves safetensors",
    "skip_memory_metrics": _LOG,
    "local_rank": "torchrun / accelerate set the rank",
    "ddp_backend": "torch.distributed chooses nccl on GPUs, gloo on CPUs",
    "average_tokens_across_devices": "prefloop's loss is a mean over pairs, not tokens",
    "half_precision_backend": "prefloop uses torch autocast (fp16/bf16) or pure_bf16 weights",
}

# DEFAULT_ONLY entries: (default, what the setting does, what to do instead, stage it belongs to or "")
_NOT_LORA_VARIANT = "use finetuning_type: lora (use_dora, use_rslora) or full"
_MM = ("a multimodal setting", "prefloop trains text-only language models; remove the key", "")
_GALORE = ("GaLore", "not implemented here; " + _NOT_LORA_VARIANT, "")
_APOLLO = ("APOLLO", "not implemented here; " + _NOT_LORA_VARIANT, "")
_BADAM = ("BAdam", "not implemented here; use finetuning_type: freeze (freeze_trainable_layers) for block-wise "
          "training", "")
_PPO = ("a PPO setting", "remove it", "ppo")
_KTO = ("a KTO setting", "for pairs use pref_loss: kto_pair (or bco_pair); remove the key", "kto")
_SFT = ("an SFT setting", "DPO trains on the responses only; remove the key", "sft")
_QUANT = ("on-the-fly quantization (QLoRA)", "not implemented here; pure_bf16: true halves the weights' memory, "
          "gradient_checkpointing: auto fits a memory budget; remove the key", "")
_SWAN = ("LLaMA-Factory's SwanLab callback", "use report_to: swanlab (transformers' integration; SWANLAB_PROJECT etc. "
         "from the environment) and remove the key", "")
_HUB = ("pushing to the Hugging Face Hub", "push output_dir yourself (huggingface-cli upload) and remove the key", "")

DEFAULT_ONLY: dict[str, tuple] = {
    # LLaMA-Factory: fine-tuning method
    "additional_target": (None, "modules trained in full beside LoRA", "use finetuning_type: freeze with "
                          "freeze_extra_modules, or remove the key", ""),
    "loraplus_lr_ratio": (None, "LoRA+ (a larger learning rate for B)", "not implemented here; remove the key", ""),
    "loraplus_lr_embedding": (1e-6, "LoRA+'s embedding learning rate", "not implemented here; remove the key", ""),
    "pissa_init": (False, "PiSSA adapter initialisation", "not implemented here; remove the key", ""),
    "pissa_iter": (16, "PiSSA adapter initialisation", "not implemented here; remove the key", ""),
    "pissa_convert": (False, "PiSSA adapter conversion", "not implemented here; remove the key", ""),
    "create_new_adapter": (False, "a fresh adapter on top of adapter_name_or_path", "merge the adapter first "
                           "(prefloop merge) and train a new one on the merged model", ""),
    "use_llama_pro": (False, "LLaMA Pro block expansion", "not implemented here; remove the key", ""),
    "use_adam_mini": (False, "the Adam-mini optimizer", "use optim: adamw_torch (or another transformers optim)", ""),
    "use_muon": (False, "the Muon optimizer", "use optim: adamw_torch (or another transformers optim)", ""),
    "use_galore": (False, *_GALORE), "galore_target": ("all", *_GALORE), "galore_rank": (16, *_GALORE),
    "galore_update_interval": (200, *_GALORE), "galore_scale": (2.0, *_GALORE),
    "galore_proj_type": ("std", *_GALORE), "galore_layerwise": (False, *_GALORE),
    "use_apollo": (False, *_APOLLO), "apollo_target": ("all", *_APOLLO), "apollo_rank": (16, *_APOLLO),
    "apollo_update_interval": (200, *_APOLLO), "apollo_scale": (32.0, *_APOLLO), "apollo_proj": ("random", *_APOLLO),
    "apollo_proj_type": ("std", *_APOLLO), "apollo_scale_type": ("channel", *_APOLLO),
    "apollo_layerwise": (False, *_APOLLO), "apollo_scale_front": (False, *_APOLLO),
    "use_badam": (False, *_BADAM), "badam_mode": ("layer", *_BADAM), "badam_start_block": (None, *_BADAM),
    "badam_switch_mode": ("ascending", *_BADAM), "badam_switch_interval": (50, *_BADAM),
    "badam_update_ratio": (0.05, *_BADAM), "badam_mask_mode": ("adjacent", *_BADAM), "badam_verbose": (0, *_BADAM),
    "use_mca": (False, "Megatron-Core training", "use deepspeed or fsdp (see docs/distributed.md)", ""),
    "use_dft_loss": (False, *_SFT),
    "compute_accuracy": (False, *_SFT),
    "train_on_prompt": (False, *_SFT),
    "mask_history": (False, *_SFT),
    "disable_shuffling": (False, "training in file order", "prefloop shuffles with seed; remove the key", ""),
    "freeze_vision_tower": (True, *_MM), "freeze_multi_modal_projector": (True, *_MM),
    "freeze_language_model": (False, *_MM), "image_max_pixels": (768 * 768, *_MM), "image_min_pixels": (32 * 32, *_MM),
    "video_max_pixels": (256 * 256, *_MM), "video_min_pixels": (16 * 16, *_MM), "video_fps": (2.0, *_MM),
    "video_maxlen": (128, *_MM), "media_dir": (None, *_MM),
    # other stages
    "kto_chosen_weight": (1.0, *_KTO), "kto_rejected_weight": (1.0, *_KTO),
    "ppo_buffer_size": (1, *_PPO), "ppo_epochs": (4, *_PPO), "ppo_score_norm": (False, *_PPO),
    "ppo_target": (6.0, *_PPO), "ppo_whiten_rewards": (False, *_PPO), "reward_model": (None, *_PPO),
    "reward_model_adapters": (None, *_PPO), "reward_model_quantization_bit": (None, *_PPO),
    "reward_model_type": ("lora", *_PPO),
    # model loading
    "ref_model_quantization_bit": (None, *_QUANT), "quantization_bit": (None, *_QUANT),
    "quantization_method": ("bnb", *_QUANT), "quantization_type": ("nf4", *_QUANT),
    "double_quantization": (True, *_QUANT), "quantization_device_map": (None, *_QUANT),
    "fp8": (False, "FP8 training", "use bf16: true (or pure_bf16: true); remove the key", ""),
    "adapter_folder": (None, "a folder of adapters loaded one after another", "give one adapter as "
                       "adapter_name_or_path (merge the others first with prefloop merge)", ""),
    "use_fast_tokenizer": (True, "the slow (Python) tokenizer", "prefloop encodes with the fast tokenizer; remove the "
                           "key", ""),
    "split_special_tokens": (False, "special tokens split into pieces", "not implemented here; remove the key", ""),
    "resize_vocab": (False, "growing the embeddings for added tokens", "add the tokens and resize the model before "
                     "training (tokenizer.add_tokens, model.resize_token_embeddings); remove the key", ""),
    "add_tokens": (None, "tokens added to the tokenizer", "add them before training (tokenizer.add_tokens and "
                   "model.resize_token_embeddings, saved as the model); remove the key", ""),
    "add_special_tokens": (None, "special tokens added to the tokenizer", "add them before training "
                           "(tokenizer.add_special_tokens, model.resize_token_embeddings); remove the key", ""),
    "new_special_tokens_config": (None, "special tokens added to the tokenizer", "add them before training; remove "
                                  "the key", ""),
    "model_revision": ("main", "a revision of the hub model other than main", "download that revision "
                       "(huggingface-cli download ID --revision R --local-dir DIR) and give DIR as "
                       "model_name_or_path", ""),
    "rope_scaling": (None, "RoPE scaling for longer contexts", "set rope_scaling in the model's config.json; remove "
                     "the key", ""),
    "shift_attn": (False, "LongLoRA's shift short attention", "not implemented here; remove the key", ""),
    "mixture_of_depths": (None, "mixture-of-depths conversion", "not implemented here; remove the key", ""),
    "moe_aux_loss_coef": (None, "the MoE router's auxiliary loss", "not implemented here (the preference loss alone "
                          "is trained); remove the key", ""),
    "upcast_layernorm": (False, "layer norms kept in fp32", "not implemented here; remove the key", ""),
    "upcast_lmhead_output": (False, "the output head upcast to fp32", "prefloop computes log-probs in fp32 "
                             "already; remove the key", ""),
    "train_from_scratch": (False, "random initial weights", "not implemented here; remove the key", ""),
    "use_swanlab": (False, *_SWAN), "swanlab_project": ("llamafactory", *_SWAN), "swanlab_workspace": (None, *_SWAN),
    "swanlab_run_name": (None, *_SWAN), "swanlab_mode": ("cloud", *_SWAN), "swanlab_api_key": (None, *_SWAN),
    "swanlab_logdir": (None, *_SWAN),
    # data
    "eval_dataset": (None, "a separate evaluation dataset", "prefloop splits the validation set from dataset with "
                     "val_size (a fraction or a number of pairs); evaluate other data with prefloop eval prefs", ""),
    "streaming": (False, "streamed datasets", "not implemented here; remove the key", ""),
    "buffer_size": (16384, "streamed datasets", "not implemented here; remove the key", ""),
    "mix_strategy": ("concat", "interleaved dataset mixing", "prefloop concatenates the datasets; remove the key", ""),
    "interleave_probs": (None, "interleaved dataset mixing", "prefloop concatenates the datasets; remove the key", ""),
    "tool_format": (None, "a tool-call format", "prefloop renders tools with the chat template; remove the key", ""),
    "default_system": (None, "a system prompt added to every example", "put the system prompt in the data "
                       "(system field) or the template; remove the key", ""),
    "enable_thinking": (True, "the reasoning-model template switch", "not implemented here; remove the key", ""),
    "tokenized_path": (None, "pre-tokenized datasets", "prefloop encodes the dataset itself; remove the key", ""),
    "eval_num_beams": (None, "beam search in evaluation", "prefloop's evaluation computes the preference metrics "
                       "without generating; remove the key", ""),
    "ignore_pad_token_for_loss": (True, "padding tokens in the loss", "prefloop never trains on padding; remove the "
                                  "key", ""),
    "eval_on_each_dataset": (False, "one evaluation per dataset", "use prefloop eval prefs per dataset; remove the "
                             "key", ""),
    # transformers TrainingArguments
    "logging_strategy": ("steps", "logging per epoch", "prefloop logs every logging_steps; remove the key", ""),
    "save_on_each_node": (False, "saving on every node", "not implemented here; remove the key", ""),
    "eval_delay": (0, "delayed evaluation", "not implemented here; remove the key", ""),
    "eval_on_start": (False, "evaluation before the first step", "prefloop already evaluates at step 0 when there is "
                      "a validation split; remove the key", ""),
    "torch_compile": (False, "torch.compile of the model", "not implemented here (attn_backend: flex compiles the "
                      "attention); remove the key", ""),
    "gradient_checkpointing_kwargs": (None, "gradient checkpointing options", "prefloop always checkpoints "
                                      "non-reentrant; remove the key", ""),
    "label_smoothing_factor": (0.0, "label smoothing of a token-level loss", "for DPO use dpo_label_smoothing "
                               "(cDPO); remove the key", ""),
    "neftune_noise_alpha": (None, "NEFTune embedding noise", "not implemented here; remove the key", ""),
    "group_by_length": (False, "batches grouped by length", "prefloop packs pairs without padding (packing: true); "
                        "remove the key", ""),
    "load_best_model_at_end": (False, "keeping the best checkpoint", "set early_stopping_patience (prefloop then "
                               "keeps the checkpoint with the lowest eval_loss); remove the key", ""),
    "metric_for_best_model": (None, "the metric that picks the best checkpoint", "prefloop uses eval_loss with "
                              "early_stopping_patience; remove the key", ""),
    "greater_is_better": (None, "the direction of metric_for_best_model", "prefloop uses eval_loss (lower is "
                          "better); remove the key", ""),
    "ignore_data_skip": (False, "not skipping seen batches on resume", "prefloop resumes at the exact data position; "
                         "remove the key", ""),
    "full_determinism": (False, "deterministic CUDA kernels", "not implemented here; remove the key", ""),
    "data_seed": (None, "a separate seed for the data order", "seed sets both; remove the key", ""),
    "dataloader_drop_last": (False, "dropping the last partial batch", "not implemented here; remove the key", ""),
    "push_to_hub": (False, *_HUB), "hub_model_id": (None, *_HUB), "hub_token": (None, *_HUB),
    "hub_private_repo": (None, *_HUB), "hub_strategy": ("every_save", *_HUB),
    "tf32": (None, "TF32 matmuls", "not implemented here; remove the key", ""),
    "optim_args": (None, "extra optimizer arguments", "use adam_beta1, adam_beta2, adam_epsilon, weight_decay; "
                   "remove the key", ""),
    "optim_target_modules": (None, "GaLore/APOLLO target modules", "not implemented here; remove the key", ""),
    "auto_find_batch_size": (False, "shrinking the batch on out-of-memory", "use gradient_checkpointing: auto with "
                             "max_memory_gb; remove the key", ""),
    "fp16_full_eval": (False, "evaluation in pure fp16", "evaluation runs in the training precision; remove the key", ""),
    "bf16_full_eval": (False, "evaluation in pure bf16", "evaluation runs in the training precision (pure_bf16: true "
                       "for bf16 weights); remove the key", ""),
    "use_cpu": (False, "training on the CPU on a GPU machine", "hide the GPUs (CUDA_VISIBLE_DEVICES=) and remove the "
                "key", ""),
    "no_cuda": (False, "training on the CPU on a GPU machine", "hide the GPUs (CUDA_VISIBLE_DEVICES=) and remove the "
                "key", ""),
    "do_predict": (False, "prediction on a test set", "use prefloop eval (prefs, winrate, bench); remove the key", ""),
    "predict_with_generate": (False, "generation in evaluation", "use prefloop eval winrate; remove the key", ""),
    "generation_max_length": (None, "generation in evaluation", "use prefloop eval winrate; remove the key", ""),
    "generation_num_beams": (None, "generation in evaluation", "use prefloop eval winrate; remove the key", ""),
    "restore_callback_states_from_checkpoint": (False, "callback states restored on resume", "not implemented here; "
                                                "remove the key", ""),
}

STAGE_ADVICE = {
    "pt": "prefloop trains preference pairs only (stage: dpo); pre-train with LLaMA-Factory, then give its output "
          "as model_name_or_path",
    "sft": "prefloop trains preference pairs only (stage: dpo); run SFT with LLaMA-Factory or TRL, then give its "
           "output as model_name_or_path (a LoRA adapter directory works: prefloop continues it on its base)",
    "rm": "prefloop does not train reward models; a trained reward model scores candidate pairs with `prefloop judge "
          "--reward-model`, or train the policy on the pairs directly with stage: dpo",
    "ppo": "prefloop does not train PPO; for online preference learning use `prefloop loop` (iterative DPO: sample, "
           "judge with an LLM or reward model, train), or stage: dpo with rounds:",
    "kto": "prefloop trains paired data only (KTO on unpaired good/bad answers is not implemented); for pairs use "
           "stage: dpo with pref_loss: kto_pair (or bco_pair)",
}


TRANSLATED = ("disable_gradient_checkpointing", "pref_bco_weight", "neat_packing")


def handled_keys() -> frozenset[str]:
    """Every key `translate` answers for (renamed, translated, no effect, default only): a config
    layer that only checks key names (the loop's `train.overrides`) accepts these and leaves their values
    to `translate` when the training config is loaded."""
    return frozenset(RENAMED) | frozenset(NO_EFFECT) | frozenset(DEFAULT_ONLY) | frozenset(TRANSLATED)


def translate(values: dict[str, Setting]) -> dict[str, Setting]:
    """The settings with LLaMA-Factory / transformers keys turned into prefloop's (see the module docstring).

    `values` maps each key to its `Setting` (file settings and overrides merged, overrides last); a note on
    stderr says what each translated or ignored key became. Raises ConfigError naming the source, line and
    key for a stage other than dpo, a DEFAULT_ONLY key with another value, or two spellings that disagree.
    """
    out = dict(values)
    notes: list[str] = []
    defaults_kept: dict[str, list[str]] = {}  # source -> "key (line N)" of the keys left at their defaults
    _check_stage(out)
    for old, (new, why) in RENAMED.items():
        if old in out:
            _rename(out, old, new, why, notes)
    if "disable_gradient_checkpointing" in out:
        _disable_gradient_checkpointing(out, notes)
    if "pref_bco_weight" in out:
        _pref_bco_weight(out, notes)
    if "neat_packing" in out:
        setting = out.pop("neat_packing")
        value = _bool(setting, "neat_packing")
        if value:
            _put(out, "packing", Setting(True, setting.source, setting.line), "neat_packing", notes)
            notes.append(f"{_at(setting, 'neat_packing')}: true is prefloop's packing: true (pairs packed without "
                         f"attention across them)")
        else:
            defaults_kept.setdefault(setting.source, []).append("neat_packing" + setting.line)
    if "report_to" in out and plain(out["report_to"].value) is None:
        setting = out["report_to"]
        out["report_to"] = Setting("none", setting.source, setting.line)
        notes.append(f"{_at(setting, 'report_to')}: null is report_to: none (no integration)")
    for key in [k for k in out if k in NO_EFFECT]:
        setting = out.pop(key)
        notes.append(f"{_at(setting, key)}: {_show(setting.value)} makes no difference here ({NO_EFFECT[key]}); "
                     f"accepted and ignored")
    for key in [k for k in out if k in DEFAULT_ONLY]:
        setting = out.pop(key)
        if _is_default(plain(setting.value), DEFAULT_ONLY[key][0]):
            defaults_kept.setdefault(setting.source, []).append(key + setting.line)
        else:
            raise ConfigError(_refusal(key, setting))
    for source, keys in defaults_kept.items():
        notes.append(f"{source}: accepted at their defaults (what prefloop does anyway): {', '.join(keys)}")
    for note in notes:
        print(f"prefloop: note: {note}", file=sys.stderr)
    return out


def _at(setting: Setting, key: str) -> str:
    """"FILE: key (line N)" for messages."""
    return f"{setting.source}: {key}{setting.line}"


def _show(value) -> str:
    value = plain(value)
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _is_default(value, default) -> bool:
    if isinstance(default, bool) or default is None or isinstance(value, bool):
        return value is default or (default is None and value is None)
    if isinstance(default, (int, float)):
        try:
            return float(value) == float(default)
        except (TypeError, ValueError):
            return False
    return str(value).strip().lower() == str(default).lower()


def _refusal(key: str, setting: Setting) -> str:
    default, what, todo, stage = DEFAULT_ONLY[key]
    value = _show(setting.value)
    if stage:
        return (f"{setting.source}: {key}: {value} is LLaMA-Factory's setting for stage: {stage} ({what}); prefloop "
                f"trains stage: dpo, where it has no effect: {todo}{setting.line}")
    todo = todo.removeprefix("not implemented here; ")
    return (f"{setting.source}: {key}: {value} ({what}) is not implemented in prefloop; {todo}. Only its default "
            f"({_show(default)}) is accepted, so that no setting is silently lost{setting.line}")


def _check_stage(out: dict[str, Setting]) -> None:
    setting = out.get("stage")
    if setting is None:
        return
    stage = plain(setting.value)
    if isinstance(stage, str) and stage.strip().lower() in STAGE_ADVICE:
        raise ConfigError(f"{setting.source}: stage: {stage!r} is not allowed; expected one of 'dpo': "
                          f"{STAGE_ADVICE[stage.strip().lower()]}{setting.line}")


def _bool(setting: Setting, key: str) -> bool:
    value = plain(setting.value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"{setting.source}: {key}: {_show(value)} is not allowed; expected true or false{setting.line}")
    return value


def _put(out: dict[str, Setting], key: str, new: Setting, old_key: str, notes: list[str]) -> None:
    """Set `key` from the translation of `old_key`; if `key` is given too, the override wins over the file, and
    two different values in one source are an error naming both lines."""
    given = out.get(key)
    if given is None:
        out[key] = new
        return
    if given.source == new.source:
        if plain(given.value) != plain(new.value):
            raise ConfigError(f"{new.source}: {old_key}{new.line} means {key}: {_show(new.value)}, but {key} is "
                              f"also given as {_show(given.value)}{given.line}; keep one of them")
        notes.append(f"{_at(new, old_key)} says what {key}{given.line} says; {old_key} can go")
        return
    if new.source in OVERRIDE_SOURCES:  # an override wins over the file
        out[key] = new
        notes.append(f"{_at(new, old_key)} overrides {key} of {given.source}{given.line}")
    else:
        notes.append(f"{given.source}: {key} overrides {old_key} of {new.source}{new.line}")


def _rename(out: dict[str, Setting], old: str, new: str, why: str, notes: list[str]) -> None:
    setting = out.pop(old)
    notes.append(f"{_at(setting, old)} is read as {new} ({why})")
    _put(out, new, setting, old, notes)


def _disable_gradient_checkpointing(out: dict[str, Setting], notes: list[str]) -> None:
    """LLaMA-Factory checkpoints unless `disable_gradient_checkpointing: true`; prefloop's key says it directly."""
    setting = out.pop("disable_gradient_checkpointing")
    disabled = _bool(setting, "disable_gradient_checkpointing")
    notes.append(f"{_at(setting, 'disable_gradient_checkpointing')}: {_show(disabled)} is read as "
                 f"gradient_checkpointing: {_show(not disabled)}")
    _put(out, "gradient_checkpointing", Setting(not disabled, setting.source, setting.line),
         "disable_gradient_checkpointing", notes)


def _pref_bco_weight(out: dict[str, Setting], notes: list[str]) -> None:
    """LLaMA-Factory's `pref_bco_weight: w` trains (loss + w * bco) / (1 + w): prefloop's pref_loss list
    [loss, bco_pair] with pref_loss_weights [1/(1+w), w/(1+w)] (the same BCO: rewards shifted by their running mean)."""
    setting = out.pop("pref_bco_weight")
    value = plain(setting.value)
    try:
        weight = float(value)
        if isinstance(value, bool) or not weight >= 0 or weight == float("inf"):
            raise ValueError(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{setting.source}: pref_bco_weight: {_show(value)} is not allowed; expected a number >= 0 "
                          f"(LLaMA-Factory's weight of the BCO term; 0 = none){setting.line}") from None
    if weight == 0:
        notes.append(f"{_at(setting, 'pref_bco_weight')}: 0 adds no BCO term (LLaMA-Factory's default); accepted")
        return
    loss_setting = out.get("pref_loss", Setting("sigmoid", setting.source))
    loss = plain(loss_setting.value)
    names = [str(n).strip() for n in (loss if isinstance(loss, list) else str(loss).split(",")) if str(n).strip()]
    where = f"{setting.source}: pref_bco_weight{setting.line}"
    if "pref_loss_weights" in out:
        raise ConfigError(f"{where}: with pref_loss_weights, give bco_pair in pref_loss with its own weight instead "
                          f"of pref_bco_weight (e.g. pref_loss: [sigmoid, bco_pair], pref_loss_weights: [0.8, 0.2])")
    if len(names) != 1 or names[0] == "bco_pair":
        raise ConfigError(f"{where}: adds a BCO term to one loss (LLaMA-Factory's rule), but pref_loss is {loss!r}; "
                          f"list bco_pair in pref_loss with pref_loss_weights instead and remove pref_bco_weight")
    weights = [1 / (1 + weight), weight / (1 + weight)]
    out["pref_loss"] = Setting([names[0], "bco_pair"], loss_setting.source, loss_setting.line)
    out["pref_loss_weights"] = Setting(weights, setting.source, setting.line)
    notes.append(f"{where}: {weight:g} is read as pref_loss: [{names[0]}, bco_pair] with pref_loss_weights: "
                 f"[{weights[0]:.4g}, {weights[1]:.4g}] (LLaMA-Factory's (loss + w * bco) / (1 + w))")
