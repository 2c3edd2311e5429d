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
    from prefloop.data.template import repaired_builtin

    repaired = repaired_builtin(tokenizer)  # a built-in template saved by an earlier prefloop, e.g. llama3 on Qwen
    if repaired is not None:
        tokenizer.chat_template = repaired
    return tokenizer


def tokenizer_dir(path: str, adapter: str | None) -> str:
    """Where the tokenizer of model `path` with LoRA `adapter` is: the adapter directory when it holds one
    (prefloop saves the tokenizer, with the chat template it trained with, beside each adapter), else `path`.
    The one rule for every command that runs a base model with an adapter (serve, generate, eval)."""
    if adapter and (Path(adapter) / "tokenizer_config.json").is_file():
        return adapter
    return path


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


def _lora_layers(model) -> list[tuple[str, object]]:
    """(name, module) of every layer LoRA can wrap: nn.Linear and transformers' Conv1D (GPT-2's projections),
    without the output head (tied to the embeddings or not: LoRA on it would be merged into the embeddings)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    return [(name, module) for name, module in model.named_modules()
            if name and isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
            and getattr(module, "weight", None) is not getattr(embeddings, "weight", False)]


def lora_target_modules(model, lora_target) -> list[str]:
    """Module names LoRA wraps. "all" = every linear layer (nn.Linear, Conv1D) except the output head; otherwise
    a comma list (or list) of module names, each checked against the model. Names are the modules' last
    components (q_proj, ...), as PEFT matches them; when the head's own name is one of them (a model with an
    inner layer called like its head), the full paths, so PEFT does not wrap the head too."""
    layers = _lora_layers(model)
    linear_names = sorted({name.rsplit(".", 1)[-1] for name, _ in layers})
    head = model.get_output_embeddings()
    head_name = next((name for name, module in model.named_modules() if module is head), None) if head is not None \
        else None
    requested = lora_target if isinstance(lora_target, list) else [t.strip() for t in str(lora_target).split(",")]
    requested = [t for t in requested if t]
    from prefloop.errors import ConfigError

    if requested == ["all"]:
        if not linear_names:
            raise ConfigError(f"lora_target: all found no linear layer in {type(model).__name__} besides its output "
                              f"head; use finetuning_type: full or freeze")
        chosen = linear_names
    else:
        unknown = [t for t in requested if t not in linear_names]
        if head_name and any(t in (head_name, head_name.rsplit(".", 1)[-1]) for t in unknown):
            raise ConfigError(f"lora_target: {head_name} is the output head, which prefloop's LoRA leaves alone (in "
                              f"models that tie it to the embeddings, merging an adapter on it would change the "
                              f"embeddings too); use 'all' or a comma list of: {', '.join(linear_names)}")
        if unknown or not requested:
            raise ConfigError(f"lora_target: {', '.join(unknown) or '(empty)'} is not a linear layer of this model; "
                              f"use 'all' or a comma list of: {', '.join(linear_names)}")
        chosen = requested
    if head_name and head_name.rsplit(".", 1)[-1] in chosen:  # the suffix would match the head as well
        return sorted(name for name, _ in layers if name.rsplit(".", 1)[-1] in chosen)
    return chosen


def _names(value) -> list[str]:
    items = value if isinstance(value, list) else str(value or "").split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def _freeze(model, cfg) -> None:
    """`finetuning_type: freeze` as LLaMA-Factory does it: `freeze_trainable_layers` N > 0 trains the last N
    decoder layers, N < 0 the first -N; within them `freeze_trainable_modules` ("all", or child modules such
    as mlp, self_attn, self_attn.q_proj); `freeze_extra_modules` adds modules outside the layers (embed_tokens,
    norm, lm_head). Everything else is frozen. Raises ConfigError for a count beyond the model's layers or a
    module name the model does not have, listing the names it has."""
    from prefloop.errors import ConfigError

    layers = _decoder_layers(model)
    count = cfg.freeze_trainable_layers
    if abs(count) > len(layers):
        raise ConfigError(f"freeze_trainable_layers: {count} is more than the model's {len(layers)} layers; use at "
                          f"most {len(layers)} (or -{len(layers)}, or finetuning_type: full)")
    chosen = list(layers)[-count:] if count > 0 else list(layers)[:-count]
    modules = _names(getattr(cfg, "freeze_trainable_modules", "all"))
    trainable = []
    if modules == ["all"]:
        trainable = chosen
    else:
        children = sorted(name for name, _ in layers[0].named_children())
        for layer in chosen:
            for name in modules:
                try:
                    trainable.append(layer.get_submodule(name))
                except AttributeError:
                    raise ConfigError(f"freeze_trainable_modules: {name!r} is not a module of a decoder layer; use all "
                                      f"or a comma list of: {', '.join(children)}") from None
    extra = _names(getattr(cfg, "freeze_extra_modules", None))
    if extra:
        layer_ids = {id(p) for p in layers.parameters()}
        outside = {}
        for name, param in model.named_parameters():
            if id(param) not in layer_ids:
                for part in name.split(".")[:-1]:
                    outside.setdefault(part, []).append(param)
        for name in extra:
            if name not in outside:
                raise ConfigError(f"freeze_extra_modules: {name!r} is not a module outside the decoder layers; use a "
                                  f"comma list of: {', '.join(sorted(outside))}")
    for param in model.parameters():
        param.requires_grad_(False)
    for module in trainable:
        for param in module.parameters():
            param.requires_grad_(True)
    for name in extra:
        for param in outside[name]:
            param.requires_grad_(True)


def apply_finetuning(model, cfg):
    """Make the weights that `cfg.finetuning_type` trains trainable; returns the (maybe peft) model.

    lora: peft LoRA on `lora_target` (rsLoRA / DoRA with `use_rslora` / `use_dora`); full: every weight;
    freeze: `freeze_trainable_layers` decoder layers (the last N, or the first -N; `_freeze`). Gradient
    checkpointing is switched on here (with input grads for LoRA, whose frozen embeddings would otherwise
    cut the checkpointed graph).
    """
    if cfg.finetuning_type == "lora" and getattr(cfg, "adapter_name_or_path", None):
        from peft import PeftModel

        # Continue training an existing adapter (the previous round's policy, or any LoRA run).
        with warnings.catch_warnings():  # peft 0.21 still asks for transformers' deprecated name
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, cfg.adapter_name_or_path, is_trainable=True)
        model.peft_config["default"].base_model_name_or_path = cfg.model_name_or_path
    elif cfg.finetuning_type == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.resolved_lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=lora_target_modules(model, cfg.lora_target),
            use_rslora=getattr(cfg, "use_rslora", False),
            use_dora=getattr(cfg, "use_dora", False),
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
        _freeze(model, cfg)
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


def disable_dropout(model) -> int:
    """Switch off every dropout of `model` (TRL's and LLaMA-Factory's `disable_dropout`, on by default in their
    DPO): `nn.Dropout` modules get p = 0, PEFT's LoRA dropouts become `nn.Identity` (as PEFT builds them for
    `lora_dropout: 0`), and numeric dropout rates that attention implementations read at each call
    (`attention_dropout`, `attn_pdrop`, ...) become 0. The model's config is left as it is, so a saved model
    keeps its family's dropout settings. Returns how many dropouts were on.

    Why: DPO compares the policy's log-probs with the reference's, and the reference runs without dropout;
    dropout in the policy adds noise to every log-ratio (an untrained policy would not tie with its reference)."""
    import torch

    switched = 0
    for module in model.modules():
        lora_dropout = getattr(module, "lora_dropout", None)
        if isinstance(lora_dropout, torch.nn.ModuleDict):
            for name, dropout in list(lora_dropout.items()):
                if not isinstance(dropout, torch.nn.Identity):
                    switched += int(getattr(dropout, "p", 0) > 0)
                    lora_dropout[name] = torch.nn.Identity()
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            switched += int(module.p > 0)
            module.p = 0.0
        for attr, value in list(vars(module).items()):
            if (("dropout" in attr or "pdrop" in attr) and isinstance(value, float) and not isinstance(value, bool)
                    and value > 0):
                setattr(module, attr, 0.0)
                switched += 1
    return switched


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
    dropout (`lora_dropout: 0`, or `disable_dropout: true`, both defaults): dropout on a bf16 input would
    round its 1/(1-p) scale to bf16. DoRA and other LoRA variants keep the cast too."""
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
        """Inside: the model computes the reference, in eval mode (no dropout, even when the reference is the
        training policy itself with its adapters disabled, which the Trainer keeps in train mode), with the
        adapters disabled for "adapters_disabled". The train/eval mode is restored on the way out."""
        import contextlib

        @contextlib.contextmanager
        def reference_mode():
            was_training = self.model.training
            self.model.eval()
            try:
                with self.model.disable_adapter() if self.kind == "adapters_disabled" else contextlib.nullcontext():
                    yield
            finally:
                self.model.train(was_training)

        return reference_mode()

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


def weights_dtype(cfg):
    """The dtype the model's weights are loaded in: bf16 with `pure_bf16` (LLaMA-Factory's key: no fp32 copy of
    the weights; bf16/fp16 alone train fp32 weights under autocast), else fp32."""
    import torch

    return torch.bfloat16 if getattr(cfg, "pure_bf16", False) else torch.float32


def build_reference(cfg, policy, tokenizer, before_training_only: bool = False) -> Reference:
    """The reference for `cfg`: `ref_model` (+ `ref_model_adapters`), or when ref_model is omitted the policy's
    starting weights — with `adapter_name_or_path` that is the base *with* that adapter (the SFT model a DPO
    run continues; LLaMA-Factory's reference there is the bare base, its issue 8459), else the base.

    `before_training_only`: the reference is used only before the first optimizer step (the
    reference cache), so with full/freeze fine-tuning the untrained policy itself serves and no copy
    is loaded. Otherwise full/freeze get a frozen copy, LoRA the policy with adapters disabled.
    A reference of its own is frozen, in eval mode and, with `disable_dropout`, without dropout.
    """
    ref_path = cfg.ref_model or cfg.model_name_or_path
    ref_adapter = getattr(cfg, "ref_model_adapters", None)
    if ref_adapter is None and cfg.ref_model is None:
        ref_adapter = getattr(cfg, "adapter_name_or_path", None)  # the policy's start: base + the adapter it continues
    dtype = weights_dtype(cfg)

    def frozen(model, kind: str, path: str) -> Reference:
        for param in model.parameters():
            param.requires_grad_(False)
        if getattr(cfg, "disable_dropout", True):
            disable_dropout(model)
        return Reference(model.eval(), kind, path)

    if getattr(cfg, "ref_update", "initial") == "sync":
        # TR-DPO mixes the policy into the reference every few steps: it needs weights of its own.
        model = load_causal_lm(ref_path, dtype=dtype, adapter=ref_adapter)
        model = model.merge_and_unload() if ref_adapter else model
        return frozen(model, "separate", ref_path)
    if not same_model_path(ref_path, cfg.model_name_or_path):
        check_same_vocabulary(tokenizer, load_tokenizer(ref_path), ref_path)
    if ref_adapter:
        same_start = (same_model_path(ref_path, cfg.model_name_or_path)
                      and same_model_path(ref_adapter, getattr(cfg, "adapter_name_or_path", None)))
        if same_start and before_training_only:  # the reference is the policy as it starts (previous round)
            return Reference(policy, "policy_start", f"{ref_path} + {ref_adapter}")
        return frozen(load_causal_lm(ref_path, dtype=dtype, adapter=ref_adapter), "separate",
                      f"{ref_path} + {ref_adapter}")
    if same_model_path(ref_path, cfg.model_name_or_path):
        if cfg.finetuning_type == "lora":
            return Reference(policy, "adapters_disabled", ref_path)
        if before_training_only:
            return Reference(policy, "policy_start", ref_path)
        kind = "frozen_copy"
    else:
        kind = "separate"
    return frozen(load_causal_lm(ref_path, dtype=dtype), kind, ref_path)


def saved_dtype(path: str):
    """The dtype a model's weights are stored in (config.json's `dtype`, or `torch_dtype` of older
    transformers), or None when unknown (a GGUF file, whose weights prefloop dequantizes to fp32)."""
    import torch

    base, extra = _split_gguf(path)
    if extra:
        return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(base)
    except Exception:  # noqa: BLE001 - unknown: keep what was loaded
        return None
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""), None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def untie_if_diverged(model) -> bool:
    """After a merge: a config that ties the output head to the input embeddings while the merged weights differ
    (an adapter that trained `lm_head` or `embed_tokens` as `modules_to_save`) is set to untied, so loading the
    saved model does not overwrite one trained matrix with the other. Returns whether it untied."""
    import torch

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if not getattr(config, "tie_word_embeddings", False) or head is None or embeddings is None:
        return False
    if head.weight is embeddings.weight or (head.weight.shape == embeddings.weight.shape
                                            and torch.equal(head.weight, embeddings.weight)):
        return False
    config.tie_word_embeddings = False
    if config is not model.config and hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False
    return True


def training_template(adapter: str, tokenizer):
    """The chat template an adapter was trained with, when prefloop trained it with a built-in `template:`
    (its prefloop_config.yaml says so): that `ChatTemplate`, else None (the tokenizer's own)."""
    import yaml

    path = Path(adapter) / "prefloop_config.yaml"
    if not path.is_file():
        return None
    try:
        name = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("template")
    except (OSError, yaml.YAMLError):
        return None
    if not name or name == "tokenizer":
        return None
    from prefloop.data.template import get_template

    return get_template(str(name), tokenizer)


def use_chat_template(tokenizer, template, generation_config=None) -> None:
    """Make a saved model carry the chat template it was trained with: the tokenizer's `chat_template` becomes
    `template`'s, and the template's end-of-turn tokens join the generation config's `eos_token_id`, so
    `generate` (and vLLM, which reads generation_config.json) stops where the trained replies end. The
    tokenizer must then render sample conversations with transformers' `apply_chat_template` exactly as training
    did (`check_saved_template`), else ConfigError."""
    from prefloop.data.template import check_saved_template

    tokenizer.chat_template = template.source
    check_saved_template(tokenizer, template, tokenizer, f"the tokenizer of {getattr(tokenizer, 'name_or_path', '')}")
    if generation_config is None:
        return
    eos = generation_config.eos_token_id
    eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    stops = [i for i in template.stop_token_ids(tokenizer) if i not in eos]
    if stops:
        generation_config.eos_token_id = eos + stops


MERGE_MARKER = "prefloop_merge.json"  # in a merge's --out folder: what was merged; a later merge may replace it


def merge_command(adapter: str, out: str, base: str | None = None) -> int:
    """`prefloop merge`: fold a LoRA adapter into its base and save a standalone model + tokenizer.

    The merge runs in fp32 (W + scale * B A rounded once) and the merged model is saved in the base's own
    dtype (a bf16 base stays bf16, not twice its size in fp32); tied embeddings stay tied (untied only when
    the adapter trained them apart); the base's generation config and the tokenizer (the adapter's, with
    the chat template training used) are saved beside it.

    `out` must be new, empty or an earlier merge output (it holds MERGE_MARKER, which lists the files that merge
    wrote): a folder of other files, or an earlier output with files added since, is refused (exit 2), never
    overwritten. The model is written beside it, its tokenizer loaded back and checked to render the chat
    template as training did, and swapped in when complete."""
    import json
    import shutil

    from prefloop.adapters import resolve_base
    from prefloop.data.template import check_saved_template
    from prefloop.output_files import (FILES_KEY, MODEL_FOLDER_PATTERNS, check_earlier_output, check_output_dir,
                                       replace_dir, staging_dir, written_files)

    base = resolve_base(adapter, base, flag="--base")  # recorded (absolute or hub id) unless --base is given
    out_path = Path(out)
    for given, what in ((adapter, "the adapter"), (base, "the base model")):
        if Path(given).exists() and out_path.exists() and out_path.resolve() == Path(given).resolve():
            raise ModelLoadError(f"--out {out} is {what} itself; merging there would overwrite it: give another --out")
    if (out_path / "adapter_config.json").is_file():
        raise ModelLoadError(f"--out {out} holds a LoRA adapter (adapter_config.json); loading the merged model from "
                             f"there would load that adapter too: give an empty or new directory")
    final = check_output_dir(out, MERGE_MARKER, "--out", "merge")  # a previous merge output, or new/empty
    check_earlier_output(final, out, MERGE_MARKER, "--out", "merge", legacy=MODEL_FOLDER_PATTERNS)
    model = load_causal_lm(base, adapter=adapter, key="--base", check_base=False)  # fp32: merged in full precision
    model = model.merge_and_unload()
    untied = untie_if_diverged(model)
    dtype = saved_dtype(base)
    if dtype is not None and dtype != next(model.parameters()).dtype:
        model = model.to(dtype)
    if dtype is not None:
        model.config.dtype = dtype
    source = tokenizer_dir(base, adapter)
    tokenizer = load_tokenizer(source, key="adapter" if source == adapter else "--base")
    template = training_template(adapter, tokenizer)
    if template is not None:
        use_chat_template(tokenizer, template, getattr(model, "generation_config", None))
    notes = [f"saved in {str(dtype or next(model.parameters()).dtype).replace('torch.', '')}"]
    if untied:
        notes.append("output head untied from the embeddings: the adapter trained them apart")
    if template is not None:
        notes.append(f"chat template: {template.name}, as trained")
    staging = staging_dir(final)  # written beside --out, swapped in whole: a failed merge leaves --out as it was
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if template is not None:  # what transformers, generate and serve will load renders as training did
            from transformers import AutoTokenizer  # as a transformers user (or vLLM) loads it: no repair

            check_saved_template(AutoTokenizer.from_pretrained(staging), template, tokenizer, f"--out {out}")
        marker = {"adapter": str(Path(adapter).resolve()), "base": base, "notes": notes,
                  FILES_KEY: written_files(staging) + [MERGE_MARKER]}
        (staging / MERGE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        replace_dir(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"merged {adapter} into {base} -> {out} ({'; '.join(notes)}; loads with transformers "
          f"AutoModelForCausalLM.from_pretrained)")
    return 0
