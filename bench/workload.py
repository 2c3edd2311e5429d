"""The benchmark workload: seeded synthetic preference pairs and the models it runs on.

Pairs are conversational (TRL's format: "prompt" is a list of messages, "chosen"/"rejected" a
one-message list), single- or multi-turn, with prompts of 32-512 tokens and responses of 16-384
tokens by default.

Both engines must train on identical token ids. prefloop reads the conversational file and ends
each response at the end-of-turn token; TRL, given the same conversations, also trains on what the
chat template writes after it (ChatML's "\n" after <|im_end|>): one extra token per response, which
made one step of the first 64-pair run differ by 1.4e-3. So TRL gets the pairs as rendered text
(`text_pair`: the prompt with the generation prompt, each response cut after the end-of-turn
token), which it tokenizes into exactly prefloop's ids (`prefloop_ids`); the TRL engine checks this
before training.
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


def prefloop_ids(tokenizer, data_file: str, cutoff: int) -> list[dict]:
    """prompt_ids / chosen_ids / rejected_ids of every pair as prefloop encodes them for training."""
    from prefloop.data.encode import encode_pairs
    from prefloop.data.loader import load_pairs
    from prefloop.data.template import get_template

    encoded, _ = encode_pairs(load_pairs(data_file).pairs, tokenizer, get_template(None, tokenizer), cutoff)
    return [{k: list(getattr(e, k)) for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for e in encoded]


def text_pair(tokenizer, pair: dict) -> dict:
    """The pair as TRL's standard (text) format, rendered by the chat template: each response ends
    right after the end-of-turn token, as prefloop trains it."""
    from prefloop.data.template import get_template

    end = get_template(None, tokenizer).end_of_turn
    prompt = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
    out = {"prompt": prompt}
    for side in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template(pair["prompt"] + pair[side], tokenize=False)
        if not full.startswith(prompt) or end not in full[len(prompt):]:
            raise ValueError(f"the chat template does not render the {side} response after the prompt, ending "
                             f"with {end!r}; this benchmark needs a template that does")
        response = full[len(prompt):]
        out[side] = response[: response.rindex(end) + len(end)]
    return out


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
