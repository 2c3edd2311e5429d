"""End to end: the seed config (fp16 kept) trains a tiny model; outputs, metrics, resume, merge."""

import dataclasses
import json
import math
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import prefloop
from prefloop.cli import main as cli_main

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed_config.yaml"
METRICS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "logits/chosen", "logits/rejected"]
# Sizes only: the seed's 32-step accumulation and 100/500-step intervals shrunk to a 21-pair dataset (18 train, 3 validation).
SMALL = ["gradient_accumulation_steps=2", "learning_rate=5e-3", "logging_steps=2", "eval_steps=3", "save_steps=3",
         "plot_loss=true"]


def write_seed_jsonl(path: Path, n: int = 21) -> Path:
    """Pairs in the seed's format, single- and multi-turn: a long polite chosen, a curt rejected."""
    rng = random.Random(0)
    topics = ["the capital of france", "water", "the sun", "python code", "a dog", "tea", "the moon", "two plus two"]
    with path.open("w") as f:
        for i in range(n):
            topic = rng.choice(topics)
            turns = [{"from": "human", "value": f"What is {topic}?"}]
            if i % 3 == 0:
                turns = [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "Hi, how can I help?"}] + turns
            f.write(json.dumps({"conversations": turns,
                                "chosen": f"Certainly. Here is a good answer about {topic}, step by step.",
                                "rejected": "no"}) + "\n")
    return path


def seed_config(tmp_path: Path, model_dir: Path, data: Path, out: str = "out") -> Path:
    text = (SEED.read_text().replace("MODEL_DIR", str(model_dir)).replace("OUTPUT_DIR", str(tmp_path / out))
            .replace("comparison_gpt4_en", str(data)))
    path = tmp_path / f"{out}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("train")
    data = write_seed_jsonl(tmp / "prefs.jsonl")
    config = seed_config(tmp, tiny_model_dir, data)
    metrics = prefloop.train(str(config), **dict(o.split("=", 1) for o in SMALL))
    return {"metrics": metrics, "out": tmp / "out", "config": config, "tmp": tmp, "data": data}


def test_seed_config_trains_and_writes_every_output(run):
    out = run["out"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "prefloop_config.yaml",
                 "trainer_state.json", "train_results.json", "eval_results.json", "samples.jsonl"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]
    saved = yaml.safe_load((out / "prefloop_config.yaml").read_text())
    assert saved["fp16"] is torch.cuda.is_available()  # without CUDA: fell back to bf16/fp32
    assert saved["learning_rate"] == 5e-3 and saved["pref_loss"] == "sigmoid"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 1 and {"prompt", "before", "after", "chosen"} <= samples[0].keys()


def test_metrics_in_trainer_state_with_eval_prefix(run):
    history = json.loads((run["out"] / "trainer_state.json").read_text())["log_history"]
    train_logs = [h for h in history if "loss" in h]
    eval_logs = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in train_logs] == [2, 4, 6, 8]
    assert [h["step"] for h in eval_logs][:4] == [0, 3, 6, 9]  # step 0: the evaluation before training
    for log in train_logs:
        for key in METRICS + ["loss", "grad_norm", "learning_rate", "tokens_per_second"]:
            assert key in log, key
        assert 0 <= log["rewards/accuracies"] <= 1 and log["tokens_per_second"] > 0
    for log in eval_logs:
        for key in METRICS:
            assert f"eval_{key}" in log, key
    eval_results = json.loads((run["out"] / "eval_results.json").read_text())
    assert "eval_rewards/accuracies" in eval_results


def test_accuracy_before_is_a_tie_and_training_moves_the_margin(run):
    metrics = run["metrics"]
    assert metrics["before_eval_rewards/accuracies"] == 0.5  # policy == reference: every pair is a tie
    assert metrics["before_eval_rewards/margins"] == 0.0
    assert metrics["eval_rewards/margins"] > 0 and metrics["eval_rewards/accuracies"] > 0.5
    assert 0 <= metrics["eval_ranking/accuracies"] <= 1


def test_tensorboard_events_written(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((run["out"] / "runs").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/rewards/accuracies", "eval/rewards/accuracies", "train/grad_norm"} <= tags
    assert [e.step for e in acc.Scalars("eval/loss")][:2] == [0, 3]  # the evaluation before training at step 0
    assert acc.Scalars("eval/rewards/accuracies")[0].value == 0.5  # policy = reference: all ties


def test_plots_written(run):
    for name in ("training_loss.png", "training_rewards_accuracies.png", "training_rewards_margins.png"):
        path = run["out"] / name
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_at_the_right_step(run, tmp_path, capsys):
    resumed = tmp_path / "resumed"
    shutil.copytree(run["out"], resumed)
    for name in ("checkpoint-9", "trainer_state.json"):
        shutil.rmtree(resumed / name) if (resumed / name).is_dir() else (resumed / name).unlink()
    code = cli_main(["train", "--config_file", str(run["config"]), f"output_dir={resumed}", *SMALL,
                     f"resume_from_checkpoint={resumed / 'checkpoint-6'}"])
    assert code == 0
    assert "reused" in capsys.readouterr().out  # the copied reference cache
    original = json.loads((run["out"] / "trainer_state.json").read_text())
    state = json.loads((resumed / "trainer_state.json").read_text())
    assert state["global_step"] == original["global_step"] == 9
    new_train = [h for h in state["log_history"] if "loss" in h and h["step"] > 6]
    assert [h["step"] for h in new_train] == [8]
    old_step8 = next(h for h in original["log_history"] if h.get("step") == 8 and "loss" in h)
    assert new_train[0]["loss"] == pytest.approx(old_step8["loss"], rel=1e-3)


def test_used_output_dir_needs_overwrite(run):
    with pytest.raises(prefloop.errors.ConfigError, match="already holds a training run"):
        prefloop.train(str(run["config"]))


def test_merge_the_trained_adapter(run, tmp_path):
    from transformers import AutoModelForCausalLM

    assert cli_main(["merge", str(run["out"]), "--out", str(tmp_path / "merged")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert model.config.model_type == "qwen2"


@pytest.mark.parametrize("finetuning_type", ["lora", "full"])
def test_cached_reference_trains_exactly_like_the_reference_in_the_step(run, tmp_path, finetuning_type):
    common = dict(fp16=False, gradient_checkpointing=False, val_size=0, eval_strategy="no", report_to="none",
                  sample_prompts=0, max_steps=2, logging_steps=1, gradient_accumulation_steps=1,
                  learning_rate=1e-3, finetuning_type=finetuning_type, save_strategy="no")
    losses = {}
    for precompute in (True, False):
        out = tmp_path / f"{finetuning_type}-{precompute}"
        prefloop.train(str(run["config"]), output_dir=str(out), precompute_ref=precompute, **common)
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        losses[precompute] = [h["loss"] for h in history if "loss" in h]
    assert len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


def test_reference_free_loss_loads_and_caches_no_reference(run, tmp_path, capsys):
    out = tmp_path / "simpo"
    metrics = prefloop.train(str(run["config"]), output_dir=str(out), pref_loss="simpo", fp16=False,
                             gradient_checkpointing=False, report_to="none", sample_prompts=0, max_steps=2,
                             logging_steps=1, gradient_accumulation_steps=1, save_strategy="no")
    assert "reference-free: no reference model is loaded" in capsys.readouterr().out
    assert not (out / "ref_cache").exists()
    assert "eval_rewards/accuracies" in metrics and metrics["train_loss"] > 0


# --- issue 12 item 5: a split that encoding empties ---------------------------------------------------------


def _short_and_long_pairs(tmp_path, long_ids):
    """8 seed-format pairs; those whose index is in `long_ids` have answers that differ only after a
    shared opening far over 64 tokens, so cutting them to cutoff_len 64 makes them identical: dropped."""
    path = tmp_path / "pairs.jsonl"
    with path.open("w") as f:
        for i in range(8):
            opening = "the answer is a long one and it goes on " * (40 if i in long_ids else 0)
            f.write(json.dumps({"id": f"p{i}", "conversations": [{"from": "human", "value": f"What is {i}?"}],
                                "chosen": opening + f"Yes, {i}.", "rejected": opening + "no"}) + "\n")
    return path


def _held_out_ids(data, val_size=2, seed=42):
    from prefloop.data.loader import load_pairs, split_validation

    return [int(p.id[1:]) for p in split_validation(load_pairs(str(data)).pairs, val_size, seed)[1]]


def _small_run(tmp_path, data, **extra):
    return {"model_name_or_path": str(tmp_path.parent / "model"), "dataset": str(data), "output_dir": str(tmp_path / "out"),
            "cutoff_len": 64, "val_size": 2, "eval_strategy": "steps", "eval_steps": 1, "max_steps": 2,
            "per_device_train_batch_size": 2, "logging_steps": 1, "report_to": "none", "save_strategy": "no",
            "sample_prompts": 0, **extra}


def test_validation_emptied_by_encoding_skips_evaluation_with_a_warning(tmp_path, tiny_model_dir, capsys):
    """Input: 8 pairs, val_size 2, eval_strategy steps, cutoff_len 64, both held-out pairs too long.
    Right value: a warning naming the cause and the fix, training runs without evaluation (was a
    transformers ValueError traceback, exit 1)."""
    probe = _short_and_long_pairs(tmp_path, long_ids=())
    data = _short_and_long_pairs(tmp_path, long_ids=_held_out_ids(probe))
    config = _small_run(tmp_path, data, model_name_or_path=str(tiny_model_dir))
    metrics = prefloop.train(config)
    err = capsys.readouterr().err
    assert ("prefloop: warning: validation: encoding dropped all 2 held-out pairs of " in err
            and "at cutoff_len 64; evaluation is skipped (to evaluate: raise cutoff_len" in err)
    assert metrics["train_loss"] > 0 and not any(k.startswith("eval_") for k in metrics)
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2] and not any("eval_loss" in h for h in history)


def test_validation_emptied_with_early_stopping_is_an_error(tmp_path, tiny_model_dir, capsys):
    probe = _short_and_long_pairs(tmp_path, long_ids=())
    data = _short_and_long_pairs(tmp_path, long_ids=_held_out_ids(probe))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_small_run(tmp_path, data, model_name_or_path=str(tiny_model_dir),
                                                early_stopping_patience=2, save_strategy="steps", save_steps=1)))
    assert cli_main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "validation: encoding dropped all 2 held-out pairs" in err and "remove early_stopping_patience" in err
    assert "Traceback" not in err


def test_train_split_emptied_by_encoding_is_an_error_naming_cause_and_fix(tmp_path, tiny_model_dir, capsys):
    data = _short_and_long_pairs(tmp_path, long_ids=range(8))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_small_run(tmp_path, data, model_name_or_path=str(tiny_model_dir), val_size=0,
                                                eval_strategy="no")))
    assert cli_main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{data}: no training pairs are left: encoding dropped all 8 (8 identical after truncation)" in err
    assert "raise cutoff_len (now 64)" in err and "Traceback" not in err
    assert f"(`prefloop data check {data} --tokenizer {tiny_model_dir} --cutoff-len 64` lists them)" in err


def test_the_suggested_data_check_command_reads_the_data_as_the_run_does():
    """The hint omitted --dataset-dir and --template, so run elsewhere it failed or encoded differently."""
    from prefloop.config import Config
    from prefloop.train.run import data_check_command

    cfg = Config(model_name_or_path="/m/tiny", dataset="mine", dataset_dir="/srv/my data", template="chatml",
                 cutoff_len=8, skip_bad_rows=True)
    assert data_check_command(cfg, "mine") == ("prefloop data check mine --dataset-dir '/srv/my data' --tokenizer "
                                               "/m/tiny --template chatml --cutoff-len 8 --skip-bad-rows")
    cfg = Config(model_name_or_path="/m/tiny", dataset="mine", cutoff_len=8)
    assert data_check_command(cfg, "mine") == "prefloop data check mine --tokenizer /m/tiny --cutoff-len 8"


# --- issue 12 item 22: console output -----------------------------------------------------------------------


def test_console_log_has_numbers_no_escape_codes_and_step_zero(tmp_path, tiny_model_dir, capsys):
    """Input: a run whose stdout/stderr go to a log (not a terminal). Right value: each metrics line is a
    dict of numbers ({'loss': 0.6931, ...}, was {'loss': '0.6931'}), no carriage returns or cursor escape
    codes anywhere, and the evaluation before training logged at step 0."""
    import ast
    import math

    data = _short_and_long_pairs(tmp_path, long_ids=())
    prefloop.train(_small_run(tmp_path, data, model_name_or_path=str(tiny_model_dir), sample_prompts=1))
    out, err = capsys.readouterr()
    assert "\x1b[" not in out + err and "\r" not in out + err
    lines = [ast.literal_eval(line) for line in out.splitlines() if line.startswith("{")]
    assert [("eval_loss" in d, "loss" in d) for d in lines][:3] == [(True, False), (False, True), (True, False)]
    for d in lines:
        assert all(isinstance(v, (int, float)) for v in d.values()), d
    assert lines[0]["eval_loss"] == round(math.log(2), 4) and lines[0]["eval_rewards/accuracies"] == 0.5
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert history[0]["step"] == 0 and history[0]["eval_loss"] == pytest.approx(math.log(2), rel=1e-6)


def test_sample_answers_are_not_printed_into_a_live_progress_bar(tmp_path, tiny_model_dir, monkeypatch):
    """On a terminal the evaluation before training draws a progress bar; it must be closed before the
    "Sample answer before training" lines are printed (it stayed open and the lines landed in it)."""
    from tqdm.std import tqdm

    import prefloop.train.console as console
    import prefloop.train.run as run_module

    monkeypatch.setattr(console, "live_bars", lambda: True)
    open_bars = []
    real = run_module.sample_answers

    def spy(model, tokenizer, data, n, when, *args, **kwargs):
        open_bars.append((when, [bar for bar in tqdm._instances if not bar.disable]))
        return real(model, tokenizer, data, n, when, *args, **kwargs)

    monkeypatch.setattr(run_module, "sample_answers", spy)
    data = _short_and_long_pairs(tmp_path, long_ids=())
    prefloop.train(_small_run(tmp_path, data, model_name_or_path=str(tiny_model_dir), sample_prompts=1))
    assert [when for when, _ in open_bars] == ["before", "after"]
    assert all(bars == [] for _, bars in open_bars), open_bars


def test_data_check_errors_say_data_check(tmp_path, capsys):
    assert cli_main(["data", "check", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("prefloop data check: error: ")


# --- issue 12 item 23: a real model card ------------------------------------------------------------------


def test_the_saved_adapter_has_a_real_model_card(run, tiny_model_dir):
    """Right value: README.md names the base (absolute path + fingerprint), the data file with its sha256
    and counts (21 pairs: 18 train, 3 validation), the config, the before/after evaluation numbers the run
    returned, and the prefloop version; not PEFT's blank template."""
    import hashlib

    from prefloop.adapters import base_fingerprint

    card = (run["out"] / "README.md").read_text()
    metrics = run["metrics"]
    assert "More Information Needed" not in card
    assert card.startswith(f"---\nbase_model: {Path(tiny_model_dir).resolve()}\nlibrary_name: peft\n")
    assert f"`{base_fingerprint(str(tiny_model_dir))}`" in card
    assert f"`{hashlib.sha256(run['data'].read_bytes()).hexdigest()}`" in card
    assert "21 pairs loaded (0 bad rows skipped); train split 18 pairs, 18 kept" in card
    assert "validation split 3 pairs, 3 kept" in card
    assert "| `learning_rate` | `0.005` |" in card and "| `lora_alpha` | `32` |" in card
    row = f"| held-out preference accuracy (implicit reward, ties 0.5) | 0.500 | {metrics['eval_rewards/accuracies']:.3f} |"
    assert row in card
    assert f"| eval loss | 0.6931 | {metrics['eval_loss']:.4f} |" in card
    assert (f"| mean length of greedy answers to probe prompts (tokens) | {metrics['before_eval_sampled_length']:.1f} | "
            f"{metrics['eval_sampled_length']:.1f} |") in card
    assert f"prefloop {prefloop.__version__}" in card


# --- issue 12 item 13: the sampled-answer-length monitor is fed during training -----------------------------


def test_every_evaluation_logs_the_sampled_answer_length(tmp_path, tiny_model_dir):
    """Right value: each evaluation (step 0, 1, 2) logs eval_sampled_length, the mean length in tokens of the
    greedy answers to 2 validation prompts: a number in [1, 128]; with length_probe_prompts 0, none."""
    data = _short_and_long_pairs(tmp_path, long_ids=())
    prefloop.train(_small_run(tmp_path, data, model_name_or_path=str(tiny_model_dir), length_probe_prompts=2))
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [0, 1, 2]
    assert all(1 <= h["eval_sampled_length"] <= 128 for h in evals)
    prefloop.train(_small_run(tmp_path, data, model_name_or_path=str(tiny_model_dir), length_probe_prompts=0,
                              output_dir=str(tmp_path / "off")))
    history = json.loads((tmp_path / "off" / "trainer_state.json").read_text())["log_history"]
    assert not any("eval_sampled_length" in h for h in history)


# --- where a run's time goes: the Time line and the time/<stage>_s keys --------------------------------------


def test_time_per_stage_is_printed_and_saved_with_the_results(tmp_path, tiny_model_dir, capsys):
    """Right value: the summary ends with one `Time: ... (total X s)` line; train_results.json and
    all_results.json (and the returned metrics) hold time/<stage>_s for each stage that ran, each >= 0,
    whose sum is at most time/total_s; the other results are still there."""
    import re

    data = _short_and_long_pairs(tmp_path, long_ids=())
    metrics = prefloop.train(_small_run(tmp_path, data, model_name_or_path=str(tiny_model_dir), sample_prompts=1,
                                        plot_loss=True, gradient_checkpointing="auto"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("Time: ") and re.search(r"\(total \d+\.\d s\)$", lines[-1]), lines[-1]
    assert lines[-2].startswith("Saved the LoRA adapter") and "train " in lines[-1]
    stages = ("setup", "data", "model", "reference", "memory_plan", "trainer", "eval_before", "samples", "train",
              "save", "eval_after", "outputs")
    out = tmp_path / "out"
    for name in ("train_results.json", "all_results.json"):
        saved = json.loads((out / name).read_text())
        assert saved["train_loss"] == metrics["train_loss"], name
        times = {k: v for k, v in saved.items() if k.startswith("time/")}
        assert set(times) == {f"time/{s}_s" for s in stages} | {"time/total_s"}, name
        assert all(v >= 0 for v in times.values()), times
        assert sum(v for k, v in times.items() if k != "time/total_s") <= times["time/total_s"], times
        assert {k: metrics[k] for k in times} == times
    assert "eval_loss" in json.loads((out / "all_results.json").read_text())
    assert not any(k.startswith("time/") for k in json.loads((out / "eval_results.json").read_text()))


def test_stopwatch_adds_up_repeated_stages_and_folds_short_ones():
    import time

    from prefloop.train.timing import Stopwatch

    watch = Stopwatch()
    for _ in range(2):
        with watch.stage("samples"):
            time.sleep(0.06)
    with watch.stage("memory_plan"):
        time.sleep(0.1)
    with watch.stage("save"):
        pass
    assert watch.seconds["samples"] >= 0.12 and list(watch.seconds) == ["samples", "memory_plan", "save"]
    metrics = watch.metrics(total=1.0)
    assert metrics["time/total_s"] == 1.0 and metrics["time/save_s"] < 0.05
    line = watch.line(total=1.0)
    assert re.fullmatch(r"Time: samples 0\.1 s, memory plan 0\.1 s, other 0\.\d s \(total 1\.0 s\)", line), line


# --- audit: peers' reports on runs, resume, output_dir, dropout, precision ---------------------------------------


def _numbered_pairs(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "conversations": [{"from": "human", "value": f"What is {i}?"}],
                                "chosen": f"It is {i}, certainly.", "rejected": "no"}) + "\n")
    return path


def _quick(model, data, out, **extra):
    return {"model_name_or_path": str(model), "dataset": str(data), "output_dir": str(out), "template": "chatml",
            "per_device_train_batch_size": 2, "logging_steps": 1, "report_to": "none", "sample_prompts": 0,
            "learning_rate": 1e-3, "cutoff_len": 256, "save_strategy": "no", "length_probe_prompts": 0, **extra}


def _train_losses(out: Path) -> list[tuple[int, float]]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


def test_resume_mid_epoch_sees_every_pair_once_in_order_and_a_second_run_is_identical(tmp_path, tiny_model_dir,
                                                                                      monkeypatch):
    """transformers/TRL reports: a resumed run skipped or repeated batches (gradient accumulation, mid-epoch
    checkpoints), or lost the optimizer/scheduler/RNG state. Input: 13 pairs, batch 2, accumulation 2, 2 epochs
    (8 steps, the 4th of each epoch one micro-batch), checkpoints every 3 steps, resumed from checkpoint-3 (mid
    epoch 1) and checkpoint-6 (mid epoch 2). Right value: after the checkpoint the same pairs in the same
    micro-batches and the same losses as the uninterrupted run, bit for bit; and the same config and seed run
    twice gives the same losses (data order and LoRA initialisation seeded)."""
    from prefloop.train.trainer import PreferenceTrainer

    seen = []
    original = PreferenceTrainer.pair_loss

    def recording(self, model, inputs, mode):
        ids = list(inputs.get("pair_ids") or [])
        loss = original(self, model, inputs, mode)
        if mode == "train":
            seen.append((self.state.global_step, ids))
        return loss

    monkeypatch.setattr(PreferenceTrainer, "pair_loss", recording)
    data = _numbered_pairs(tmp_path / "pairs.jsonl", 13)
    common = dict(gradient_accumulation_steps=2, num_train_epochs=2.0, save_strategy="steps", save_steps=3)
    prefloop.train(_quick(tiny_model_dir, data, tmp_path / "a", **common))
    full, losses = list(seen), _train_losses(tmp_path / "a")
    assert len(losses) == 8 and sorted(i for _, ids in full[:7] for i in ids) == sorted(f"p{i}" for i in range(13))
    seen.clear()
    prefloop.train(_quick(tiny_model_dir, data, tmp_path / "again", **common))
    assert seen == full and _train_losses(tmp_path / "again") == losses
    for step in (3, 6):
        resumed = tmp_path / f"resumed-{step}"
        shutil.copytree(tmp_path / "a", resumed)
        for later in resumed.glob("checkpoint-*"):
            if int(later.name.split("-")[1]) > step:
                shutil.rmtree(later)
        seen.clear()
        prefloop.train(_quick(tiny_model_dir, data, resumed, resume_from_checkpoint=True, **common))
        assert seen == [s for s in full if s[0] >= step]
        assert _train_losses(resumed) == losses


def test_overwrite_output_dir_removes_the_previous_run(tmp_path, tiny_model_dir, capsys):
    """A previous run's checkpoint-100 left in output_dir by an overwriting run was what `resume_from_checkpoint:
    true` continued and what save_total_limit rotation kept; its adapter files stayed beside a new full model.
    Right value: overwrite_output_dir removes the old run's outputs first (the reference cache stays)."""
    out = tmp_path / "out"
    (out / "checkpoint-100").mkdir(parents=True)
    data = _numbered_pairs(out / "pairs.jsonl", 6)  # the user's dataset kept in output_dir: an input, kept
    (out / "checkpoint-100" / "trainer_state.json").write_text("{}")
    for name in ("adapter_config.json", "adapter_model.safetensors", "trainer_state.json", "health.jsonl",
                 "prefloop_config.yaml"):  # prefloop_config.yaml: the previous run was prefloop's
        (out / name).write_text("{}")
    (out / "ref_cache").mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "checkpoint-notes.md").write_text("mine too")
    with pytest.raises(prefloop.errors.ConfigError, match="already holds a training run"):
        prefloop.train(_quick(tiny_model_dir, data, out, finetuning_type="full", max_steps=2))
    prefloop.train(_quick(tiny_model_dir, data, out, finetuning_type="full", max_steps=2, save_strategy="steps",
                          save_steps=1, save_total_limit=1, overwrite_output_dir=True))
    assert "removed the previous run's checkpoint-100, adapter_config.json" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("checkpoint-[0-9]*")) == ["checkpoint-2"]
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    assert (out / "notes.txt").read_text() == "mine" and (out / "ref_cache").is_dir()
    assert (out / "checkpoint-notes.md").read_text() == "mine too" and data.is_file()


def _outputs_of_a_prefloop_run(out: Path, marker: bool = True) -> None:
    (out / "checkpoint-2").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "trainer_state.json"):
        (out / "checkpoint-2" / name).write_text("{}")
    (out / "trainer_state.json").write_text("{}")
    (out / "samples.jsonl").write_text('{"prompt": "p"}\n')
    (out / "checkpoint-notes.md").write_text("mine")
    if marker:
        (out / "prefloop_config.yaml").write_text("output_dir: out\n")


def test_overwrite_output_dir_refuses_to_remove_an_input(tmp_path, monkeypatch):
    """Reviewer's case: model_name_or_path out/checkpoint-2, output_dir out, overwrite_output_dir: true removed the
    model, the dataset samples.jsonl, trainer_state.json and checkpoint-notes.md. Right value: a ConfigError that
    names the key and the path, and nothing removed; likewise for a dataset the run would remove."""
    from prefloop.config import Config
    from prefloop.train.run import check_output_dir

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    _outputs_of_a_prefloop_run(out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    cfg = Config(model_name_or_path="out/checkpoint-2", output_dir="out", overwrite_output_dir=True,
                 finetuning_type="full")
    with pytest.raises(prefloop.errors.ConfigError, match=r"model_name_or_path out/checkpoint-2"):
        check_output_dir(cfg)
    cfg = Config(model_name_or_path=str(tmp_path / "elsewhere"), dataset="out/samples.jsonl", output_dir="out",
                 overwrite_output_dir=True, finetuning_type="full")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(prefloop.errors.ConfigError, match=r"dataset out/samples.jsonl"):
        check_output_dir(cfg)
    (out / "checkpoint-2" / "ds.json").write_text("{}")
    before.append("checkpoint-2/ds.json")
    for key, value in (("deepspeed", "out/checkpoint-2/ds.json"), ("modpo_margin_models", ["out/checkpoint-2"]),
                       ("ref_model", "out/checkpoint-2"), ("adapter_name_or_path", "out/checkpoint-2")):
        with pytest.raises(prefloop.errors.ConfigError, match=rf"would remove .*checkpoint-2.*{key}"):
            check_output_dir(dataclasses.replace(cfg, dataset=None, **{key: value}))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == sorted(before)


def test_overwrite_output_dir_removes_nothing_without_the_prefloop_marker(tmp_path, monkeypatch, capsys):
    """A directory prefloop did not write (no prefloop_config.yaml): like transformers and LLaMA-Factory,
    overwrite_output_dir only allows training there; nothing is removed. With the marker, only the run's own
    outputs go: checkpoint-<digits>, trainer_state.json, samples.jsonl; checkpoint-notes.md stays."""
    from prefloop.config import Config
    from prefloop.train.run import check_output_dir, replace_previous_run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    out = tmp_path / "out"
    _outputs_of_a_prefloop_run(out, marker=False)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    cfg = Config(model_name_or_path="model", output_dir="out", overwrite_output_dir=True, finetuning_type="full")
    check_output_dir(cfg)
    assert "nothing is removed" in capsys.readouterr().err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    (out / "prefloop_config.yaml").write_text("output_dir: out\n")
    doomed = check_output_dir(cfg)  # found, removed only when training starts
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == sorted(before + ["prefloop_config.yaml"])
    replace_previous_run(cfg, doomed)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-notes.md", "prefloop_config.yaml"]


def test_output_dir_that_is_the_model_and_a_resume_path_that_is_no_checkpoint(tmp_path, tiny_model_dir):
    import shutil as sh

    data = _numbered_pairs(tmp_path / "pairs.jsonl", 4)
    model = tmp_path / "model"
    sh.copytree(tiny_model_dir, model)
    with pytest.raises(prefloop.errors.ConfigError, match="is the model_name_or_path this run loads"):
        prefloop.train(_quick(model, data, model, overwrite_output_dir=True, max_steps=1))
    (tmp_path / "out" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-4" / "trainer_state.json").write_text("{}")
    with pytest.raises(prefloop.errors.ConfigError, match="is not a checkpoint .*it holds checkpoint-4"):
        prefloop.train(_quick(model, data, tmp_path / "out", resume_from_checkpoint=str(tmp_path / "out"), max_steps=1))


def test_the_saved_tokenizer_carries_the_training_template(run):
    """The seed config trains with `template: qwen`; the saved tokenizer kept the model's own template, so the
    served or merged model was prompted another way than it was trained (LLaMA-Factory saves it)."""
    from prefloop.data.template import get_template
    from prefloop.models import load_tokenizer

    qwen = get_template("qwen", load_tokenizer(str(run["out"]))).source
    assert load_tokenizer(str(run["out"])).chat_template == qwen
    assert load_tokenizer(str(run["out"] / "checkpoint-3")).chat_template == qwen


def test_continuing_an_sft_adapter_starts_as_a_tie(tmp_path, tiny_model_dir, capsys):
    """LLaMA-Factory 8459/8974: DPO on an SFT LoRA adapter compared the policy with the bare base (loss far from
    ln 2 at step 1, or 0). Right value: the first step's loss is ln 2, whether the adapter is given as
    adapter_name_or_path or as model_name_or_path."""
    import math

    data = _numbered_pairs(tmp_path / "pairs.jsonl", 6)
    prefloop.train(_quick(tiny_model_dir, data, tmp_path / "sft", max_steps=3, learning_rate=5e-2))
    for name, extra in (("continue", {"adapter_name_or_path": str(tmp_path / "sft")}),
                        ("as-model", {"model_name_or_path": str(tmp_path / "sft")})):
        prefloop.train(_quick(tiny_model_dir, data, tmp_path / name, max_steps=1, **extra))
        assert _train_losses(tmp_path / name)[0][1] == pytest.approx(math.log(2), abs=1e-6), name
    assert "is a LoRA adapter: training continues it on its base" in capsys.readouterr().err


@pytest.mark.parametrize("disable", [True, False])
def test_dropout_is_off_by_default_so_the_first_step_ties(tmp_path, tiny_tokenizer, disable, capsys):
    """TRL's and LLaMA-Factory's DPO disable dropout (disable_dropout=True): with attention dropout on, the
    policy's log-probs differ from the reference's (computed in eval mode) before any update."""
    import math

    from prefloop.testing import build_tiny_model

    model = build_tiny_model(tiny_tokenizer)
    model.config.attention_dropout = 0.3
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    data = _numbered_pairs(tmp_path / "pairs.jsonl", 4)
    prefloop.train(_quick(tmp_path / "model", data, tmp_path / "out", max_steps=1, disable_dropout=disable,
                          per_device_train_batch_size=4))
    first = _train_losses(tmp_path / "out")[0][1]
    assert (first == pytest.approx(math.log(2), abs=1e-6)) is disable
    assert ("Dropout: " in capsys.readouterr().out)


def test_pure_bf16_trains_bf16_weights(tmp_path, tiny_model_dir):
    """LLaMA-Factory's pure_bf16: the weights themselves in bf16 (no fp32 copy, no autocast)."""
    from safetensors import safe_open

    data = _numbered_pairs(tmp_path / "pairs.jsonl", 4)
    metrics = prefloop.train(_quick(tiny_model_dir, data, tmp_path / "out", max_steps=2, finetuning_type="full",
                                    pure_bf16=True))
    assert math.isfinite(metrics["train_loss"])
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


def test_with_dropout_kept_the_in_step_reference_equals_the_cached_one(tmp_path, tiny_tokenizer):
    """disable_dropout: false on a model with dropout: the reference in the step (the policy with its adapters
    disabled) ran in train mode, with dropout, unlike the cached reference (TRL's reported bug). Right value:
    the same losses with the reference cached or computed in the step."""
    from prefloop.testing import build_tiny_model

    model = build_tiny_model(tiny_tokenizer)
    model.config.attention_dropout = 0.3
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    data = _numbered_pairs(tmp_path / "pairs.jsonl", 6)
    losses = {}
    for precompute in (True, False):
        out = tmp_path / f"precompute-{precompute}"
        prefloop.train(_quick(tmp_path / "model", data, out, max_steps=3, disable_dropout=False,
                              precompute_ref=precompute))
        losses[precompute] = [loss for _, loss in _train_losses(out)]
    assert losses[True] == pytest.approx(losses[False], abs=1e-6)


@pytest.mark.parametrize("finetuning_type", ["lora", "full"])
def test_a_tied_embedding_model_saves_checkpoints_resumes_and_reloads_tied(tmp_path, tiny_tokenizer, finetuning_type):
    """Tied lm_head/embed_tokens (Qwen2.5-0.5B, Llama-3.2, SmolLM2): saving raised safetensors' shared-tensor
    error in peers' runs, and PEFT's `save_embedding_layers="auto"` can put whole embeddings into an adapter.
    Right value: checkpoints and the final save work, a resume continues, the adapter holds LoRA weights only,
    a full model reloads with the tie."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from prefloop.testing import build_tiny_model

    model = build_tiny_model(tiny_tokenizer)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    data = _numbered_pairs(tmp_path / "pairs.jsonl", 8)
    run_cfg = _quick(tmp_path / "model", data, tmp_path / "out", max_steps=4, save_strategy="steps", save_steps=2,
                     finetuning_type=finetuning_type)
    prefloop.train(run_cfg)
    shutil.rmtree(tmp_path / "out" / "checkpoint-4")
    prefloop.train({**run_cfg, "resume_from_checkpoint": True})
    assert _train_losses(tmp_path / "out")[-1][0] == 4
    if finetuning_type == "lora":
        with safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "pt") as f:
            assert all("lora_" in k for k in f.keys())
    else:
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
        assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight


def test_resume_true_skips_a_checkpoint_cut_short_while_saving(tmp_path, tiny_model_dir, capsys):
    """transformers' get_last_checkpoint returns the highest checkpoint-N even when a crash cut its save short
    (no trainer_state.json), and the resume then fails. Right value: the latest complete checkpoint, with a
    note; a relative `checkpoint-N` is looked up in output_dir; the text "true" means true."""
    data = _numbered_pairs(tmp_path / "pairs.jsonl", 8)
    run_cfg = _quick(tiny_model_dir, data, tmp_path / "out", max_steps=4, save_strategy="steps", save_steps=2)
    prefloop.train(run_cfg)
    losses = _train_losses(tmp_path / "out")
    shutil.rmtree(tmp_path / "out" / "checkpoint-4")
    (tmp_path / "out" / "checkpoint-6").mkdir()  # a save cut short
    (tmp_path / "out" / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"")
    prefloop.train({**run_cfg, "resume_from_checkpoint": "true"})
    assert "skipped checkpoint-6 (cut short while saving" in capsys.readouterr().out
    assert _train_losses(tmp_path / "out") == losses
    shutil.rmtree(tmp_path / "out" / "checkpoint-4")
    prefloop.train({**run_cfg, "resume_from_checkpoint": "checkpoint-2"})
    assert _train_losses(tmp_path / "out") == losses


def test_save_total_limit_keeps_the_best_checkpoint(tmp_path, tiny_model_dir):
    """transformers reports: rotation with save_total_limit deleted the best checkpoint. Input: 12 pairs (4 held
    out), lr 0.05 so the held-out loss is best at step 1 and worse after, a checkpoint and an evaluation every
    step, save_total_limit 1, early stopping (which tracks the best model). Right value: the best checkpoint
    is kept (during training the latest too, for resuming) and output_dir holds the best model's adapter."""
    from safetensors.torch import load_file

    data = _numbered_pairs(tmp_path / "pairs.jsonl", 12)
    prefloop.train(_quick(tiny_model_dir, data, tmp_path / "out", max_steps=6, learning_rate=0.05, val_size=4,
                          eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1, save_total_limit=1,
                          early_stopping_patience=10))
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    evals = {h["step"]: h["eval_loss"] for h in state["log_history"] if "eval_loss" in h and h["step"] > 0}
    best_step = min(evals, key=evals.get)
    assert best_step < max(evals), evals  # else keeping the best is keeping the latest: nothing tested
    assert Path(state["best_model_checkpoint"]).name == f"checkpoint-{best_step}"
    assert (tmp_path / "out" / f"checkpoint-{best_step}").is_dir()
    final = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    best = load_file(str(tmp_path / "out" / f"checkpoint-{best_step}" / "adapter_model.safetensors"))
    assert all(torch.equal(final[k], best[k]) for k in best)


def test_token_ids_beyond_the_embeddings_are_a_clear_error(tmp_path, tiny_tokenizer):
    """A tokenizer with tokens added after the model (peers resize or fail with an index error in the forward
    pass). Right value: a DataError before training that names the sizes and says what to do."""
    from prefloop.testing import build_tiny_model

    build_tiny_model(tiny_tokenizer, vocab_size=len(tiny_tokenizer) - 40).save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    data = _numbered_pairs(tmp_path / "pairs.jsonl", 4)
    with pytest.raises(prefloop.errors.DataError, match=r"has embeddings for \d+ tokens: its tokenizer has tokens"):
        prefloop.train(_quick(tmp_path / "model", data, tmp_path / "out", max_steps=1))


# --- new user: resuming a finished run, the encoding-drop hint, skipped rows' lines ---------------------------


def test_resuming_a_finished_run_is_refused_before_any_model_loads(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """A finished run resumed (`resume_from_checkpoint=true`) trained one more step each time (checkpoint-3 of
    max_steps 2, LR schedule restarted, train_loss replaced). Right value: exit 2 naming the step and the fix,
    nothing trained; an epoch-based run counts as finished at the max_steps it recorded; raising max_steps
    resumes, saying from where."""
    data = _numbered_pairs(tmp_path / "pairs.jsonl", 4)
    out = tmp_path / "out"
    run_cfg = _quick(tiny_model_dir, data, out, num_train_epochs=1, save_strategy="steps", save_steps=1)
    prefloop.train(run_cfg)  # 4 pairs, batch 2, one epoch: 2 steps
    state = (out / "trainer_state.json").read_text()
    results = (out / "train_results.json").read_text()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(run_cfg))
    import prefloop.models as models

    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("a model loaded"))
    capsys.readouterr()
    for extra in ([], ["max_steps=2"]):
        assert cli_main(["train", str(config), "resume_from_checkpoint=true", *extra]) == 2
        err = capsys.readouterr().err
        assert (f"output_dir {out}: the run is already complete at step 2 of 2 (checkpoint-2); raise max_steps / "
                "num_train_epochs to train further, or overwrite_output_dir: true to train again") in err, err
        assert "Traceback" not in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (out / "trainer_state.json").read_text() == state and (out / "train_results.json").read_text() == results
    monkeypatch.undo()
    prefloop.train({**run_cfg, "max_steps": 3, "resume_from_checkpoint": True})
    assert "Resuming from checkpoint-2 (step 2 of 3)" in capsys.readouterr().out
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3


def test_skipped_bad_rows_are_listed_with_file_and_line(tmp_path, tiny_model_dir, capsys):
    """`skip_bad_rows: true` printed "1x malformed JSON at column N: ..." with no file or line (and a literal
    "column N"). Right value: the first skipped rows as file:line, as `data check --skip-bad-rows` gives them."""
    data = _numbered_pairs(tmp_path / "pairs.jsonl", 4)
    with data.open("a") as f:
        f.write('{"conversations": [oops\n')
    prefloop.train(_quick(tiny_model_dir, data, tmp_path / "out", skip_bad_rows=True, max_steps=1))
    out = capsys.readouterr().out
    assert "skipped 1 bad row:" in out
    assert re.search(rf"^    {re.escape(str(data))}:5: malformed JSON at column \d+", out, re.M), out
