"""Training-health monitors: each fires on a constructed run that has the problem and stays quiet
on a healthy one; warnings reach health.jsonl and TensorBoard; a NaN step is skipped in a real
transformers.Trainer run and max_bad_steps stops it."""

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

from prefloop.train.health import (
    HEALTH_FILE,
    DegradationMonitor,
    HealthCallback,
    HealthLog,
    HealthWarning,
    LengthBiasMonitor,
    NonFiniteGuard,
    SampledLengthMonitor,
    SpikeMonitor,
    TrainingDiverged,
    check_settings,
    early_stopping_callback,
    gradients_finite,
    guard_optimizer_step,
    install_health,
    sampled_answer_lengths,
)


def healthy_losses(n=60, seed=0):
    """A DPO-like loss: ln 2 falling towards 0.3 with batch noise."""
    rng = random.Random(seed)
    return [0.3 + (math.log(2) - 0.3) * math.exp(-i / 15) + rng.uniform(-0.08, 0.08) for i in range(n)]


# --- NaN / Inf ------------------------------------------------------------------------------------


def test_guard_skips_a_nan_step_with_pair_ids_and_resets_after_a_good_step():
    guard = NonFiniteGuard(max_bad_steps=3)
    assert not guard.observe_batch(torch.tensor(0.7), ["a", "b"])
    assert guard.end_step(1) is None
    assert guard.observe_batch(torch.tensor(float("nan")), ["c", "d"])
    warning = guard.end_step(2)
    assert warning.kind == "nonfinite" and warning.data["pair_ids"] == ["c", "d"]
    assert "c, d" in warning.message and "learning rate" in warning.message
    guard.observe_batch(0.5, ["e"])
    assert guard.end_step(3) is None and guard.consecutive == 0
    guard.observe_batch(0.5, ["f", "g"])
    warning = guard.end_step(4, gradients_finite=False)  # finite loss, infinite gradients: the step's pairs
    assert warning.data == {"what": "gradients", "pair_ids": ["f", "g"], "consecutive": 1}
    assert guard.skipped_steps == [2, 4]


def test_guard_stops_after_max_bad_steps_in_a_row_naming_causes():
    guard = NonFiniteGuard(max_bad_steps=3)
    for step in (1, 2):
        guard.observe_batch(float("inf"), [f"p{step}"])
        assert guard.end_step(step) is not None
    guard.observe_batch(float("nan"), ["p3"])
    with pytest.raises(TrainingDiverged) as err:
        guard.end_step(3)
    text = str(err.value)
    assert "3 optimizer steps in a row" in text and "p1" in text and "p3" in text
    assert "learning rate" in text and "fp16" in text and "empty" in text


def test_guard_optimizer_step_clears_gradients_so_adam_leaves_weights_untouched():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.1)
    guard = NonFiniteGuard(3)
    layer(torch.randn(4, 3)).sum().backward()
    assert gradients_finite(layer.parameters()) and not guard_optimizer_step(guard, layer, 1)
    opt.step()  # a good step, so Adam has momentum that would move the weights on its own
    before = [p.detach().clone() for p in layer.parameters()]
    opt.zero_grad()
    (layer(torch.randn(4, 3)).sum() * float("nan")).backward()
    assert not gradients_finite(layer.parameters())
    assert guard_optimizer_step(guard, layer, 2)
    assert all(p.grad is None for p in layer.parameters())
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))


# --- spikes ---------------------------------------------------------------------------------------


def test_loss_spike_fires_when_a_learning_rate_blows_up():
    losses = healthy_losses(30) + [0.5 * 2 ** k for k in range(1, 8)]  # loss explodes at step 30
    monitor = SpikeMonitor("loss", factor=3.0)
    warnings = [w for i, v in enumerate(losses) if (w := monitor.update(i, v))]
    assert warnings and warnings[0].kind == "loss_spike"
    assert 30 <= warnings[0].step <= 33
    assert "learning_rate" in warnings[0].message and "max_grad_norm: 0.5" in warnings[0].message


def test_loss_spike_quiet_on_healthy_run_and_on_late_bounce_below_start():
    monitor = SpikeMonitor("loss", factor=3.0)
    assert not [w for i, v in enumerate(healthy_losses(200, seed=1)) if monitor.update(i, v)]
    monitor = SpikeMonitor("loss", factor=3.0)
    late = [0.69, 0.6, 0.4, 0.2, 0.1, 0.05, 0.04, 0.05, 0.04, 0.35]  # 8x the median but below the start
    assert not [w for i, v in enumerate(late) if monitor.update(i, v)]


def test_grad_norm_spike():
    rng = random.Random(2)
    norms = [2.0 + rng.uniform(-0.5, 0.5) for _ in range(40)]
    monitor = SpikeMonitor("grad_norm", factor=5.0, above_start=False)
    assert not [w for i, v in enumerate(norms) if monitor.update(i, v)]
    warning = monitor.update(40, 50.0)
    assert warning.kind == "grad_norm_spike" and warning.data["factor"] > 20
    assert monitor.update(41, 60.0) is None  # cooldown: one warning, not one per step
    assert monitor.update(42, float("nan")) is None


# --- degradation ----------------------------------------------------------------------------------


def test_degradation_fires_when_chosen_falls_while_margins_rise():
    monitor = DegradationMonitor(window=8)
    fired = [w for s in range(20) if (w := monitor.update(s, -80.0 - 3 * s, 0.2 * s))]
    assert len(fired) == 1 and fired[0].kind == "degradation"
    assert "pref_ftx" in fired[0].message and "fewer epochs" in fired[0].message


def test_degradation_quiet_when_chosen_rises_or_wobbles():
    monitor = DegradationMonitor(window=8)
    assert not [w for s in range(20) if monitor.update(s, -80.0 + 0.5 * s, 0.2 * s)]
    rng = random.Random(3)
    monitor = DegradationMonitor(window=8)
    assert not [w for s in range(30) if monitor.update(s, -80.0 + rng.uniform(-2, 2), 0.2 * s)]
    monitor = DegradationMonitor(window=8)  # steady but tiny fall (0.1% of |start|)
    assert not [w for s in range(20) if monitor.update(s, -80.0 - 0.004 * s, 0.2 * s)]


# --- length -----------------------------------------------------------------------------------


def test_length_bias_fires_when_chosen_is_longer_and_margins_track_length():
    rng = random.Random(4)
    monitor = LengthBiasMonitor(threshold=0.6, min_pairs=32)
    fired = []
    for step in range(20):
        diffs = [rng.randint(5, 60) for _ in range(4)]  # chosen always longer
        margins = [0.02 * d + rng.gauss(0, 0.1) for d in diffs]
        if w := monitor.update(step, margins, diffs):
            fired.append(w)
    assert len(fired) == 1 and fired[0].data["chosen_longer_fraction"] == 1.0
    assert fired[0].data["correlation"] > 0.6 and "ld_alpha" in fired[0].message


def test_length_bias_quiet_when_margins_ignore_length():
    rng = random.Random(5)
    monitor = LengthBiasMonitor(threshold=0.6, min_pairs=32)
    for step in range(30):
        diffs = [rng.randint(5, 60) for _ in range(4)]
        assert monitor.update(step, [rng.gauss(0.5, 0.3) for _ in diffs], diffs) is None
    # at the first steps margins are all exactly 0 (policy == reference): no correlation, no warning
    assert LengthBiasMonitor(min_pairs=4).update(0, [0.0] * 8, list(range(8))) is None


def test_sampled_length_growth():
    monitor = SampledLengthMonitor(max_growth=1.5)
    assert monitor.update(0, 40.0) is None and monitor.update(10, 52.0) is None
    warning = monitor.update(20, 75.0)
    assert warning.kind == "sampled_length" and warning.data["baseline"] == 40.0
    quiet = SampledLengthMonitor(max_growth=1.5)
    assert [quiet.update(s, 40.0 + s % 3) for s in range(10)] == [None] * 10


def test_sampled_answer_lengths_on_a_tiny_model(tiny_tokenizer):
    from prefloop.testing import build_tiny_model

    model = build_tiny_model(tiny_tokenizer).train()
    lengths = sampled_answer_lengths(model, tiny_tokenizer, ["hello there", "what is two plus two"], max_new_tokens=6)
    assert len(lengths) == 2 and all(1 <= n <= 6 for n in lengths)
    assert model.training  # mode restored


# --- settings, log sinks ------------------------------------------------------------------------------


def settings(**kw):
    base = dict(learning_rate=5e-6, finetuning_type="full", pref_beta=0.1, num_train_epochs=2, pref_loss="sigmoid",
                max_steps=-1)
    base.update(kw)
    return SimpleNamespace(**base)


def test_settings_that_usually_go_wrong():
    assert check_settings(settings()) == []
    assert check_settings(settings(finetuning_type="lora", learning_rate=1e-4)) == []
    keys = lambda ws: [w.data["key"] for w in ws]  # noqa: E731
    assert keys(check_settings(settings(learning_rate=2e-5))) == ["learning_rate"]
    assert keys(check_settings(settings(finetuning_type="lora", learning_rate=1e-3))) == ["learning_rate"]
    assert keys(check_settings(settings(pref_beta=0.005))) == ["pref_beta"]
    assert keys(check_settings(settings(pref_beta=2.0))) == ["pref_beta"]
    assert check_settings(settings(pref_beta=2.0, pref_loss="simpo")) == []  # SimPO's beta is 2-10
    assert keys(check_settings(settings(num_train_epochs=5))) == ["num_train_epochs"]


def test_health_log_writes_jsonl_and_tensorboard_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "runs"))
    sink = HealthLog(tmp_path / "out", tb_writer=writer)
    sink.emit(HealthWarning("loss_spike", 7, "loss spiked", {"value": 9.0}))
    sink.emit(None)
    sink.emit(HealthWarning("degradation", 9, "both less likely"))
    writer.close()
    lines = [json.loads(x) for x in (tmp_path / "out" / HEALTH_FILE).read_text().splitlines()]
    assert [(x["kind"], x["step"], x["message"]) for x in lines] == [("loss_spike", 7, "loss spiked"),
                                                                      ("degradation", 9, "both less likely")]
    assert lines[0]["value"] == 9.0
    events = EventAccumulator(str(tmp_path / "runs"), size_guidance={"tensors": 0}).Reload()
    assert {"health/loss_spike/text_summary", "health/degradation/text_summary"} <= set(events.Tags()["tensors"])


def test_early_stopping_callback_from_config():
    assert early_stopping_callback(SimpleNamespace(early_stopping_patience=None)) is None
    cb = early_stopping_callback(SimpleNamespace(early_stopping_patience=2),
                                 SimpleNamespace(eval_strategy="steps", metric_for_best_model="eval_loss"))
    assert cb.early_stopping_patience == 2
    from prefloop.errors import ConfigError
    with pytest.raises(ConfigError, match="needs evaluation"):
        early_stopping_callback(SimpleNamespace(early_stopping_patience=2),
                                SimpleNamespace(eval_strategy="no", metric_for_best_model=None))


# --- end to end in a real transformers.Trainer -------------------------------------------------------


class _Rows(torch.utils.data.Dataset):
    def __init__(self, tokenizer, n=16):
        texts = [f"sample {i} says hello to the tiny model number {i * 7}" for i in range(n)]
        self.rows = [(f"pair-{i}", tokenizer(t)["input_ids"][:12]) for i, t in enumerate(texts)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _collate(rows):
    width = min(len(ids) for _, ids in rows)
    ids = torch.tensor([r[:width] for _, r in rows])
    return {"input_ids": ids, "labels": ids.clone(), "pair_ids": [pid for pid, _ in rows]}


def _run(tmp_path, tokenizer, nan_steps, max_steps, cfg=None):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from prefloop.testing import build_tiny_model

    snapshots = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots[state.global_step] = [p.detach().clone() for p in model.parameters()]

    class InjectingTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            pair_ids = inputs.pop("pair_ids")
            loss = model(**inputs).loss
            if self.state.global_step + 1 in nan_steps:
                loss = loss * float("nan")
            self.health.observe_batch(loss, pair_ids)
            return loss

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=2,
                             learning_rate=1e-3, logging_steps=1, report_to="tensorboard", save_strategy="no",
                             use_cpu=True, disable_tqdm=True, seed=0)
    model = build_tiny_model(tokenizer).train()
    trainer = InjectingTrainer(model=model, args=args, train_dataset=_Rows(tokenizer), data_collator=_collate,
                               callbacks=[Snapshot()])
    cfg = cfg or SimpleNamespace(learning_rate=1e-4, finetuning_type="lora", pref_beta=0.1, num_train_epochs=1,
                                 max_bad_steps=3, early_stopping_patience=None, pref_loss="sigmoid", max_steps=-1)
    trainer.health = install_health(trainer, cfg)
    initial = [p.detach().clone() for p in model.parameters()]
    return trainer, snapshots, initial


def test_nan_step_is_skipped_in_a_real_trainer_run(tmp_path, tiny_tokenizer):
    trainer, snapshots, initial = _run(tmp_path, tiny_tokenizer, nan_steps={3}, max_steps=5)
    trainer.train()
    unchanged = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))  # noqa: E731
    assert not unchanged(initial, snapshots[1]) and not unchanged(snapshots[1], snapshots[2])
    assert unchanged(snapshots[2], snapshots[3])  # the NaN step: no weight update
    assert not unchanged(snapshots[3], snapshots[4])  # training goes on
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    records = [json.loads(x) for x in (tmp_path / HEALTH_FILE).read_text().splitlines()]
    assert [r["kind"] for r in records] == ["nonfinite"]
    assert records[0]["step"] == 3 and len(records[0]["pair_ids"]) == 2
    assert all(pid.startswith("pair-") for pid in records[0]["pair_ids"])


def test_max_bad_steps_stops_a_real_trainer_run(tmp_path, tiny_tokenizer):
    trainer, snapshots, _ = _run(tmp_path, tiny_tokenizer, nan_steps={2, 3, 4}, max_steps=8)
    with pytest.raises(TrainingDiverged, match="3 optimizer steps in a row"):
        trainer.train()
    assert max(snapshots) == 3  # stopped inside step 4, before its update
    assert len((tmp_path / HEALTH_FILE).read_text().splitlines()) == 2  # steps 2 and 3 warned; 4 raised


def test_healthy_run_is_quiet_and_risky_settings_warn_once(tmp_path, tiny_tokenizer):
    trainer, _, _ = _run(tmp_path / "quiet", tiny_tokenizer, nan_steps=set(), max_steps=6)
    trainer.train()
    assert trainer.health.log.warnings == [] and not (tmp_path / "quiet" / HEALTH_FILE).exists()
    risky = SimpleNamespace(learning_rate=1e-3, finetuning_type="full", pref_beta=0.1, num_train_epochs=1,
                            max_bad_steps=3, early_stopping_patience=None, pref_loss="sigmoid", max_steps=-1)
    trainer, _, _ = _run(tmp_path / "risky", tiny_tokenizer, nan_steps=set(), max_steps=2, cfg=risky)
    trainer.train()
    kinds = [w.kind for w in trainer.health.log.warnings]
    assert kinds.count("setting") == 1
    assert isinstance(trainer.health, HealthCallback)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = (tmp_path / "risky" / "runs").iterdir()  # the TensorBoard callback's own writer got the text
    assert "health/setting/text_summary" in EventAccumulator(str(run), size_guidance={"tensors": 0}).Reload().Tags()["tensors"]


# --- the same through prefloop's PreferenceTrainer, wired as the report describes ------------------------


def _preference_trainer(tmp_path, tokenizer, nan_steps, max_steps, max_bad_steps=3):
    from transformers import TrainerCallback

    from prefloop.data.schema import EncodedPair
    from prefloop.testing import build_tiny_model
    from prefloop.train.dataset import PairCollator, PairDataset
    from prefloop.train.losses import build_loss_spec
    from prefloop.train.trainer import PreferenceTrainer, build_training_arguments
    from prefloop.config import Config

    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs = [EncodedPair(enc(f"question {i}: what is {i} plus {i}?"), enc(f"it is {2 * i}."),
                         enc(f"no idea, maybe {i + 5} or so"), id=f"pair-{i}") for i in range(12)]
    cfg = Config(output_dir=str(tmp_path), pref_loss="simpo", pref_beta=2.0, learning_rate=1e-3,
                 finetuning_type="full", max_steps=max_steps, per_device_train_batch_size=2, logging_steps=1,
                 report_to="none", save_strategy="no", max_bad_steps=max_bad_steps)
    snapshots = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots[state.global_step] = [p.detach().clone() for p in model.parameters()]

    trainer = PreferenceTrainer(model=build_tiny_model(tokenizer).train(), args=build_training_arguments(cfg),
                                train_dataset=PairDataset.from_encoded(pairs),
                                data_collator=PairCollator("padded", tokenizer.pad_token_id),
                                callbacks=[Snapshot()], loss_spec=build_loss_spec(cfg))
    trainer.health = health = install_health(trainer, cfg)

    def poison(module, args, output):  # the model itself goes non-finite on the chosen steps
        return output * float("nan") if trainer.state.global_step + 1 in nan_steps else output

    trainer.model.get_input_embeddings().register_forward_hook(poison)
    return trainer, health, snapshots


def test_preference_trainer_skips_nan_step_and_stops_after_max_bad_steps(tmp_path, tiny_tokenizer):
    trainer, health, snapshots = _preference_trainer(tmp_path / "skip", tiny_tokenizer, {2}, max_steps=3)
    trainer.train()
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))  # noqa: E731
    assert same(snapshots[1], snapshots[2]) and not same(snapshots[2], snapshots[3])
    assert [w.kind for w in health.log.warnings].count("nonfinite") == 1
    record = json.loads((tmp_path / "skip" / HEALTH_FILE).read_text().splitlines()[-1])
    assert record["kind"] == "nonfinite" and all(p.startswith("pair-") for p in record["pair_ids"])

    trainer, health, _ = _preference_trainer(tmp_path / "stop", tiny_tokenizer, {1, 2}, max_steps=5, max_bad_steps=2)
    with pytest.raises(TrainingDiverged, match="max_bad_steps: 2"):
        trainer.train()
    assert trainer.state.global_step == 1


def test_monitor_log_history_replays_a_finished_run():
    from prefloop.train.health import monitor_log_history

    bad = [{"step": s, "loss": 0.69 - 0.02 * s, "grad_norm": 1.0, "logps/chosen": -60.0 - 2 * s,
            "rewards/margins": 0.1 * s} for s in range(1, 13)]
    bad += [{"step": 13, "loss": 9.0, "grad_norm": 40.0}]
    assert [w.kind for w in monitor_log_history(bad)] == ["degradation", "loss_spike", "grad_norm_spike"]
    good = [{"step": s, "loss": 0.69 - 0.02 * s, "grad_norm": 1.0 + 0.1 * (s % 3), "logps/chosen": -60.0 + 0.3 * s,
             "rewards/margins": 0.1 * s} for s in range(1, 30)] + [{"step": 30, "eval_loss": 0.5}]
    assert monitor_log_history(good) == []


def test_install_health_adds_early_stopping_once(tmp_path, tiny_tokenizer):
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    from prefloop.testing import build_tiny_model

    args = TrainingArguments(output_dir=str(tmp_path), eval_strategy="steps", eval_steps=1, report_to="none",
                             metric_for_best_model="eval_loss", load_best_model_at_end=True, save_strategy="steps",
                             save_steps=1, use_cpu=True)
    cfg = SimpleNamespace(early_stopping_patience=2, max_bad_steps=3)
    count = lambda t: sum(isinstance(c, EarlyStoppingCallback) for c in t.callback_handler.callbacks)  # noqa: E731
    rows = [{"input_ids": [1, 2, 3]}]
    trainer = Trainer(model=build_tiny_model(tiny_tokenizer), args=args, eval_dataset=rows)
    install_health(trainer, cfg)
    assert count(trainer) == 1
    trainer = Trainer(model=build_tiny_model(tiny_tokenizer), args=args, eval_dataset=rows,
                      callbacks=[EarlyStoppingCallback(2)])
    install_health(trainer, cfg)
    assert count(trainer) == 1


def test_sampled_length_is_fed_from_the_logged_evaluations():
    """Issue 12 item 13: the monitor is fed by the `eval_sampled_length` each evaluation logs (step 0 first).
    Input: 10.0 tokens at step 0, 10.5 at step 5, 30.0 at step 10. Right value: one warning, at step 10."""
    from types import SimpleNamespace

    callback = HealthCallback()
    for step, length in ((0, 10.0), (5, 10.5), (10, 30.0)):
        callback.on_log(None, SimpleNamespace(global_step=step), None, logs={"eval_loss": 0.69, "eval_sampled_length": length})
    assert [(w.kind, w.step) for w in callback.log.warnings] == [("sampled_length", 10)]
    assert callback.log.warnings[0].data == {"baseline": 10.0, "mean_length": 30.0}


def test_sampled_answer_lengths_of_prompt_ids_go_through_the_sampler(tiny_tokenizer):
    from prefloop.sampling import LocalGenerator, SamplingParams
    from prefloop.testing import build_tiny_model

    model = build_tiny_model(tiny_tokenizer)
    prompt = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "hello there"}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
    lengths = sampled_answer_lengths(model, tiny_tokenizer, [list(prompt), "hello there"], max_new_tokens=5)
    expected = LocalGenerator(model, tiny_tokenizer).generate([(list(prompt), SamplingParams(5, temperature=0.0))])
    assert lengths[0] == len(expected[0].token_ids) and 1 <= lengths[1] <= 5
