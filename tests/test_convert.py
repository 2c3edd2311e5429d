"""GGUF -> safetensors conversion (prefloop.convert) on a tiny Llama GGUF written here, no network."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from prefloop.convert import MARKER, ConversionError, convert_gguf, ensure_smollm2, is_converted
from prefloop.models import load_causal_lm, load_tokenizer
from prefloop.testing import CHATML_TEMPLATE, SPECIAL_TOKENS, build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


def write_tiny_llama_gguf(path: Path, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, seed=0) -> Path:
    """A float32 Llama GGUF with the tiny byte-level BPE tokenizer and ChatML template (like SmolLM2's)."""
    import gguf

    spec = json.loads(build_tiny_tokenizer().backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(layers)
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL_TOKENS else 1 for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    kv = hidden // heads * kv_heads
    writer.add_tensor("token_embd.weight", rand(len(tokens), hidden))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", rand(hidden, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", rand(kv, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", rand(kv, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", rand(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", rand(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", rand(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", rand(hidden, ffn))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output.weight", rand(len(tokens), hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "tiny-llama"
    return out, convert_gguf(tiny_gguf, out)


def test_converted_model_matches_the_gguf_model(tiny_gguf, converted):
    out, report = converted
    assert is_converted(out) and report.max_logit_diff == 0.0 and report.parameters > 0
    messages = [{"role": "user", "content": "what is the capital of france ?"}]
    gguf_tok, out_tok = load_tokenizer(str(tiny_gguf)), load_tokenizer(str(out))
    ids = gguf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert out_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == ids
    input_ids = torch.tensor([out_tok(ids)["input_ids"]])
    assert input_ids.tolist() == [gguf_tok(ids)["input_ids"]]
    with torch.no_grad():
        expected = load_causal_lm(str(tiny_gguf))(input_ids).logits
        actual = load_causal_lm(str(out))(input_ids).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_converted_config_has_no_quantization_config(converted):
    out, report = converted
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    marker = json.loads((out / MARKER).read_text())
    assert marker["source"] == "tiny-llama.gguf" and len(marker["source_sha256"]) == 64


def test_cached_conversion_is_reused_without_any_work(converted):
    out, _ = converted
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    model_dir, report = ensure_smollm2(out)  # a finished conversion is there: no download, no convert
    assert model_dir == out and report is None
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_fetch_model_script_skips_a_cached_model(converted):
    out, _ = converted
    done = subprocess.run(
        ["bash", str(REPO / "scripts/fetch_model.sh"), str(out)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "cached at" in done.stdout


def test_broken_gguf_fails_clearly_and_leaves_nothing_behind(tiny_gguf, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:4096])
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="could not load GGUF file"):
        convert_gguf(broken, out)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["broken.gguf"]


def test_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")
