"""Iterative DPO audit: every round's data is read before round 1 trains, so a round without pairs stops
the run at once with its place named, and a round that brings no new pairs is said so (Xu et al. 2023,
Yuan et al. 2024: each round trains on new pairs)."""

from pathlib import Path

import pytest
import torch

import prefloop
from prefloop.config import load_config, round_configs
from prefloop.errors import DataError
from prefloop.train.rounds import check_round_data

ROOT = Path(__file__).resolve().parents[1]
HELPFUL = str(ROOT / "examples" / "data" / "rounds" / "helpfulness.jsonl")
SAFETY = str(ROOT / "examples" / "data" / "rounds" / "safety.jsonl")
BASE = dict(stage="dpo", finetuning_type="lora", lora_target="all", lora_rank=4, cutoff_len=256, val_size=3,
            report_to="none", sample_prompts=0, save_strategy="no", plot_loss=False, max_steps=1)


def rounds_config(tiny_model_dir, out, *datasets, **extra) -> dict:
    return dict(BASE, model_name_or_path=str(tiny_model_dir), output_dir=str(out),
                rounds=[{"name": f"r{i}", "dataset": d} for i, d in enumerate(datasets, 1)], **extra)


def test_a_round_without_pairs_stops_the_run_before_round_one_trains(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"rounds\[2\] \(round 2, r2, dataset .*empty.jsonl\)"):
        prefloop.train(rounds_config(tiny_model_dir, out, HELPFUL, str(empty)))
    assert not (out / "round-1").exists()  # nothing trained for nothing


def test_a_round_whose_pairs_are_all_held_out_is_an_error_naming_it(tmp_path, tiny_model_dir):
    lines = Path(SAFETY).read_text().splitlines()[:3]
    small = tmp_path / "three.jsonl"
    small.write_text("\n".join(lines) + "\n")
    cfg = load_config(rounds_config(tiny_model_dir, tmp_path / "out", HELPFUL, str(small)))
    with pytest.raises(DataError, match=r"rounds\[2\] \(round 2, r2, dataset .*three.jsonl\): val_size 3 leaves no training pairs"):
        check_round_data(cfg, round_configs(cfg), say=lambda *a: None)


def test_a_round_with_no_new_pairs_is_said_so_and_partly_new_data_is_counted(tmp_path, tiny_model_dir):
    cfg = load_config(rounds_config(tiny_model_dir, tmp_path / "out", HELPFUL, SAFETY, HELPFUL))
    said = []
    summary = check_round_data(cfg, round_configs(cfg), say=said.append)
    assert [s["new"] for s in summary] == [9, 9, 0] and summary[2]["seen_in"] == [1]
    assert any("round 3 (r3) has no new pairs: all its 9 training pairs were trained on in round 1;" in m
               for m in said), said
    assert not any("round 2" in m for m in said)
    # a round mixing old and new pairs: counted
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(Path(HELPFUL).read_text().splitlines() + Path(SAFETY).read_text().splitlines()) + "\n")
    cfg = load_config(rounds_config(tiny_model_dir, tmp_path / "out2", HELPFUL, str(mixed)))
    said = []
    summary = check_round_data(cfg, round_configs(cfg), say=said.append)
    assert summary[1]["new"] + (summary[1]["train"] - summary[1]["new"]) == summary[1]["train"] == 21
    assert 0 < summary[1]["train"] - summary[1]["new"] <= 9
    seen, new = summary[1]["train"] - summary[1]["new"], summary[1]["new"]
    assert any(m.startswith(f"Note: round 2 (r2): {seen} of its 21 training pairs {'was' if seen == 1 else 'were'} "
                            f"trained on in round 1; {new} {'is' if new == 1 else 'are'} new") for m in said), said


def test_lora_round_two_reference_is_round_one_final_policy_as_trained(tmp_path, tiny_model_dir):
    """ref_update: previous with LoRA: round 2's reference log-probs (cached) on the held-out pairs equal
    the log-probs round 1's policy had at the end of its training (its final evaluation, in memory before
    saving), not only those of the adapter loaded back: the adapter round 2 stacks on the base is the
    final one (no earlier checkpoint, no lost precision)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from prefloop.models import Reference, load_causal_lm, load_tokenizer
    from prefloop.train.reference import compute_reference_logps, data_fingerprint
    from prefloop.train.run import load_data

    out = tmp_path / "prev"
    config = rounds_config(tiny_model_dir, out, HELPFUL, HELPFUL, ref_update="previous", learning_rate=5e-3,
                           per_device_eval_batch_size=3, max_steps=2, per_device_train_batch_size=4)
    prefloop.train(config)
    round1 = json.loads((out / "round-1" / "round_metrics.json").read_text())
    cfg = load_config(config)
    rcfg = round_configs(cfg)[1]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    val = load_data(rcfg, tokenizer, lambda *a, **k: None).val
    fp = data_fingerprint(val)
    cached = None
    for path in sorted((out / "ref_cache").glob("ref_logps-validation-*.safetensors")):
        with safe_open(str(path), "pt") as f:
            if f.metadata().get("data") == fp and "round-1" in f.metadata().get("reference", ""):
                cached = load_file(str(path))
    assert cached is not None, "no cache file of round 2's reference (round 1's policy) on the validation pairs"
    # the final evaluation of round 1 logged the mean summed log-prob of the held-out answers
    assert float(cached["chosen"].mean()) == pytest.approx(round1["eval_logps/chosen"], abs=1e-4)
    assert float(cached["rejected"].mean()) == pytest.approx(round1["eval_logps/rejected"], abs=1e-4)
    # and round 1's policy moved: the reference of round 2 is not the starting model
    start = compute_reference_logps(Reference(load_causal_lm(str(tiny_model_dir)), "separate", "start"), val,
                                    "padded", tokenizer.pad_token_id, 3, rcfg.logps_chunk_size)
    assert not torch.allclose(start[0], cached["chosen"], atol=1e-3)


def test_a_resumed_run_skips_the_data_of_its_finished_rounds(tmp_path, tiny_model_dir, capsys):
    """Killed in round 2; round 1's data file has moved since round 1 finished. The resumed run reads only the
    rounds it still trains (was: check_round_data read every round's data first and stopped), and round 2's
    held-out table leaves round 1's split out, said so, instead of failing."""
    import json
    import shutil

    r1, r2 = tmp_path / "r1.jsonl", tmp_path / "r2.jsonl"
    shutil.copy(HELPFUL, r1)
    shutil.copy(SAFETY, r2)
    out = tmp_path / "out"
    prefloop.train(rounds_config(tiny_model_dir, out, str(r1), str(r2)))
    assert json.loads((out / "round-2" / "round_result.json").read_text())["heldout"].keys() == {"r1", "r2"}
    shutil.rmtree(out / "round-2")  # killed in round 2 before its first checkpoint
    (out / "rounds_report.json").unlink()
    r1.unlink()
    capsys.readouterr()
    report = prefloop.train(rounds_config(tiny_model_dir, out, str(r1), str(r2), resume_from_checkpoint=True,
                                          overwrite_output_dir=False))
    printed = capsys.readouterr().out
    assert "Round 1 finished earlier" in printed
    assert "round 1 (r1) finished in an earlier run, but its data cannot be read now" in printed
    rows = report["rounds"]
    assert [r["round"] for r in rows] == [1, 2] and (out / "round-2" / "round_result.json").is_file()
    assert set(rows[0]["heldout"]) == {"r1", "r2"} and set(rows[1]["heldout"]) == {"r2"}
    assert list(report["heldout_left_out"]) == ["r1"] and "r1's validation split left out" in printed
    # a round that still trains must read: round 2's data gone too is an error naming it
    shutil.rmtree(out / "round-2")
    r2.unlink()
    with pytest.raises(DataError, match=r"rounds\[2\] \(round 2, r2, dataset .*r2.jsonl\)"):
        prefloop.train(rounds_config(tiny_model_dir, out, str(r1), str(r2), resume_from_checkpoint=True,
                                     overwrite_output_dir=False))
