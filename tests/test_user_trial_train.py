"""Faults a new user met with `prefloop train` (trial batch U1): a failing run that wiped the previous one,
errors that blamed the wrong source, typos one at a time, a suggested flag train has not, whitespace prompts
trained on, duplicates kept silently, a warning printed twice."""

import json
from pathlib import Path

import pytest

import prefloop
from prefloop.errors import ConfigError, DataError


def _pairs(path: Path, n: int = 6, extra_lines: tuple[str, ...] = ()) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"conversations": [{"from": "human", "value": f"What is {i}?"}],
                                "chosen": f"It is {i}, certainly.", "rejected": "no"}) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


def _quick(model, data, out, **extra):
    return {"model_name_or_path": str(model), "dataset": str(data), "output_dir": str(out), "template": "chatml",
            "per_device_train_batch_size": 2, "logging_steps": 1, "report_to": "none", "sample_prompts": 0,
            "learning_rate": 1e-3, "cutoff_len": 256, "save_strategy": "no", "length_probe_prompts": 0, **extra}


def _previous_run(out: Path) -> dict[str, bytes]:
    """A previous prefloop run's outputs (adapter, checkpoint, state, its config); returns every file's bytes."""
    (out / "checkpoint-2").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "trainer_state.json"):
        (out / "checkpoint-2" / name).write_bytes(b"ckpt " + name.encode())
        (out / name).write_bytes(b"final " + name.encode())
    (out / "prefloop_config.yaml").write_text("output_dir: out\npref_beta: 0.3\n")
    return _snapshot(out)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["dataset_name_typo", "bad_rows", "encoding_drops_every_pair", "missing_file"])
def test_a_failing_overwrite_run_leaves_the_previous_run_whole(tmp_path, tiny_model_dir, capsys, case):
    """`overwrite_output_dir: true` removed the previous run's checkpoints and adapter (and rewrote
    prefloop_config.yaml) before the data was read: a typo in `dataset` lost the trained adapter and trained
    nothing. Right value: the error, and output_dir byte for byte as it was."""
    out = tmp_path / "out"
    before = _previous_run(out)
    data = _pairs(tmp_path / "pairs.jsonl")
    extra = {}
    if case == "dataset_name_typo":
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"prefs": {"file_name": str(data)}}))
        extra = {"dataset": "pref", "dataset_dir": str(tmp_path / "data")}
    elif case == "bad_rows":
        extra = {"dataset": str(_pairs(tmp_path / "bad.jsonl", extra_lines=('{"chosen": "x"',)))}
    elif case == "encoding_drops_every_pair":
        extra = {"cutoff_len": 4}
    else:
        extra = {"dataset": str(tmp_path / "nope.jsonl")}
    with pytest.raises((DataError, ConfigError)):
        prefloop.train(_quick(tiny_model_dir, data, out, overwrite_output_dir=True, max_steps=1, **extra))
    assert _snapshot(out) == before
    assert "removed the previous run" not in capsys.readouterr().err


def test_overwrite_removes_the_previous_run_when_training_starts(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    _previous_run(out)
    data = _pairs(tmp_path / "pairs.jsonl")
    prefloop.train(_quick(tiny_model_dir, data, out, overwrite_output_dir=True, max_steps=1))
    assert "removed the previous run's checkpoint-2, adapter_config.json" in capsys.readouterr().err
    assert not (out / "checkpoint-2").exists() and "pref_beta: 0.3" not in (out / "prefloop_config.yaml").read_text()


def test_a_bad_row_in_train_names_only_the_config_key_to_skip_it(tmp_path, tiny_model_dir, capsys):
    """`prefloop train` said "--skip-bad-rows / skip_bad_rows: true": train has no --skip-bad-rows flag."""
    from prefloop.cli import main as cli_main

    data = _pairs(tmp_path / "pairs.jsonl", extra_lines=(json.dumps({
        "conversations": [{"from": "human", "value": "hi"}], "chosen": None, "rejected": "no"}),))
    config = tmp_path / "cfg.yaml"
    config.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in _quick(
        tiny_model_dir, data, tmp_path / "out", max_steps=1).items()) + "\n")
    assert cli_main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{data}:7" in err and "'chosen' is null" in err and "skip_bad_rows: true" in err
    assert "--skip-bad-rows" not in err


def _blank_prompt_row() -> str:
    return json.dumps({"conversations": [{"from": "human", "value": "  \n\t "}], "chosen": "Yes.", "rejected": "no"})


def test_a_whitespace_only_prompt_is_a_bad_row_in_training_as_in_data_check(tmp_path, tiny_model_dir, capsys):
    """`data check` calls a whitespace-only prompt an ERROR and `generate` refuses it, but `train` trained on it
    without a word. Right value: a bad row with file:line (an error; skipped and counted with skip_bad_rows)."""
    from prefloop.cli import main

    data = _pairs(tmp_path / "pairs.jsonl", extra_lines=(_blank_prompt_row(),))
    assert main(["data", "check", str(data)]) == 2  # data check's verdict on the same row: the same rule (the loader's)
    assert f"{data}:7: field 'prompt': the prompt is empty or whitespace-only" in capsys.readouterr().err
    with pytest.raises(DataError) as err:
        prefloop.train(_quick(tiny_model_dir, data, tmp_path / "out", max_steps=1))
    assert f"{data}:7: field 'prompt': the prompt is empty or whitespace-only" in str(err.value)
    assert "skip_bad_rows: true" in str(err.value) and not (tmp_path / "out").exists()
    metrics = prefloop.train(_quick(tiny_model_dir, data, tmp_path / "out", max_steps=1, skip_bad_rows=True))
    out = capsys.readouterr().out
    assert "6 pairs from 1 file" in out and "skipped 1 bad row" in out
    assert f"{data}:7: field 'prompt': the prompt is empty or whitespace-only" in out and metrics["train_loss"] > 0


def test_exact_duplicate_pairs_are_kept_but_said(tmp_path, tiny_model_dir, capsys):
    """`data check` reports exact duplicates; `train` kept them silently. Right value: kept (as LLaMA-Factory and
    TRL do) and counted in the training data summary."""
    data = tmp_path / "pairs.jsonl"
    _pairs(data)
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines + [lines[0], lines[0], lines[2]]) + "\n")
    prefloop.train(_quick(tiny_model_dir, data, tmp_path / "out", max_steps=1))
    out = capsys.readouterr().out
    assert "9 pairs from 1 file" in out
    assert "3 exact duplicate pairs (beyond the first copy) kept and trained on" in out
    assert f"{data}:7 same as pairs:1" in out
    # the copies dataset_info's num_samples adds on purpose are said by its own note, not counted as duplicates
    import json

    (tmp_path / "dataset_info.json").write_text(json.dumps({"twice": {"file_name": data.name,
                                                                      "num_samples": 12}}))
    prefloop.train(_quick(tiny_model_dir, "twice", tmp_path / "out2", max_steps=1, dataset_dir=str(tmp_path)))
    out = capsys.readouterr().out
    assert "num_samples 12 drawn at random from its 9 pairs" in out and "3 pairs repeated to reach it" in out
    assert "3 exact duplicate pairs (beyond the first copy)" in out


def test_the_split_control_tokens_warning_is_printed_once_per_run(tmp_path, tiny_model_dir, caplog):
    """template: llama3 on a tokenizer without its control tokens warned "splits into several tokens" twice."""
    data = _pairs(tmp_path / "pairs.jsonl")
    with caplog.at_level("WARNING"):
        prefloop.train(_quick(tiny_model_dir, data, tmp_path / "out", template="llama3", max_steps=1))
    assert sum("splits into several tokens" in r.getMessage() for r in caplog.records) == 1


def test_the_before_training_tie_note_only_when_the_pairs_are_ties():
    """Round 2 of `rounds:` starts from round 1's policy: its first evaluation has real margins, and the note
    "policy = reference, so every pair is a tie" was printed anyway."""
    from prefloop.train.run import report_quality

    lines = []
    tied = {"eval_rewards/accuracies": 0.5, "eval_rewards/margins": 0.0, "eval_ranking/accuracies": 0.6}
    report_quality("Before training", tied, lines.append, first=True)
    report_quality("Before training", {**tied, "eval_rewards/margins": 6.7e-05}, lines.append, first=True)
    report_quality("Before training", {**tied, "eval_rewards/accuracies": 0.75}, lines.append, first=True)
    assert ["every pair is a tie" in line for line in lines] == [True, False, False]
