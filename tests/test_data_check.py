"""`prefloop data check` through the real CLI on every shipped example file and on bad data."""

import json
from pathlib import Path

import pytest

from prefloop.cli import main
from prefloop.data.loader import load_pairs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data"

EXAMPLE_FILES = {
    "seed_preferences.jsonl": "seed",
    "sharegpt_ranking.json": "sharegpt",
    "alpaca_ranking.json": "alpaca",
    "trl_standard.jsonl": "trl_standard",
    "trl_conversational_implicit.jsonl": "trl_conversational",
    "trl_conversational_explicit.parquet": "trl_conversational",
    "hh_rlhf.jsonl": "hh",
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from prefloop.testing import build_tiny_tokenizer

    path = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer().save_pretrained(path)
    return str(path)


def run_json(capsys, *args):
    code = main(["data", "check", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.mark.parametrize("name, fmt", sorted(EXAMPLE_FILES.items()))
def test_each_example_file(capsys, name, fmt):
    code = main(["data", "check", str(EXAMPLES / name)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"formats detected: {fmt}" in out
    assert "[ERROR" not in out and "[WARN" not in out
    assert "usable for training" in out


def test_registered_names_including_custom_tags(capsys):
    code, report = run_json(capsys, "support_custom,seed_example", "--dataset-dir", str(EXAMPLES))
    assert code == 0
    assert [d["name"] for d in report["datasets"]] == ["support_custom", "seed_example"]
    assert report["formats"] == {"seed": 5, "sharegpt": 2}
    assert report["turns"]["multi_turn_pairs"] == 3
    assert report["turns"]["with_system_prompt"] == 4


def test_demo_dataset(capsys):
    code, report = run_json(capsys, "demo", "--dataset-dir", str(EXAMPLES))
    assert code == 0
    assert report["pairs"] == len(load_pairs("demo", dataset_dir=str(EXAMPLES)).pairs)
    findings = {f["check"]: f for f in report["quality"]["findings"]}
    assert set(findings) == {"identical", "empty", "formatting_only", "duplicate", "contradiction", "duplicate_ids", "length_bias", "off_topic"}


def test_token_statistics_and_cutoff(capsys, tokenizer_dir):
    code, report = run_json(capsys, str(EXAMPLES / "seed_preferences.jsonl"), "--tokenizer", tokenizer_dir, "--cutoff-len", "40")
    assert code == 0
    tokens = report["tokens"]
    assert tokens["template"] == "tokenizer" and tokens["encoded"] == 5
    for part in ("prompt", "chosen", "rejected"):
        d = tokens[part]
        assert 0 < d["min"] <= d["median"] <= d["p95"] <= d["max"]
    cut = tokens["cutoff"]
    assert cut["cutoff_len"] == 40
    assert cut["kept"] + cut["dropped"] == 5
    assert cut["prompt_truncated"] + cut["response_truncated"] + cut["dropped"] > 0
    assert report["usable_pairs"] == cut["kept"]
    code = main(["data", "check", str(EXAMPLES / "seed_preferences.jsonl"), "--tokenizer", tokenizer_dir,
                 "--template", "llama3", "--cutoff-len", "4096"])
    out = capsys.readouterr().out
    assert code == 0
    assert "template llama3" in out and "cutoff_len 4096: 0 pairs are longer; 0 prompts truncated" in out


def test_cutoff_report_encodes_once_and_equals_encoding_with_the_cutoff(capsys, tokenizer_dir, tmp_path, monkeypatch):
    """Issue 12 item 16: the dataset is encoded once; only the pairs over the cutoff are encoded again,
    and the report is what encoding every pair with the cutoff gives (duplicate ids included)."""
    import prefloop.data.encode as encode_module
    from prefloop.data.template import get_template
    from prefloop.models import load_tokenizer

    long = " ".join(["word"] * 80)
    records = [
        {"id": "fits", "prompt": "Short question?", "chosen": "Yes.", "rejected": "No."},
        {"id": "dup", "prompt": "Another short one?", "chosen": "Sure.", "rejected": "Nope."},
        {"id": "dup", "prompt": "Long question " + long + "?", "chosen": "Yes.", "rejected": "No."},  # prompt cut
        {"id": "long-answers", "prompt": "Q?", "chosen": "A " + long, "rejected": "B " + long},  # both cut (budgets)
        {"id": "same-start", "prompt": "Q2?", "chosen": long + " one", "rejected": long + " two"},  # identical -> drop
        {"id": "fits-2", "prompt": "Q3?", "chosen": "Fine.", "rejected": "Bad."},
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    pairs = load_pairs(str(data)).pairs
    tokenizer = load_tokenizer(tokenizer_dir)
    expected_kept, expected = encode_module.encode_pairs(pairs, tokenizer, get_template(None, tokenizer), 60)

    encoded_pairs = []
    real = encode_module.encode_pairs

    def counting(pairs, *args, **kwargs):  # the real encoder, counting the pairs it is given
        pairs = list(pairs)
        encoded_pairs.append(len(pairs))
        return real(pairs, *args, **kwargs)

    monkeypatch.setattr(encode_module, "encode_pairs", counting)
    code, report = run_json(capsys, str(data), "--tokenizer", tokenizer_dir, "--cutoff-len", "60")
    cut = report["tokens"]["cutoff"]
    assert encoded_pairs == [6, 3] and cut["over_cutoff"] == 3
    assert (cut["kept"], cut["dropped"]) == (expected.kept, len(expected.dropped)) == (5, 1)
    assert cut["drop_reasons"] == dict(expected.drop_reasons()) == {"identical after truncation": 1}
    assert (cut["prompt_truncated"], cut["response_truncated"]) == (expected.prompt_truncated,
                                                                  expected.response_truncated) == (2, 1)
    assert report["usable_pairs"] == len(expected_kept) == 5 and code == 0


def test_cutoff_that_drops_everything_exits_1(capsys, tokenizer_dir):
    code, report = run_json(capsys, str(EXAMPLES / "trl_standard.jsonl"), "--tokenizer", tokenizer_dir, "--cutoff-len", "3")
    assert code == 1
    assert report["usable_pairs"] == 0 and report["tokens"]["cutoff"]["dropped"] == 4


def test_write_clean_removes_bad_pairs_and_says_why(capsys, tmp_path):
    good = [json.loads(line) for line in (EXAMPLES / "trl_standard.jsonl").read_text().splitlines()]
    bad = [
        {"prompt": "Q one?", "chosen": "Same.", "rejected": "Same."},
        {"prompt": "Q two?", "chosen": "Fine answer.", "rejected": "  "},
        {"prompt": "Q three?", "chosen": "Yes, indeed.", "rejected": "yes indeed"},
        good[0],
        {**good[1], "chosen": good[1]["rejected"], "rejected": good[1]["chosen"]},
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in good + bad))
    out_path = tmp_path / "clean" / "clean.jsonl"
    code = main(["data", "check", str(data), "--write-clean", str(out_path)])
    text = capsys.readouterr().out
    assert code == 0
    assert "[ERROR] chosen identical to rejected: 1  (removed by --write-clean)" in text
    assert f"Wrote 3 pairs to {out_path}" in text
    for reason in ("1 identical", "1 empty", "1 formatting_only", "1 duplicate", "2 contradiction"):
        assert reason in text
    clean = load_pairs(str(out_path))
    assert clean.format_counts == {"seed": 3}
    assert [p.chosen for p in clean.pairs] == [good[0]["chosen"], good[2]["chosen"], good[3]["chosen"]]
    assert clean.pairs[2].id == "robot-name"  # ids and provenance survive the rewrite
    assert clean.pairs[1].id == "mixed:3" and clean.pairs[1].source == f"{data}:3"


def test_json_report_shape(capsys):
    code, report = run_json(capsys, str(EXAMPLES / "hh_rlhf.jsonl"))
    assert code == 0
    assert set(report) >= {"datasets", "pairs", "formats", "skipped", "turns", "quality", "usable_pairs"}
    assert report["quality"]["passing"] == 3
    assert {f["severity"] for f in report["quality"]["findings"]} <= {"ok", "info"}


def test_malformed_data_fails_with_file_line_and_field(capsys, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": 1, "rejected": "b"}\n')
    assert main(["data", "check", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{data}:2: field 'chosen'" in err and "--skip-bad-rows" in err
    code, report = run_json(capsys, str(data), "--skip-bad-rows")
    assert code == 0
    assert report["skipped"]["count"] == 1 and report["pairs"] == 1


def test_no_usable_pairs_exits_1(capsys, tmp_path):
    data = tmp_path / "useless.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "a"}\n')
    assert main(["data", "check", str(data)]) == 1
    captured = capsys.readouterr()
    assert "No usable pairs" in captured.out and "no usable pairs" in captured.err
    data.write_text("{broken\n")
    assert main(["data", "check", str(data), "--skip-bad-rows"]) == 1
    assert "skipped: 1 bad row" in capsys.readouterr().out


def test_unknown_dataset_and_options_needing_a_tokenizer(capsys, tmp_path):
    assert main(["data", "check", "nope", "--dataset-dir", str(EXAMPLES)]) == 2
    assert "seed_example" in capsys.readouterr().err  # lists the known names
    assert main(["data", "check", str(EXAMPLES / "trl_standard.jsonl"), "--cutoff-len", "64"]) == 2
    assert "need --tokenizer" in capsys.readouterr().err


def test_token_report_names_what_encoding_will_fix_or_drop(capsys, tokenizer_dir, tmp_path):
    """Answers ending with the EOS written as text (removed in training), identical answers (dropped), and a
    declared column no record has (exit 2 naming it)."""
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "Capital of France?", "chosen": "Paris.<|im_end|>", "rejected": "Lyon."},
        {"prompt": "Capital of Italy?", "chosen": "Rome.", "rejected": "Rome."},
    ]))
    code, report = run_json(capsys, str(data), "--tokenizer", tokenizer_dir)
    tokens = report["tokens"]
    assert code == 0 and tokens["encoded"] == 1 and tokens["end_of_turn_in_text"] == 1
    assert tokens["not_encodable"][0]["reason"].startswith("identical answers")
    assert main(["data", "check", str(data), "--tokenizer", tokenizer_dir]) == 0
    assert "1 pair ends replies with the end-of-turn/EOS token written as text" in capsys.readouterr().out
    (tmp_path / "dataset_info.json").write_text(json.dumps({"p": {
        "file_name": "prefs.jsonl", "formatting": "trl", "ranking": True,
        "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "system": "system_prompt"}}}))
    assert main(["data", "check", "p", "--dataset-dir", str(tmp_path)]) == 2
    assert "'system': 'system_prompt', but no record" in capsys.readouterr().err


def test_ignored_trl_prompt_strings_are_counted_in_the_report(capsys, tmp_path):
    shared = [{"role": "user", "content": "What color is the sky?"}]
    record = {"prompt": "Name a fruit.", "chosen": shared + [{"role": "assistant", "content": "Blue."}],
              "rejected": shared + [{"role": "assistant", "content": "Green."}]}
    data = tmp_path / "trl.jsonl"
    data.write_text(json.dumps(record) + "\n" + json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    code, report = run_json(capsys, str(data))
    assert code == 0 and report["pairs"] == 2
    assert report["warnings"]["count"] == 1 and report["warnings"]["kinds"] == {"prompt_string_ignored": 1}
    assert report["warnings"]["first"][0]["location"] == "line 1"
    assert main(["data", "check", str(data)]) == 0
    text = capsys.readouterr().out
    assert "pairs read with a warning: 1" in text
    assert "1 pair had a prompt string that is none of the user turns chosen and rejected share" in text
