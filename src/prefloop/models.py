"""Load tokenizers and causal LMs from a local directory, a hub id, or a `.gguf` file.

One place for model loading, so training, serving, generation and judging all accept the same
kinds of model path and fail with the same clear messages.
"""

from __future__ import annotations

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


def _explain(path: str, err: Exception, what: str) -> ModelLoadError:
    if Path(path).exists():
        return ModelLoadError(f"could not load the {what} from {path}: {err}")
    if "/" in str(path) and not str(path).startswith((".", "/")):
        return ModelLoadError(
            f"{path!r} is not a local directory, and loading it as a hub id failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). If this machine is offline, download the "
            f"model elsewhere and point model_name_or_path at the local directory."
        )
    return ModelLoadError(f"model path {path!r} does not exist: give a local model directory, a .gguf file or a hub id")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    base, extra = _split_gguf(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, **extra)
    except Exception as err:  # noqa: BLE001 - re-raised with a message that says what to do
        raise _explain(path, err, "tokenizer") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype=None, adapter: str | None = None, device: str | None = None):
    """A `transformers` causal LM in eval mode; `adapter` applies a LoRA adapter directory (peft)."""
    import torch
    from transformers import AutoModelForCausalLM

    base, extra = _split_gguf(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=dtype or torch.float32, attn_implementation="sdpa", **extra
        )
    except Exception as err:  # noqa: BLE001
        raise _explain(path, err, "model") from err
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelLoadError(f"{adapter} holds no LoRA adapter (adapter_config.json is missing)")
        model = PeftModel.from_pretrained(model, adapter)
    if device:
        model.to(device)
    return model.eval()
