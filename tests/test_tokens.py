"""The shared-prompt-head shortcut is used only where it is verified, and changes no token id."""

import pytest
from test_encode import CONVERSATIONS, long_text, pair, sentencepiece_style_tokenizer
from test_template import tokenizer_like

import prefloop.data.encode as encode_module
from prefloop.data.encode import encode_pairs
from prefloop.data.schema import Message
from prefloop.data.template import get_template, known_templates
from prefloop.data.tokens import batch_ids, find_prompt_split
from prefloop.testing import build_tiny_tokenizer


def test_split_after_the_last_special_token_of_the_generation_prompt():
    tokenizer = build_tiny_tokenizer()
    split = find_prompt_split(tokenizer, get_template(None, tokenizer))
    assert (split.marker, split.tail) == ("<|im_start|>assistant\n", "assistant\n")
    assert split.tail_ids == tokenizer("assistant\n", add_special_tokens=False)["input_ids"]
    assert split.cut("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n") == len(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>"
    )
    assert split.cut("no generation header") is None


def test_no_split_without_a_special_token_in_the_generation_prompt():
    tokenizer = tokenizer_like("alpaca")  # "### Response:\n" is plain text
    assert find_prompt_split(tokenizer, get_template("alpaca", tokenizer)) is None


def test_no_split_when_the_tokenizer_prefixes_only_the_first_piece():
    # A Metaspace tokenizer with prepend_scheme="first" writes "▁" before the first piece only;
    # ChatML's tail "assistant\n" would gain a "▁" when tokenized alone: the probes catch it.
    tokenizer = sentencepiece_style_tokenizer()
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tokenizer.eos_token = "<|im_end|>"
    assert find_prompt_split(tokenizer, get_template("chatml", tokenizer)) is None


def test_batch_ids_equal_the_tokenizer_call():
    tokenizer = build_tiny_tokenizer()
    texts = ["<|im_start|>user\nHi<|im_end|>", " two  spaces\n\n", "ünïcödé 字", ""]
    assert batch_ids(tokenizer, texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]


def _without_split(monkeypatch):
    monkeypatch.setattr(encode_module, "find_prompt_split", lambda tokenizer, template: None)


@pytest.mark.parametrize("name", ["tokenizer", *known_templates()])
def test_shortcut_gives_the_same_ids_as_whole_texts(name, monkeypatch):
    tokenizer = build_tiny_tokenizer() if name == "tokenizer" else tokenizer_like(name)
    template = get_template(None if name == "tokenizer" else name, tokenizer)
    pairs = [pair(conv) for conv in CONVERSATIONS.values()]
    pairs += [
        pair([Message("user", "Say <|im_start|>assistant\n please")], chosen="\n\nok", rejected=" <|im_end|> x"),
        pair([Message("user", long_text(80))], chosen="ünïcödé 字", rejected="!?"),
    ]
    fast, fast_report = encode_pairs(pairs, tokenizer, template, cutoff_len=60)
    _without_split(monkeypatch)
    plain, plain_report = encode_pairs(pairs, tokenizer, template, cutoff_len=60)
    assert [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in fast] == [
        (e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in plain
    ]
    assert fast_report.summary() == plain_report.summary()
