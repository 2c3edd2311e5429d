"""Tiny models and tokenizers for tests and benchmarks (no network, seconds to build).

`build_tiny_tokenizer` trains a byte-level BPE with the `tokenizers` library on a built-in
corpus and gives it a ChatML chat template (like Qwen2 / SmolLM2); `build_tiny_model` makes a
small random Qwen2 or Llama causal LM. Both save to a directory so the real loading code
(`from_pretrained`) is what the tests exercise.
"""

from __future__ import annotations

import functools
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

FP64_EQUAL = {"rtol": 1e-9, "atol": 1e-9}
"""Tolerance for `torch.testing.assert_close` in the fast-path equality tests, which run the tiny
models in float64 (`model.double()`): there the same computation in another summation order (another
kernel, thread count or CPU: AVX2 or AVX-512) differs by ~1e-13 relative, so a bound of 1e-9 holds on
every machine, while a wrong mask, position or index changes values by 1e-3 or more. In float32 the
rounding of a different kernel alone reaches ~1e-4 of the largest gradient, a machine-dependent bound."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the a an is are was were be been to of and in that it for on with as at by from this "
    "what how why when where who which can could would should will may might please thank you "
    "yes no not answer question help explain describe list write code python function return "
    "print def class import data model train learn preference good bad better best worse "
    "capital city country france paris germany berlin italy rome spain madrid japan tokyo "
    "number one two three four five six seven eight nine ten hundred thousand plus minus times "
    "water fire earth air sun moon star planet ocean river mountain tree flower animal dog cat "
    "bird fish food bread apple orange banana coffee tea milk sugar salt sorry cannot know "
    "user assistant system hello hi hey great sure certainly here step first second finally "
    "because therefore however also very much many more most some any every each other "
    "### Instruction Response Input Human Assistant : ; , . ! ? ' \" ( ) [ ] { } < > = + - * / "
    "0 1 2 3 4 5 6 7 8 9 \n \t"
).split(" ")


def _corpus() -> list[str]:
    import random

    rng = random.Random(0)
    lines = []
    for _ in range(3000):
        n = rng.randint(3, 20)
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(n)))
    # Capitalised and punctuated forms so common text tokenizes compactly.
    lines += [w.capitalize() + "." for w in _WORDS] + [w + "," for w in _WORDS]
    return lines


@functools.lru_cache(maxsize=4)
def _tokenizer_object(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def build_tiny_tokenizer(vocab_size: int = 512, chat_template: str | None = CHATML_TEMPLATE):
    """A fast byte-level BPE tokenizer (every string encodes) with ChatML special tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_object(vocab_size)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_model(
    tokenizer=None,
    arch: str = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int | None = None,
    seed: int = 0,
):
    """A small random causal LM (Qwen2 or Llama architecture) matching `tokenizer`'s vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer or build_tiny_tokenizer()
    vocab = vocab_size or len(tokenizer)
    kwargs = dict(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**kwargs))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kwargs))
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}: use 'qwen2' or 'llama'")
    return model.eval()


def to_float64(model):
    """`model` (a tiny Qwen2/Llama causal LM from `build_tiny_model`, or a PEFT wrapper of one) in
    float64 throughout, for the fast-path equality tests (see FP64_EQUAL).

    `model.double()` alone leaves two float32 steps that transformers hard-codes: the rotary position
    tables (cos/sin computed with `.float()`) and RMSNorm (`hidden_states.to(torch.float32)`). There,
    inputs that differ by float64 rounding (~1e-16) round to different float32 values (~6e-8 apart),
    and the gradients of the two computations then differ by ~3e-8 of their largest entry, depending on
    the CPU's kernels. Each rotary and RMSNorm module here computes in float64 instead (the same
    formula). Raises TypeError for a rotary or norm module of another shape than these."""
    import types

    import torch

    def rope_float64(self, x, position_ids):
        freqs = position_ids[..., None].to(torch.float64) * self.inv_freq.to(device=x.device, dtype=torch.float64)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)

    def rms_norm_float64(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    patches = {"RotaryEmbedding": (rope_float64, ("attention_scaling", "inv_freq")),
               "RMSNorm": (rms_norm_float64, ("weight", "variance_epsilon"))}
    model = model.double()
    for module in model.modules():
        for suffix, (forward, attributes) in patches.items():
            if type(module).__name__.endswith(suffix):
                if not all(hasattr(module, a) for a in attributes):
                    raise TypeError(f"to_float64 does not know the module {type(module).__name__}")
                module.forward = types.MethodType(forward, module)
    return model


def save_tiny_model(path: str | Path, arch: str = "qwen2", seed: int = 0, **model_kwargs) -> Path:
    """Build a tiny tokenizer + model and save both to `path` (a from_pretrained-able directory)."""
    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, arch=arch, seed=seed, **model_kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_reward_model(path: str | Path, seed: int = 0, chat_template: str | None = CHATML_TEMPLATE) -> Path:
    """A tiny random Qwen2 sequence-classification model with one output label (a scalar reward model, as
    Skywork-Reward or ArmoRM's scalar head are loaded) and the tiny tokenizer, saved to `path`;
    `chat_template=None` saves it without a chat template (score through the policy's)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    path = Path(path)
    tokenizer = build_tiny_tokenizer(chat_template=chat_template)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    Qwen2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def reasoning_model_refusal(body: dict):
    """What the OpenAI API answers a chat request for one of its reasoning models that it refuses: a 400
    in OpenAI's error shape for `max_tokens` ("Use 'max_completion_tokens' instead") or a temperature
    other than 1; None for a request it accepts. For test endpoints that play such a model."""
    from fastapi.responses import JSONResponse

    def refuse(message: str, param: str, code: str):
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                       "code": code}}, status_code=400)

    if "max_tokens" in body:
        return refuse("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                      "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
    if body.get("temperature", 1) != 1:
        return refuse("Unsupported value: 'temperature' does not support 0 with this model. Only the default "
                      "(1) value is supported.", "temperature", "unsupported_value")
    return None
