"""The benchmark workload: seeded synthetic preference pairs and the models it runs on.

Pairs are conversational (TRL's format: "prompt" is a list of messages, "chosen"/"rejected" a
one-message list), single- or multi-turn, with prompts of 32-512 tokens and responses of 16-384
tokens by default. `tokenize_pair` reproduces TRL 1.x's own tokenization (chat template with the
generation prompt; the response is what follows the common prefix), so prefloop and TRL train on
identical token ids; the TRL engine checks this.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SHAPES = {
    # name: (arch, hidden, layers, heads, kv_heads, intermediate, vocab, tied)
    "smollm2-135m": ("llama", 576, 30, 9, 3, 1536, 49152, True),
    "qwen2-0.5b": ("qwen2", 896, 24, 14, 2, 4864, 151936, True),
    "small": ("llama", 256, 4, 4, 2, 704, None, True),  # the --scaling model; vocab = the tokenizer's
}


@dataclass
class Lengths:
    prompt: tuple[int, int] = (32, 512)
    response: tuple[int, int] = (16, 384)


def _word_pool(tokenizer, size: int = 4000) -> list[str]:
    """Lower-case words that are single tokens after a space (so n words ~ n tokens)."""
    words = []
    for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        word = tokenizer.convert_tokens_to_string([token])
        if word.startswith(" ") and word[1:].isalpha() and word[1:].islower() and len(word) > 3:
            words.append(word[1:])
        if len(words) >= size:
            break
    if len(words) < 50:  # a tokenizer without space-prefixed words: fall back to a fixed list
        words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split() * 10
    return words


def make_pairs(tokenizer, count: int, seed: int = 0, lengths: Lengths = Lengths()) -> list[dict]:
    """`count` conversational pairs; half of the prompts are multi-turn (user, assistant, user)."""
    rng = random.Random(seed)
    pool = _word_pool(tokenizer)

    def text(n: int) -> str:
        return " ".join(rng.choice(pool) for _ in range(max(1, n)))

    pairs = []
    for i in range(count):
        budget = rng.randint(*lengths.prompt)
        if rng.random() < 0.5:
            prompt = [{"role": "user", "content": text(budget - 20)}]
        else:
            a, b = sorted(rng.sample(range(1, max(3, budget - 30)), 2))
            prompt = [{"role": "user", "content": text(a)}, {"role": "assistant", "content": text(b - a)},
                      {"role": "user", "content": text(budget - 30 - b)}]
        pairs.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": text(rng.randint(*lengths.response) - 2)}],
            "rejected": [{"role": "assistant", "content": text(rng.randint(*lengths.response) - 2)}],
        })
    return pairs


def _ids(tokenizer, messages, **kwargs) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def tokenize_pair(tokenizer, pair: dict) -> dict:
    """prompt_ids / chosen_ids / rejected_ids exactly as TRL 1.16's DPOTrainer tokenizes a
    conversational pair (the response starts where prompt and prompt+response diverge)."""
    prompt = _ids(tokenizer, pair["prompt"], add_generation_prompt=True)
    full_c = _ids(tokenizer, pair["prompt"] + pair["chosen"])
    full_r = _ids(tokenizer, pair["prompt"] + pair["rejected"])

    def common(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    cut = min(common(prompt, full_c), common(prompt, full_r))
    return {"prompt_ids": prompt[:cut], "chosen_ids": full_c[cut:], "rejected_ids": full_r[cut:]}


def build_model(spec: str, tokenizer, dtype=None):
    """`spec` is a model directory, or `random:<shape>` (SHAPES) for random weights of that shape."""
    import torch

    if not spec.startswith("random:"):
        from prefloop.models import load_causal_lm

        return load_causal_lm(spec, dtype=dtype)
    name = spec.split(":", 1)[1]
    if name not in SHAPES:
        raise SystemExit(f"unknown model shape {name!r}; choose from {', '.join(SHAPES)}")
    arch, hidden, layers, heads, kv, inter, vocab, tied = SHAPES[name]
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(vocab_size=vocab or len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter,
                        tie_word_embeddings=tied, max_position_embeddings=4096,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    config._attn_implementation = "sdpa"
    torch.manual_seed(1234)
    model = model_cls(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def useful_flops(config, tokenized: list[dict]) -> float:
    """FLOPs of the work itself, the same for every engine: policy forward + backward (activation
    gradients; LoRA weight gradients are negligible) and one reference forward, on prompt+chosen and
    prompt+rejected, with the output head at response positions only. Engines that do more (full
    logits, a reference forward every step, recomputation) or less (prefix sharing) are measured
    against this same count, like MFU."""
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = config.num_key_value_heads
    layer_linear = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * config.intermediate_size
    total = 0.0
    for p in tokenized:
        for response in (p["chosen_ids"], p["rejected_ids"]):
            s = len(p["prompt_ids"]) + len(response)
            per_pass = config.num_hidden_layers * (2 * layer_linear * s + 2 * s * s * heads * head_dim)
            per_pass += 2 * config.vocab_size * d * len(response)
            total += 4 * per_pass  # forward (1) + backward (2) + reference forward (1)
    return total
