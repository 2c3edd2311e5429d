"""A new user's trial: a built-in template on a tokenizer without BOS survives saving and merging; merge and
convert never delete files the user added to an earlier output folder."""

import json

import pytest
import yaml

from prefloop.adapters import record_base
from prefloop.config import load_config
from prefloop.data.template import BUILTIN_TEMPLATES, check_saved_template, get_template
from prefloop.errors import ConfigError
from prefloop.models import MERGE_MARKER, apply_finetuning, load_causal_lm, load_tokenizer, merge_command
from prefloop.testing import CHATML_TEMPLATE, build_tiny_tokenizer

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


def _trained_adapter(tmp_path, base, template_name=None, name="adapter"):
    """A LoRA adapter folder as `prefloop train` leaves it: the tokenizer saved with the training template's
    source (run.py sets it), prefloop_config.yaml naming `template`, the base recorded."""
    cfg = load_config({"model_name_or_path": str(base), "output_dir": str(tmp_path / "o"), "dataset": "x.jsonl",
                       "lora_rank": 4})
    out = tmp_path / name
    apply_finetuning(load_causal_lm(str(base)), cfg).save_pretrained(out)
    tokenizer = load_tokenizer(str(base))
    if template_name:
        tokenizer.chat_template = get_template(template_name, tokenizer).source
        (out / "prefloop_config.yaml").write_text(yaml.safe_dump({"template": template_name}))
    tokenizer.save_pretrained(out)
    record_base(out, str(base))
    return out


def test_llama3_on_a_tokenizer_without_bos_merges_into_a_model_transformers_can_prompt(tiny_model_dir, tmp_path):
    """Was: merge said "chat template: llama3, as trained; loads with transformers" while apply_chat_template
    raised "'bos_token' is undefined" (generate, eval bench --mode chat failed on the merged model and the
    adapter). Now the saved template renders exactly what training rendered, with no BOS."""
    from transformers import AutoTokenizer

    from prefloop.sampling import LocalGenerator

    adapter = _trained_adapter(tmp_path, tiny_model_dir, "llama3")
    assert merge_command(str(adapter), str(tmp_path / "merged")) == 0
    trained = get_template("llama3", load_tokenizer(str(tiny_model_dir)))
    expected = trained.render(CONVERSATION, add_generation_prompt=True)
    assert expected.startswith("<|start_header_id|>system")
    for folder in (tmp_path / "merged", adapter):
        plain = AutoTokenizer.from_pretrained(folder)  # as any transformers user (or vLLM) loads it
        assert plain.bos_token is None
        assert plain.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == expected
    generator = LocalGenerator(load_causal_lm(str(tmp_path / "merged")), load_tokenizer(str(tmp_path / "merged")))
    assert generator.template.render(CONVERSATION, add_generation_prompt=True) == expected


def _tokenizer(bos, eos):
    tokenizer = build_tiny_tokenizer()
    tokenizer.bos_token = bos
    tokenizer.eos_token = eos
    return tokenizer


@pytest.mark.parametrize("name", list(BUILTIN_TEMPLATES))
@pytest.mark.parametrize("bos,eos", [(None, "<|im_end|>"), ("<|endoftext|>", "<|im_end|>"), (None, None),
                                     ("<|endoftext|>", None)])
def test_every_builtin_saved_with_any_tokenizer_renders_as_trained(name, bos, eos, tmp_path):
    """Each built-in template, saved with a tokenizer with and without BOS/EOS tokens and loaded back, renders
    with transformers' apply_chat_template the text and ids training encodes (templates that end replies with
    EOS are refused for a tokenizer without one, as training refuses them)."""
    from transformers import AutoTokenizer

    tokenizer = _tokenizer(bos, eos)
    try:
        template = get_template(name, tokenizer)
    except ConfigError as err:
        assert eos is None and "EOS" in str(err)
        return
    tokenizer.chat_template = template.source
    tokenizer.save_pretrained(tmp_path)
    saved = AutoTokenizer.from_pretrained(tmp_path)
    check_saved_template(saved, template, tokenizer, str(tmp_path))
    messages = [*CONVERSATION, {"role": "assistant", "content": "4"}]
    assert saved.apply_chat_template(messages, tokenize=False) == template.render(messages)


def test_a_template_saved_by_an_earlier_prefloop_is_repaired_on_load(tmp_path):
    """An adapter or merged model saved before the fix holds llama3's source with a bare `bos_token`: loading it
    binds the missing token as training rendered it, so generate and serve work on it without a new merge."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = BUILTIN_TEMPLATES["llama3"].source
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    expected = get_template("llama3", tokenizer).render(CONVERSATION, add_generation_prompt=True)
    assert loaded.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == expected


def test_a_saved_template_that_transformers_cannot_render_is_refused(tmp_path):
    tokenizer = build_tiny_tokenizer()
    template = get_template("llama3", tokenizer)
    tokenizer.chat_template = BUILTIN_TEMPLATES["llama3"].source  # bare bos_token, as saved before
    with pytest.raises(ConfigError, match=r"fails in transformers' apply_chat_template: 'bos_token' is undefined"):
        check_saved_template(tokenizer, template, tokenizer, "--out merged")
    tokenizer.chat_template = CHATML_TEMPLATE
    with pytest.raises(ConfigError, match="renders the llama3 chat template differently from training"):
        check_saved_template(tokenizer, template, tokenizer, "--out merged")


def test_a_broken_template_at_inference_gives_advice_an_inference_command_can_follow():
    """Was: "Choose a built-in template with `template: NAME`", an option generate/serve/eval do not have."""
    tokenizer = build_tiny_tokenizer(chat_template="{{ bos_token + '' }}" + CHATML_TEMPLATE)
    with pytest.raises(ConfigError) as err:
        get_template(None, tokenizer)
    message = str(err.value)
    assert "it uses bos_token, which this tokenizer does not define" in message
    assert "To generate, serve or evaluate with this model, fix the chat_template" in message
    assert "tokenizer_config.json" in message and "`--template NAME` for `prefloop data check`" in message


def test_merge_into_an_earlier_merge_output_keeps_the_users_files(tiny_model_dir, tmp_path):
    """Was: the earlier output folder was swapped out whole, deleting a file the user had put there."""
    adapter = _trained_adapter(tmp_path, tiny_model_dir)
    out = tmp_path / "merged"
    merge_command(str(adapter), str(out))
    marker = json.loads((out / MERGE_MARKER).read_text())
    assert sorted(marker["files"]) == sorted(p.name for p in out.iterdir())
    merge_command(str(adapter), str(out))  # its own output: replaced
    (out / "notes.md").write_text("my eval notes")
    (out / "gguf").mkdir()
    with pytest.raises(ConfigError, match=r"--out .* is an earlier merge output, but it also holds files merge did "
                                          r"not write \(gguf/, notes.md\)"):
        merge_command(str(adapter), str(out))
    assert (out / "notes.md").read_text() == "my eval notes"


def test_a_merge_marker_from_before_the_file_list_allows_only_model_files(tiny_model_dir, tmp_path):
    adapter = _trained_adapter(tmp_path, tiny_model_dir)
    out = tmp_path / "merged"
    merge_command(str(adapter), str(out))
    (out / MERGE_MARKER).write_text(json.dumps({"adapter": str(adapter), "base": str(tiny_model_dir)}))
    merge_command(str(adapter), str(out))  # only what save_pretrained writes: an earlier merge, replaced
    (out / MERGE_MARKER).write_text(json.dumps({"adapter": str(adapter), "base": str(tiny_model_dir)}))
    (out / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"it also holds files merge did not write \(results.json\)"):
        merge_command(str(adapter), str(out))
    assert (out / "results.json").exists()


def test_convert_into_an_earlier_conversion_keeps_the_users_files(tmp_path):
    from prefloop.convert import MARKER, convert_gguf
    from test_convert import write_tiny_llama_gguf

    gguf = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "converted"
    convert_gguf(gguf, out)
    assert sorted(json.loads((out / MARKER).read_text())["files"]) == sorted(p.name for p in out.iterdir())
    convert_gguf(gguf, out)
    (out / "notes.md").write_text("mine")
    with pytest.raises(ConfigError, match=r"earlier convert output, but it also holds files convert did not write "
                                          r"\(notes.md\)"):
        convert_gguf(gguf, out)
    assert (out / "notes.md").read_text() == "mine"
