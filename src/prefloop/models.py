"""Load tokenizers and causal LMs from a local directory, a hub id, or a `.gguf` file.

One place for model loading, so training, serving, generation and judging all accept the same
kinds of model path and fail with the same clear messages.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from prefloop.errors import PrefloopError


class ModelLoadError(PrefloopError):
    """A model or tokenizer could not be loaded; the message says why and what to do."""


def _split_gguf(path: str) -> tuple[str, dict]:
    """`dir/model.gguf` -> ("dir", {"gguf_file": "model.gguf"}); other paths unchanged."""
    if str(path).endswith(".gguf"):
        p = Path(path)
        if not p.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        return str(p.parent), {"gguf_file": p.name}
    return str(path), {}


def _explain(path: str, err: Exception, what: str, key: str = "model_name_or_path") -> ModelLoadError:
    """The error for a failed load of `path`; `key` is the config key or command-line flag that sets it."""
    if Path(path).exists():
        return ModelLoadError(f"could not load the {what} from {path}: {err}")
    if "/" in str(path) and not str(path).startswith((".", "/")):
        return ModelLoadError(
            f"{path!r} is not a local directory, and loading it as a hub id failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). If it is a relative path, run from the directory "
            f"it is relative to or give an absolute path; if this machine is offline, download the model "
            f"elsewhere. Either way, point {key} at the local directory."
        )
    return ModelLoadError(f"model path {path!r} does not exist: give a local model directory, a .gguf file or a hub id "
                          f"({key})")


def load_tokenizer(path: str, key: str = "model_name_or_path"):
    """The tokenizer at `path` (pad token = EOS when it has none); `key` names the setting in errors."""
    from transformers import AutoTokenizer

    base, extra = _split_gguf(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, **extra)
    except Exception as err:  # noqa: BLE001 - re-raised with a message that says what to do
        raise _explain(path, err, "tokenizer", key) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype=None, adapter: str | None = None, device: str | None = None,
                   key: str = "model_name_or_path", check_base: bool = True):
    """A `transformers` causal LM in eval mode; `adapter` applies a LoRA adapter directory (peft) after
    checking that `path` is the base it was trained on (adapters.resolve_base: a warning if not). A local
    `path` is loaded by its absolute path, so adapters trained on it record where it is. `key` is the
    config key or flag that sets `path`, named in errors."""
    import torch
    from transformers import AutoModelForCausalLM

    base, extra = _split_gguf(path)
    if Path(base).expanduser().exists():
        base = str(Path(base).expanduser().resolve())
    if adapter and check_base:
        from prefloop.adapters import resolve_base

        resolve_base(adapter, base=path, flag=key)  # a missing adapter or a different base is said now
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=dtype or torch.float32, attn_implementation="sdpa", **extra
        )
    except Exception as err:  # noqa: BLE001
        raise _explain(path, err, "model", key) from err
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    if device:
        model.to(device)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Training: which weights train (LoRA / full / freeze), the reference model, merging adapters


def _decoder_layers(model):
    """The list of decoder blocks of a transformers causal LM (for `freeze` and reporting)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ModelLoadError(f"{type(base).__name__}: cannot find its decoder layers; use finetuning_type: lora or full")
    return layers


def lora_target_modules(model, lora_target) -> list[str]:
    """Module names LoRA wraps. "all" = every nn.Linear except the output head; otherwise a comma
    list (or list) of module names, each checked against the model."""
    import torch

    head = model.get_output_embeddings()
    linear_names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                           if isinstance(module, torch.nn.Linear) and module is not head})
    requested = lora_target if isinstance(lora_target, list) else [t.strip() for t in str(lora_target).split(",")]
    requested = [t for t in requested if t]
    if requested == ["all"]:
        return linear_names
    unknown = [t for t in requested if t not in linear_names]
    if unknown or not requested:
        from prefloop.errors import ConfigError

        raise ConfigError(f"lora_target: {', '.join(unknown) or '(empty)'} is not a linear layer of this model; "
                          f"use 'all' or a comma list of: {', '.join(linear_names)}")
    return requested


def apply_finetuning(model, cfg):
    """Make the weights that `cfg.finetuning_type` trains trainable; returns the (maybe peft) model.

    lora: peft LoRA on `lora_target`; full: every weight; freeze: the last `freeze_trainable_layers`
    decoder layers only. Gradient checkpointing is switched on here (with input grads for LoRA, whose
    frozen embeddings would otherwise cut the checkpointed graph).
    """
    if cfg.finetuning_type == "lora" and getattr(cfg, "adapter_name_or_path", None):
        from peft import PeftModel

        # Continue training an existing adapter (the previous round's policy, or any LoRA run).
        model = PeftModel.from_pretrained(model, cfg.adapter_name_or_path, is_trainable=True)
        model.peft_config["default"].base_model_name_or_path = cfg.model_name_or_path
    elif cfg.finetuning_type == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.resolved_lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=lora_target_modules(model, cfg.lora_target),
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft 0.21 still asks for transformers' deprecated name
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, lora)
        # Record the path as given (a .gguf file loads from its directory otherwise), for `prefloop merge`.
        model.peft_config["default"].base_model_name_or_path = cfg.model_name_or_path
    elif cfg.finetuning_type == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    else:  # freeze
        layers = _decoder_layers(model)
        if cfg.freeze_trainable_layers > len(layers):
            from prefloop.errors import ConfigError

            raise ConfigError(f"freeze_trainable_layers: {cfg.freeze_trainable_layers} is more than the model's "
                              f"{len(layers)} layers; use at most {len(layers)} (or finetuning_type: full)")
        for param in model.parameters():
            param.requires_grad_(False)
        for layer in layers[-cfg.freeze_trainable_layers:]:
            for param in layer.parameters():
                param.requires_grad_(True)
    if cfg.gradient_checkpointing is True:  # auto: train/memory.py checkpoints the layers the budget needs
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5 name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.finetuning_type != "full":
            model.enable_input_require_grads()
        model.config.use_cache = False
    return model


COMPUTE_DTYPE_ATTR = "prefloop_compute_dtype"


def frozen_linears_to(model, dtype: torch.dtype) -> int:
    """Keep every frozen linear layer's weight and bias in `dtype` (the autocast dtype of a LoRA run):
    under autocast each call of such a layer casts them from fp32 to `dtype` anyway, the same rounding
    every time, so storing them cast gives bit-identical results without the per-call copy (on an H200
    those copies were 46% of a LoRA run's GPU kernel time) and halves their memory. Trainable weights
    (the adapter), embeddings, norms and a head tied to the embeddings keep their dtype. Returns the
    number of layers cast and marks the model (`autocast_for` runs its generation under autocast, since
    fp32 activations cannot meet bf16 weights outside it). Callers: LoRA runs only (the base is never
    saved), not under FSDP / DeepSpeed (uniform dtypes) or with a reference synced from the policy.

    Also stops peft's plain LoRA layers from upcasting their input to the adapter's fp32
    (`cast_input_dtype_enabled`): under autocast the adapter's matmul casts it straight back to `dtype`,
    an exact round trip that cost two copies of the layer's activations per call and two more in its
    backward (peft/tuners/lora/layer.py, `Linear.forward`); bit-identical. Only layers without LoRA
    dropout (`lora_dropout: 0`, the default): dropout on a bf16 input would round its 1/(1-p) scale
    to bf16. DoRA and other LoRA variants keep the cast too."""
    import torch

    embeddings = model.get_input_embeddings().weight
    count = 0
    for module in model.modules():
        if type(module) is not torch.nn.Linear or module.weight.requires_grad or module.weight is embeddings:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue
        module.weight.data = module.weight.data.to(dtype)
        if module.bias is not None:
            module.bias.data = module.bias.data.to(dtype)
        count += 1
    if count:
        setattr(model, COMPUTE_DTYPE_ATTR, dtype)
        for module in model.modules():
            if (hasattr(module, "lora_A") and hasattr(module, "cast_input_dtype_enabled")
                    and isinstance(getattr(module, "base_layer", None), torch.nn.Linear) and not module.lora_variant
                    and all(isinstance(d, torch.nn.Identity) for d in module.lora_dropout.values())):
                module.cast_input_dtype_enabled = False
    return count


def autocast_for(model):
    """The autocast context a model marked by `frozen_linears_to` needs to run (generation, evaluation
    outside the trainer's own autocast); a no-op context for any other model."""
    import contextlib

    import torch

    dtype = getattr(model, COMPUTE_DTYPE_ATTR, None)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def same_model_path(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return str(a).rstrip("/") == str(b).rstrip("/")


class Reference:
    """The frozen reference policy of DPO, however it is obtained.

    `model` is what runs; under `context()` it computes reference log-probs. With LoRA and a
    reference equal to the base, `model` is the policy itself and `context()` disables its adapters
    (no second copy). `kind` says which case this is ("adapters_disabled", "policy_start",
    "frozen_copy", "separate") for messages and the cache fingerprint.
    """

    def __init__(self, model, kind: str, path: str):
        self.model, self.kind, self.path = model, kind, path

    def context(self):
        import contextlib

        if self.kind == "adapters_disabled":
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def describe(self) -> str:
        return {
            "adapters_disabled": f"{self.path} (the policy's base with LoRA adapters disabled, no second copy)",
            "policy_start": f"{self.path} (the policy's starting weights, used before training starts)",
            "frozen_copy": f"{self.path} (a frozen copy of the starting weights)",
            "separate": f"{self.path} (a separate frozen model)",
        }[self.kind]


def check_same_vocabulary(tokenizer, ref_tokenizer, ref_path: str) -> None:
    if tokenizer.get_vocab() != ref_tokenizer.get_vocab():
        raise ModelLoadError(
            f"ref_model {ref_path} has a different tokenizer (vocabulary of {len(ref_tokenizer)} tokens vs the "
            f"policy's {len(tokenizer)}): DPO compares log-probs of the same token ids, so the reference must use "
            f"the policy's tokenizer. Use a reference from the same model family, or omit ref_model."
        )


def build_reference(cfg, policy, tokenizer, before_training_only: bool = False) -> Reference:
    """The reference for `cfg` (ref_model omitted or equal to the policy path: its starting weights).

    `before_training_only`: the reference is used only before the first optimizer step (the
    reference cache), so with full/freeze fine-tuning the untrained policy itself serves and no copy
    is loaded. Otherwise full/freeze get a frozen copy, LoRA the policy with adapters disabled.
    """
    ref_path = cfg.ref_model or cfg.model_name_or_path
    ref_adapter = getattr(cfg, "ref_model_adapters", None)
    if getattr(cfg, "ref_update", "initial") == "sync":
        # TR-DPO mixes the policy into the reference every few steps: it needs weights of its own.
        model = load_causal_lm(ref_path, adapter=ref_adapter)
        model = model.merge_and_unload() if ref_adapter else model
        for param in model.parameters():
            param.requires_grad_(False)
        return Reference(model, "separate", ref_path)
    if ref_adapter:
        same_start = (same_model_path(ref_path, cfg.model_name_or_path)
                      and same_model_path(ref_adapter, getattr(cfg, "adapter_name_or_path", None)))
        if same_start and before_training_only:  # the reference is the policy as it starts (previous round)
            return Reference(policy, "policy_start", f"{ref_path} + {ref_adapter}")
        model = load_causal_lm(ref_path, adapter=ref_adapter)
        for param in model.parameters():
            param.requires_grad_(False)
        return Reference(model, "separate", f"{ref_path} + {ref_adapter}")
    if same_model_path(ref_path, cfg.model_name_or_path):
        if cfg.finetuning_type == "lora":
            return Reference(policy, "adapters_disabled", ref_path)
        if before_training_only:
            return Reference(policy, "policy_start", ref_path)
        kind = "frozen_copy"
    else:
        check_same_vocabulary(tokenizer, load_tokenizer(ref_path), ref_path)
        kind = "separate"
    model = load_causal_lm(ref_path)
    for param in model.parameters():
        param.requires_grad_(False)
    return Reference(model, kind, ref_path)


def merge_command(adapter: str, out: str, base: str | None = None) -> int:
    """`prefloop merge`: fold a LoRA adapter into its base and save a standalone model + tokenizer."""
    from prefloop.adapters import resolve_base

    base = resolve_base(adapter, base, flag="--base")  # recorded (absolute or hub id) unless --base is given
    model = load_causal_lm(base, adapter=adapter, key="--base", check_base=False).merge_and_unload()
    tokenizer_dir = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else base
    tokenizer = load_tokenizer(tokenizer_dir, key="--base")
    Path(out).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"merged {adapter} into {base} -> {out} (loads with transformers AutoModelForCausalLM.from_pretrained)")
    return 0
