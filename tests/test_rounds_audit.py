"""Iterative DPO audit: every round's data is read before round 1 trains, so a round without pairs stops
the run at once with its place named, and a round that brings no new pairs is said so (Xu et al. 2023,
Yuan et al. 2024: each round trains on new pairs)."""

from pathlib import Path

import pytest

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
    with pytest.raises(DataError, match=r"rounds\[1\] \(round 2, r2, dataset .*empty.jsonl\)"):
        prefloop.train(rounds_config(tiny_model_dir, out, HELPFUL, str(empty)))
    assert not (out / "round-1").exists()  # nothing trained for nothing


def test_a_round_whose_pairs_are_all_held_out_is_an_error_naming_it(tmp_path, tiny_model_dir):
    lines = Path(SAFETY).read_text().splitlines()[:3]
    small = tmp_path / "three.jsonl"
    small.write_text("\n".join(lines) + "\n")
    cfg = load_config(rounds_config(tiny_model_dir, tmp_path / "out", HELPFUL, str(small)))
    with pytest.raises(DataError, match=r"rounds\[1\] \(round 2, r2, dataset .*three.jsonl\): val_size 3 leaves no training pairs"):
        check_round_data(cfg, round_configs(cfg), say=lambda *a: None)


def test_a_round_with_no_new_pairs_is_said_so_and_partly_new_data_is_counted(tmp_path, tiny_model_dir):
    cfg = load_config(rounds_config(tiny_model_dir, tmp_path / "out", HELPFUL, SAFETY, HELPFUL))
    said = []
    summary = check_round_data(cfg, round_configs(cfg), say=said.append)
    assert [s["new"] for s in summary] == [9, 9, 0] and summary[2]["seen_in"] == [1]
    assert any("round 3 (r3) has no new pairs: all 9 of its training pairs were trained on in round(s) 1" in m
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
    assert any(m.startswith("Note: round 2 (r2): ") and "are new" in m for m in said), said
