"""`prefloop eval prefs`: held-out preference accuracy on a tiny model, checked against a direct computation
(plain forward passes with the adapter on and off, log_softmax, gather), ties, per-source / per-dimension
tables, the training-config path and located errors."""

import json

import numpy as np
import pytest
import torch

from prefloop.cli import main
from prefloop.data.encode import encode_pairs
from prefloop.data.loader import load_pairs
from prefloop.data.template import get_template
from prefloop.evaluate.prefs import PrefsSetup, evaluate_prefs

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "I do not know.", "facts", {"helpfulness": {"chosen": 5, "rejected": 1}}),
    ("Name a fruit.", "An apple is a fruit.", "No.", "facts", {"helpfulness": {"chosen": 4, "rejected": 2}, "safety": {"chosen": 3, "rejected": 3}}),
    ("How much is two plus two?", "Two plus two is four.", "Two plus two is five.", "math", {"helpfulness": {"chosen": 2, "rejected": 4}}),
    ("Say hello.", "Hello! How can I help you today?", "hello", "chat", None),
    ("Write print in python.", "print('hello')", "I cannot write code.", "code", None),
    ("What is water?", "Water is a liquid made of hydrogen and oxygen.", "Water is fire.", None, None),
]


def write_pairs(path, rows=PAIRS):
    with path.open("w") as f:
        for prompt, chosen, rejected, source, dims in rows:
            record = {"conversations": [{"from": "user", "value": prompt}], "chosen": chosen, "rejected": rejected}
            if source:
                record["source"] = source
            if dims:
                record["dimensions"] = dims
            f.write(json.dumps(record) + "\n")
    return path


def save_adapter(base_dir, out_dir, random_b: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=not random_b, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    if random_b:
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.5)
    peft_model.save_pretrained(out_dir)
    return out_dir


def direct_logps(model, ids, start):
    """Sum of log p(ids[t] | ids[:t]) for t >= start, one plain forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    token = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(token[start - 1:].sum())


def test_prefs_accuracy_matches_a_direct_computation(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_pairs(tmp_path / "held_out.jsonl")
    adapter = save_adapter(tiny_model_dir, tmp_path / "adapter", random_b=True)
    beta = 0.25
    results = evaluate_prefs(PrefsSetup(model=str(tiny_model_dir), adapter=str(adapter), reference=None,
                                        data=str(data), beta=beta), batch_size=4)

    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    pairs = load_pairs(str(data)).pairs
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # the tokenizer saved with the model
    encoded, _ = encode_pairs(pairs, tokenizer, get_template(None, tokenizer), 2048)
    margins, free = [], []
    for e in encoded:
        values = {}
        for side in ("chosen", "rejected"):
            ids = e.prompt_ids + getattr(e, f"{side}_ids")
            values[side] = direct_logps(policy, ids, len(e.prompt_ids))
            with policy.disable_adapter():
                values["ref_" + side] = direct_logps(policy, ids, len(e.prompt_ids))
        margins.append(beta * ((values["chosen"] - values["ref_chosen"]) - (values["rejected"] - values["ref_rejected"])))
        free.append(values["chosen"] / len(e.chosen_ids) > values["rejected"] / len(e.rejected_ids))
    margins = np.array(margins)
    m = results["metrics"]
    assert m["n_pairs"] == len(PAIRS)
    assert np.all(np.abs(margins) > 1e-3)  # no near-ties: the comparison below cannot flip on rounding
    assert m["pref_accuracy"] == pytest.approx(np.mean(margins > 0))
    assert m["pref_ties"] == 0
    assert m["reward_margin"] == pytest.approx(margins.mean(), abs=1e-4)
    assert m["ref_free_accuracy"] == pytest.approx(np.mean(free))
    per_pair = results["details"]["pairs"]
    assert [p["id"] for p in per_pair] == [e.id for e in encoded]

    # per source: the pairs of each source; a pair without one is grouped by its file
    sources = results["details"]["per_source"]
    assert {k: v["n_pairs"] for k, v in sources.items()} == {"facts": 2, "math": 1, "chat": 1, "code": 1,
                                                           "held_out.jsonl": 1}
    assert sources["facts"]["pref_accuracy"] == pytest.approx(np.mean(margins[:2] > 0))
    # per dimension: helpfulness prefers the rejected answer of pair 3, so that pair counts reversed
    dims = results["details"]["per_dimension"]
    expected = np.mean([margins[0] > 0, margins[1] > 0, margins[2] < 0])
    assert dims["helpfulness"]["n_pairs"] == 3 and dims["helpfulness"]["n_against_label"] == 1
    assert dims["helpfulness"]["pref_accuracy"] == pytest.approx(expected)
    assert dims["safety"]["n_pairs"] == 0 and dims["safety"]["n_no_preference"] == 1


def test_a_zero_adapter_ties_every_pair_and_the_command_writes_the_reports(tmp_path, tiny_model_dir):
    data = write_pairs(tmp_path / "held_out.jsonl")
    adapter = save_adapter(tiny_model_dir, tmp_path / "zero", random_b=False)  # LoRA B = 0: policy == reference
    out = tmp_path / "eval"
    assert main(["eval", "prefs", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--data", str(data),
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "prefloop.eval/1" and results["kind"] == "prefs"
    m = results["metrics"]
    assert m["pref_ties"] == len(PAIRS) and m["pref_accuracy"] == 0.0 and m["pref_accuracy_ties_half"] == 0.5
    assert m["reward_margin"] == 0.0
    html = (out / "report.html").read_text()
    assert "Held-out preference accuracy" in html and "per_dimension_accuracy" in (out / "report.md").read_text()


def test_without_a_reference_only_the_reference_free_ranking(tmp_path, tiny_model_dir):
    data = write_pairs(tmp_path / "held_out.jsonl")
    results = evaluate_prefs(PrefsSetup(model=str(tiny_model_dir), adapter=None, reference=None, data=str(data)))
    assert "pref_accuracy" not in results["metrics"] and "ref_free_accuracy" in results["metrics"]
    assert results["details"]["no_reference"] is True
    same = evaluate_prefs(PrefsSetup(model=str(tiny_model_dir), adapter=None, reference=str(tiny_model_dir),
                                     data=str(data)))
    assert same["metrics"]["pref_ties"] == len(PAIRS) and same["metrics"]["reward_margin"] == 0.0
    assert same["metrics"]["ref_free_accuracy"] == results["metrics"]["ref_free_accuracy"]


def test_training_config_gives_the_held_out_split(tmp_path, tiny_model_dir, capsys):
    from prefloop.data.loader import split_validation

    data = write_pairs(tmp_path / "all.jsonl")
    adapter = save_adapter(tiny_model_dir, tmp_path / "run", random_b=True)
    config = tmp_path / "train.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\ndataset: {data}\noutput_dir: {adapter}\n"
                      f"val_size: 2\nseed: 7\npref_beta: 0.5\nfinetuning_type: lora\n")
    out = tmp_path / "eval"
    assert main(["eval", "prefs", "--config", str(config), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    held_out = split_validation(load_pairs(str(data)).pairs, 2, 7)[1]
    assert [p["id"] for p in results["details"]["pairs"]] == [p.id for p in held_out]
    assert results["config"]["beta"] == 0.5 and results["data"]["split"] == "validation"
    assert results["models"]["model"]["adapter"] == str(adapter)
    # the gate's baseline (the champion, the base alone) from the same config: --no-adapter (it picked up the
    # trained adapter, so the baseline was the candidate and the gate refused "the same model")
    base = tmp_path / "eval-base"
    assert main(["eval", "prefs", "--config", str(config), "--model", str(tiny_model_dir), "--no-adapter",
                 "--out", str(base)]) == 0
    baseline = json.loads((base / "results.json").read_text())
    assert baseline["models"]["model"]["adapter"] is None and baseline["models"]["model"]["path"] == str(tiny_model_dir)
    assert [p["id"] for p in baseline["details"]["pairs"]] == [p.id for p in held_out]
    assert baseline["metrics"]["pref_ties"] == len(held_out)  # the base against itself: every pair a tie


def test_bad_pairs_file_is_a_located_error(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"conversations": [{"from": "user", "value": "hi"}], "chosen": "a", "rejected": "b"})
                    + "\n" + json.dumps({"conversations": [{"from": "user", "value": "hi"}], "chosen": "a"}) + "\n")
    assert main(["eval", "prefs", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "rejected" in err
    assert main(["eval", "prefs", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]) == 2


def test_a_bf16_training_config_is_scored_in_bf16_as_the_trainer_evaluates(tmp_path, tiny_model_dir):
    """A LoRA trained under bf16 autocast can rank pairs differently in fp32 (the demo: 1.000 / +0.480 in bf16,
    0.969 / +0.842 in fp32), so --config scores in the config's precision; --precision overrides it."""
    data = write_pairs(tmp_path / "all.jsonl")
    adapter = save_adapter(tiny_model_dir, tmp_path / "run", random_b=True)
    config = tmp_path / "train.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\ndataset: {data}\noutput_dir: {adapter}\n"
                      f"val_size: 3\nseed: 7\nfinetuning_type: lora\nbf16: true\n")
    results = {}
    for precision in ("auto", "fp32"):
        out = tmp_path / f"eval-{precision}"
        assert main(["eval", "prefs", "--config", str(config), "--out", str(out), "--precision", precision]) == 0
        results[precision] = json.loads((out / "results.json").read_text())
    assert results["auto"]["config"]["precision"] == "bf16" and results["fp32"]["config"]["precision"] == "fp32"
    bf16, fp32 = (np.array([p["policy_chosen"] for p in results[k]["details"]["pairs"]]) for k in ("auto", "fp32"))
    assert not np.array_equal(bf16, fp32)  # the passes really ran in another precision
    assert np.allclose(bf16, fp32, rtol=5e-2)  # and still score the same pairs


@pytest.mark.parametrize("nested", [False, True])
def test_an_out_that_is_a_file_is_refused_up_front(tmp_path, capsys, nested):
    """--out naming an existing file (or a path under one) is exit 2 before any model is loaded, not a traceback."""
    data = write_pairs(tmp_path / "pairs.jsonl")
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("{}\n")
    out = heldout / "sub" if nested else heldout
    assert main(["eval", "prefs", "--model", str(tmp_path / "no-such-model"), "--data", str(data),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file; give a directory" in err and "Traceback" not in err
    assert heldout.read_text() == "{}\n"


def test_an_unwritable_out_is_refused_up_front(tmp_path, capsys, monkeypatch):
    import os

    data = write_pairs(tmp_path / "pairs.jsonl")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # the tests may run as root, who can write anywhere
    assert main(["eval", "prefs", "--model", "m", "--data", str(data), "--out", str(tmp_path / "o" / "p")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_adapter_with_reference_is_an_error(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl")
    assert main(["eval", "prefs", "--model", "m", "--adapter", str(tmp_path / "a"), "--reference", "tiny",
                 "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "--reference works only without --adapter" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--cutoff-len", "0"), ("--cutoff-len", "-5"), ("--batch-size", "0")])
def test_non_positive_sizes_are_refused(tmp_path, capsys, option, value):
    data = write_pairs(tmp_path / "pairs.jsonl")
    assert main(["eval", "prefs", "--model", "m", "--data", str(data), "--out", str(tmp_path / "o"),
                 option, value]) == 2
    assert f"{option} must be at least 1, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_mistyped_model_name_fails_at_once_naming_the_option(tmp_path, tiny_model_dir, capsys, monkeypatch):
    data = write_pairs(tmp_path / "pairs.jsonl")
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["eval", "prefs", "--model", "tinyy", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--model tinyy: no such local directory; did you mean tiny?" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["eval", "prefs", "--model", str(tiny_model_dir), "--reference", "someone/not-cached-model",
                 "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "--reference someone/not-cached-model: no such local directory, and the hub is offline" in capsys.readouterr().err


def test_pairs_with_a_repeated_id_keep_their_own_source(tmp_path, tiny_tokenizer):
    """Ids can repeat (explicit ids, or two files' "train:12"): each encoded pair is matched to its own pair by
    position, so per-source tables and details name the right pair (matching by id gave both the first's)."""
    from prefloop.evaluate.prefs import load_eval_pairs

    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps({"id": "same", "prompt": f"Question {i}?", "chosen": f"Answer {i}.",
                                        "rejected": "No.", "source": f"src{i}"}) + "\n" for i in range(3)))
    setup = PrefsSetup(model="unused", adapter=None, reference=None, data=str(path))
    kept, encoded, *_ = load_eval_pairs(setup, tiny_tokenizer)
    assert [p.source for p in kept] == ["src0", "src1", "src2"]
    assert [p.prompt_messages()[-1]["content"] for p in kept] == ["Question 0?", "Question 1?", "Question 2?"]
