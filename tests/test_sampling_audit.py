"""Audit of the sampler against transformers and the house rules: layering, top-k/top-p as
transformers' warpers, stop strings, empty and too-long prompts, the context limit."""

import subprocess
import sys


def test_inference_modules_import_no_training_code():
    """Inference code never imports prefloop.train (the sampler took the attention backends' names from it)."""
    modules = ["prefloop.sampling", "prefloop.generate", "prefloop.chat", "prefloop.chat_clients",
               "prefloop.serve.app", "prefloop.serve.engine", "prefloop.serve.protocol", "prefloop.judge.run"]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'prefloop.train' or m.startswith('prefloop.train.')))")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_training_and_inference_share_the_attention_names():
    from prefloop import attention_names
    from prefloop.train import attention, flex, varlen

    assert attention.IMPLEMENTATION == attention_names.SEGMENTS and flex.IMPLEMENTATION == attention_names.FLEX
    assert varlen.IMPLEMENTATION == attention_names.VARLEN
    assert attention.SDPA_MASK_IMPLEMENTATION == attention_names.SDPA_MASK
