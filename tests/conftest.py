"""Shared fixtures: tiny models and tokenizers built here, no network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from prefloop.testing import build_tiny_tokenizer, save_tiny_model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Qwen2 model + ChatML tokenizer directory (session-wide, do not modify)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2") / "model")
