"""Iterative DPO (issue 16): examples/rounds.yaml on a tiny model, each ref_update checked against a
direct computation, reference-cache reuse counted, a killed round resumed, located config errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import prefloop
from prefloop.config import load_config, round_configs
from prefloop.errors import ConfigError
from prefloop.models import Reference, load_causal_lm, load_tokenizer
from prefloop.train.reference import compute_reference_logps, data_fingerprint
from prefloop.train.run import load_data

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "rounds.yaml"
QUIET = dict(report_to="none", plot_loss=False)


def run_example(tmp: Path, model_dir: Path, out: str, **overrides) -> dict:
    return prefloop.train(str(EXAMPLE), model_name_or_path=str(model_dir), output_dir=str(tmp / out),
                          **QUIET, **overrides)


@pytest.fixture(scope="module", autouse=True)
def _in_repo(tmp_path_factory):
    # The example's dataset paths are relative to the repository root, as a user runs it.
    import os

    old = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(old)


@pytest.fixture(scope="module")
def initial(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("rounds")
    report = run_example(tmp, tiny_model_dir, "initial")
    return {"report": report, "out": tmp / "initial", "tmp": tmp}


def round_features(model_dir, output_dir, index: int, split: str, **overrides):
    cfg = load_config(str(EXAMPLE), dict(model_name_or_path=str(model_dir), output_dir=str(output_dir), **QUIET,
                                         **overrides))
    rcfg = round_configs(cfg)[index - 1]
    tokenizer = load_tokenizer(str(model_dir))
    data = load_data(rcfg, tokenizer, lambda *a, **k: None)
    return rcfg, tokenizer, (data.train if split == "train" else data.val)


def direct_logps(model, rcfg, tokenizer, features):
    return compute_reference_logps(Reference(model, "separate", "direct"), features, "padded",
                                   tokenizer.pad_token_id, 4, rcfg.logps_chunk_size)


def cached_logps(out: Path, split: str, features) -> tuple[torch.Tensor, torch.Tensor]:
    """The training's cache file of `split` holding exactly these pairs (matched by data fingerprint)."""
    from safetensors import safe_open

    fp = data_fingerprint(features)
    for path in sorted((out / "ref_cache").glob(f"ref_logps-{split}-*.safetensors")):
        with safe_open(str(path), "pt") as f:
            if f.metadata().get("data") == fp:
                tensors = load_file(str(path))
                return tensors["chosen"], tensors["rejected"]
    raise AssertionError(f"no {split} cache file for these pairs in {out / 'ref_cache'}")


def test_three_rounds_chain_and_write_the_report(initial):
    out, report = initial["out"], initial["report"]
    rows = report["rounds"]
    assert [r["name"] for r in rows] == ["helpfulness", "safety", "domain"]
    assert [r["parent"] for r in rows] == [None, str(out / "round-1"), str(out / "round-2")]
    assert [r["steps"] for r in rows] == [6, 6, 3]  # 9 train pairs, batch 4; round 3 has num_train_epochs: 1
    for r in rows:
        assert (Path(r["output_dir"]) / "adapter_model.safetensors").is_file()
        assert set(r["heldout"]) == {"helpfulness", "safety", "domain"}  # every round's validation split
        assert all(0 <= v["accuracy"] <= 1 and v["pairs"] == 3 for v in r["heldout"].values())
    saved = yaml.safe_load((out / "round-2" / "prefloop_config.yaml").read_text())
    assert saved["pref_beta"] == 0.2 and saved["adapter_name_or_path"] == str(out / "round-1")
    assert json.loads((out / "rounds_report.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "rounds_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_initial_reference_cache_reused_where_the_reference_did_not_change(initial):
    rows = initial["report"]["rounds"]
    # Training: round 1 computes train+validation; later rounds compute their train split, and find their
    # validation split already computed by the cross-round evaluation after round 1.
    assert rows[0]["cache"] == {"reference_computed": 2}
    assert rows[1]["cache"] == {"reference_computed": 1, "reference_reused": 1}
    assert rows[2]["cache"] == {"reference_computed": 1, "reference_reused": 1}
    # Evaluation after each round against the starting model: 3 splits x 3 rounds, of which only rounds 2's
    # and 3's validation splits after round 1 were new.
    assert initial["report"]["cache_totals"] == {"reference_computed": 6, "reference_reused": 9}


def test_initial_reference_equals_the_starting_model_computed_directly(initial, tiny_model_dir):
    rcfg, tokenizer, features = round_features(tiny_model_dir, initial["out"], 3, "train")
    chosen, rejected = direct_logps(load_causal_lm(str(tiny_model_dir)), rcfg, tokenizer, features)
    cached = cached_logps(initial["out"], "train", features)
    assert torch.allclose(cached[0], chosen, atol=1e-4) and torch.allclose(cached[1], rejected, atol=1e-4)


def test_round_two_starts_from_round_one_policy(initial, tiny_model_dir):
    """Round 2's before-training eval margin is round 1's policy against the starting model, on round 2's data."""
    out = initial["out"]
    rcfg, tokenizer, features = round_features(tiny_model_dir, out, 2, "validation")
    policy = load_causal_lm(str(tiny_model_dir), adapter=str(out / "round-1"))
    pi_c, pi_r = direct_logps(policy, rcfg, tokenizer, features)
    ref_c, ref_r = direct_logps(load_causal_lm(str(tiny_model_dir)), rcfg, tokenizer, features)
    expected = (rcfg.pref_beta * ((pi_c - ref_c) - (pi_r - ref_r))).mean().item()
    metrics = json.loads((out / "round-2" / "round_metrics.json").read_text())
    assert metrics["before_eval_rewards/margins"] == pytest.approx(expected, abs=1e-4)
    assert expected != 0.0


def test_previous_reference_is_the_previous_round_policy(tmp_path, tiny_model_dir):
    report = run_example(tmp_path, tiny_model_dir, "previous", ref_update="previous")
    out = tmp_path / "previous"
    rcfg, tokenizer, features = round_features(tiny_model_dir, out, 2, "train", ref_update="previous")
    previous = load_causal_lm(str(tiny_model_dir), adapter=str(out / "round-1"))
    chosen, rejected = direct_logps(previous, rcfg, tokenizer, features)
    cached = cached_logps(out, "train", features)
    assert torch.allclose(cached[0], chosen, atol=1e-4) and torch.allclose(cached[1], rejected, atol=1e-4)
    for row in report["rounds"][1:]:  # policy == reference when the round starts: every pair a tie
        metrics = json.loads((Path(row["output_dir"]) / "round_metrics.json").read_text())
        assert metrics["before_eval_rewards/accuracies"] == 0.5 and metrics["before_eval_rewards/margins"] == 0.0
    assert report["rounds"][1]["cache"] == {"reference_computed": 2}  # a new reference: recomputed


def merged_weights(model_dir, adapter) -> dict[str, torch.Tensor]:
    model = load_causal_lm(str(model_dir), adapter=str(adapter)).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


SYNC_ALPHA = 0.25
SYNC = dict(ref_update="sync", ref_sync_alpha=SYNC_ALPHA, ref_sync_steps=2, max_steps=4)


@pytest.fixture(scope="module")
def sync_run(initial, tiny_model_dir):
    run_example(initial["tmp"], tiny_model_dir, "sync", **SYNC)
    return initial["tmp"] / "sync"


def test_sync_reference_is_the_tr_dpo_mixture(sync_run, tiny_model_dir):
    """ref <- a * policy + (1 - a) * ref at steps 2 and 4 of every round; round 2 starts from round 1's."""
    alpha, out = SYNC_ALPHA, sync_run
    base = {k: v.detach().clone() for k, v in load_causal_lm(str(tiny_model_dir)).state_dict().items()}
    step2 = {k: alpha * w + (1 - alpha) * base[k]
             for k, w in merged_weights(tiny_model_dir, out / "round-1" / "checkpoint-2").items()}
    saved2 = load_file(str(out / "round-1" / "checkpoint-2" / "sync_reference.safetensors"))
    for k, v in saved2.items():
        assert torch.allclose(v, step2[k], atol=1e-6), k
    ref1 = {k: alpha * w + (1 - alpha) * step2[k] for k, w in merged_weights(tiny_model_dir, out / "round-1").items()}
    # Round 2 starts from round 1's final reference and mixes at its own steps 2 and 4.
    r2_step2 = {k: alpha * w + (1 - alpha) * ref1[k]
                for k, w in merged_weights(tiny_model_dir, out / "round-2" / "checkpoint-2").items()}
    ref2 = {k: alpha * w + (1 - alpha) * r2_step2[k] for k, w in merged_weights(tiny_model_dir, out / "round-2").items()}
    for index, expected in ((1, ref1), (2, ref2)):
        saved = load_causal_lm(str(out / f"round-{index}" / "sync_reference")).state_dict()
        for k, v in saved.items():
            assert torch.allclose(v, expected[k], atol=1e-6), (index, k)
    assert not (out / "ref_cache").exists() or not list((out / "ref_cache").glob("ref_logps-train-*"))


def test_killed_round_resumes_in_the_right_round_at_the_right_step(initial, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "killed"
    shutil.copytree(initial["out"], out)
    # Killed in round 2 after its checkpoint at step 2: later checkpoints, final outputs and round 3 never happened.
    r2 = out / "round-2"
    for name in ("round_result.json", "round_metrics.json", "trainer_state.json", "adapter_model.safetensors",
                 "train_results.json", "eval_results.json", "all_results.json", "checkpoint-4", "checkpoint-6"):
        path = r2 / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    shutil.rmtree(out / "round-3")
    (out / "rounds_report.json").unlink()
    capsys.readouterr()
    with pytest.raises(ConfigError, match="already holds rounds"):
        run_example(tmp_path, tiny_model_dir, "killed", overwrite_output_dir=False)
    report = run_example(tmp_path, tiny_model_dir, "killed", resume_from_checkpoint=True, overwrite_output_dir=False)
    printed = capsys.readouterr().out
    assert "Round 1 finished earlier" in printed and "Resuming round in" in printed
    original = json.loads((initial["out"] / "round-2" / "trainer_state.json").read_text())
    resumed = json.loads((r2 / "trainer_state.json").read_text())
    assert resumed["global_step"] == 6
    new_steps = [h for h in resumed["log_history"] if "loss" in h and h["step"] > 2]
    assert [h["step"] for h in new_steps] == [3, 4, 5, 6]
    old = {h["step"]: h["loss"] for h in original["log_history"] if "loss" in h}
    for h in new_steps:
        assert h["loss"] == pytest.approx(old[h["step"]], rel=1e-3)
    assert report["rounds"][2]["train_loss"] == pytest.approx(initial["report"]["rounds"][2]["train_loss"], rel=1e-3)


def test_a_round_killed_after_its_last_step_trains_again_instead_of_past_its_end(initial, tmp_path, tiny_model_dir,
                                                                                 capsys):
    """Killed in round 3 after its last checkpoint (its last step) but before its results were written: resuming
    there would train past its end (train.run.RunComplete); the round starts again and ends at its last step."""
    out = tmp_path / "late"
    shutil.copytree(initial["out"], out)
    r3 = out / "round-3"
    for name in ("round_result.json", "round_metrics.json"):
        (r3 / name).unlink()
    (out / "rounds_report.json").unlink()
    capsys.readouterr()
    report = run_example(tmp_path, tiny_model_dir, "late", resume_from_checkpoint=True, overwrite_output_dir=False)
    printed = capsys.readouterr().out
    assert "the round starts again" in printed and "Round 2 finished earlier" in printed
    last = json.loads((initial["out"] / "round-3" / "trainer_state.json").read_text())["global_step"]
    assert json.loads((r3 / "trainer_state.json").read_text())["global_step"] == last  # not one step past it
    assert report["rounds"][2]["train_loss"] == pytest.approx(initial["report"]["rounds"][2]["train_loss"], rel=1e-3)


def test_round_config_errors_name_the_file_round_line_and_key(tmp_path, tiny_model_dir):
    base = yaml.safe_load(EXAMPLE.read_text())
    base.update(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "x"))

    def write(rounds, **extra) -> Path:
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump({**base, **extra, "rounds": rounds}, sort_keys=False))
        return path

    path = write([{"dataset": "a.jsonl"}, {"learning_rate": 1e-5}])
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "learning_rate: 1.0e-05" in text)
    with pytest.raises(ConfigError, match=rf"cfg.yaml: rounds\[2\] \(line {line}\): dataset is required"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"rounds\[1\].*unknown key 'learning_rte' \(did you mean 'learning_rate'"):
        load_config(str(write([{"dataset": "a.jsonl", "learning_rte": 1e-5}])))
    with pytest.raises(ConfigError, match=r"rounds\[1\].*ref_update belongs to the whole run"):
        load_config(str(write([{"dataset": "a.jsonl", "ref_update": "previous"}])))
    with pytest.raises(ConfigError, match=r"rounds\[1\].*pref_beta: -1.0 is not allowed"):
        load_config(str(write([{"dataset": "a.jsonl", "pref_beta": -1}])))
    with pytest.raises(ConfigError, match="dataset and rounds are both set"):
        load_config(str(write([{"dataset": "a.jsonl"}], dataset="b.jsonl")))
    with pytest.raises(ConfigError, match="ref_sync_alpha"):
        load_config(str(write([{"dataset": "a.jsonl"}], ref_sync_alpha=0)))


def test_killed_sync_round_resumes_with_the_reference_of_its_checkpoint(sync_run, tmp_path, tiny_model_dir):
    out = tmp_path / "sync-killed"
    shutil.copytree(sync_run, out)
    r1 = out / "round-1"
    for name in ("round_result.json", "round_metrics.json", "trainer_state.json", "adapter_model.safetensors",
                 "train_results.json", "eval_results.json", "all_results.json", "checkpoint-4", "sync_reference"):
        path = r1 / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for later in ("round-2", "round-3"):
        shutil.rmtree(out / later)
    run_example(tmp_path, tiny_model_dir, "sync-killed", resume_from_checkpoint=True, overwrite_output_dir=False,
                **SYNC)
    for index in (1, 2, 3):  # the same mixed references as the uninterrupted run
        resumed = load_causal_lm(str(out / f"round-{index}" / "sync_reference")).state_dict()
        original = load_causal_lm(str(sync_run / f"round-{index}" / "sync_reference")).state_dict()
        for k, v in resumed.items():
            assert torch.allclose(v, original[k], atol=1e-5), (index, k)


def test_full_fine_tuning_chains_saved_models_and_reuses_the_initial_cache(tmp_path, tiny_model_dir):
    report = run_example(tmp_path, tiny_model_dir, "full", finetuning_type="full", learning_rate=1e-3, max_steps=2)
    out = tmp_path / "full"
    saved = yaml.safe_load((out / "round-3" / "prefloop_config.yaml").read_text())
    assert saved["model_name_or_path"] == str(out / "round-2") and saved["ref_model"] == str(tiny_model_dir)
    assert (out / "round-3" / "model.safetensors").is_file()
    # The starting model loaded separately in rounds 2 and 3 has the same cache key as the policy before round 1.
    assert [r["cache"] for r in report["rounds"]] == [
        {"reference_computed": 2}, {"reference_computed": 1, "reference_reused": 1},
        {"reference_computed": 1, "reference_reused": 1}]


def test_registry_registers_each_round_with_its_parent_once(tmp_path, tiny_model_dir, capsys):
    """`registry:` with rounds: the registered starting model v1 <- round 1 v2 <- round 2 v3 <- round 3 v4, the round
    recorded in each version's meta; a run killed after round 3 registered resumes without a second version."""
    from prefloop.registry import versions as vs
    from prefloop.registry.commands import register_model
    from prefloop.store import Store

    db = tmp_path / "reg.sqlite"
    with Store(db) as store:
        base = register_model(store, str(tiny_model_dir), "tiny")
    out = tmp_path / "reg"

    def train(**overrides):  # from the registry's copy of the starting model, so round 1's parent is v1
        prefloop.train(str(EXAMPLE), model_name_or_path=base["path"], output_dir=str(out), registry="tiny",
                       registry_db=str(db), val_size=0, **QUIET, **overrides)

    train()
    with Store(db) as store:
        versions = store.model_versions("tiny")
        assert [v["version"] for v in versions] == ["v1", "v2", "v3", "v4"]
        assert [v["parent_id"] for v in versions] == [None] + [v["id"] for v in versions[:3]]
        rounds = [v["meta"]["round"] for v in versions[1:]]
        assert [r["index"] for r in rounds] == [1, 2, 3]
        assert [r["name"] for r in rounds] == ["helpfulness", "safety", "domain"]
        assert len({r["run"] for r in rounds}) == 1
        assert [v["meta"]["source"] for v in versions[1:]] == [str(out / f"round-{i}") for i in (1, 2, 3)]
        assert [vs.label(v) for v in vs.lineage(store, versions[-1])] == ["tiny:v4", "tiny:v3", "tiny:v2", "tiny:v1"]
        assert store.aliases("tiny")["candidate"] == versions[-1]["id"]
    # Killed in round 3 after it was registered but before its result was written: resume retrains from the last
    # checkpoint and finds the round already registered by this run.
    r3 = out / "round-3"
    for name in ("round_result.json", "round_metrics.json", "trainer_state.json", "checkpoint-3"):
        path = r3 / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    assert (r3 / "checkpoint-2").is_dir()
    capsys.readouterr()
    train(resume_from_checkpoint=True, overwrite_output_dir=False)
    assert "already registered as tiny:v4" in capsys.readouterr().out
    with Store(db) as store:
        assert [v["version"] for v in store.model_versions("tiny")] == ["v1", "v2", "v3", "v4"]
    # A new run in the same output_dir (overwrite_output_dir) is new training: three new versions, chained anew.
    train()
    with Store(db) as store:
        versions = store.model_versions("tiny")
        assert [v["version"] for v in versions] == ["v1", "v2", "v3", "v4", "v5", "v6", "v7"]
        assert [v["parent_id"] for v in versions[4:]] == [versions[0]["id"], versions[4]["id"], versions[5]["id"]]
        assert versions[4]["meta"]["round"]["run"] != versions[1]["meta"]["round"]["run"]


def test_rounds_continuing_an_sft_adapter_keep_base_plus_adapter_as_the_initial_reference(tmp_path, tiny_model_dir):
    """With `adapter_name_or_path` (the SFT model is base + adapter) and no ref_model, round 1's reference is base +
    that adapter (models.build_reference); `ref_update: initial` keeps it so in every later round (it was the bare
    base from round 2 on)."""
    import peft

    from prefloop.train.rounds import plan_round

    adapter = tmp_path / "sft-adapter"
    model = peft.get_peft_model(load_causal_lm(str(tiny_model_dir)), peft.LoraConfig(r=4, target_modules=["q_proj"]))
    model.save_pretrained(adapter)
    cfg = load_config(str(EXAMPLE), dict(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "out"),
                                         adapter_name_or_path=str(adapter), **QUIET))
    assert cfg.ref_update == "initial" and len(cfg.rounds) >= 2
    rounds = round_configs(cfg)
    first, described = plan_round(cfg, rounds[0], 1)
    assert first.ref_model is None and first.adapter_name_or_path == str(adapter) and str(adapter) in described
    second, described = plan_round(cfg, rounds[1], 2)
    assert (second.ref_model, second.ref_model_adapters) == (str(tiny_model_dir), str(adapter))
    assert second.adapter_name_or_path == str(tmp_path / "out" / "round-1") and str(adapter) in described


def test_quoted_true_or_false_resume_is_the_boolean_with_rounds(tmp_path, tiny_model_dir, monkeypatch):
    """`resume_from_checkpoint: "true"` (quoted) is the boolean for one run (run.py's _resume_value) but with
    rounds raised "not a path". Right value: "false" is false (a used output_dir is refused as holding rounds),
    "true" resumes, a real path is still refused."""
    import prefloop.train.run as run

    out = tmp_path / "quoted"
    (out / "round-1").mkdir(parents=True)
    (out / "round-1" / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds rounds"):
        run_example(tmp_path, tiny_model_dir, "quoted", resume_from_checkpoint="false", overwrite_output_dir=False)

    class Started(Exception):
        pass

    def started(*args, **kwargs):
        raise Started

    monkeypatch.setattr(run, "run_training", started)
    with pytest.raises(Started):
        run_example(tmp_path, tiny_model_dir, "quoted", resume_from_checkpoint="true", overwrite_output_dir=False)
    with pytest.raises(ConfigError, match="not a path"):
        run_example(tmp_path, tiny_model_dir, "quoted", resume_from_checkpoint=str(out / "round-1"),
                    overwrite_output_dir=False)
